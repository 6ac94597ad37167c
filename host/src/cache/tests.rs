use mlx_rs::{ops::indexing::IndexOp, Array};

use super::*;

fn visible(mask: &AttentionMask) -> Vec<bool> {
    match mask {
        AttentionMask::Array(a) => a.as_slice::<bool>().to_vec(),
        _ => panic!("expected an explicit mask"),
    }
}

#[test]
fn plain_caches_use_the_builtin_masks() {
    let positions: Vec<usize> = (0..5).collect();
    assert!(matches!(AttentionMask::build(1, &positions, 4, None, 0, &[]).unwrap(), AttentionMask::None));
    assert!(matches!(AttentionMask::build(3, &positions, 2, None, 0, &[0, 0]).unwrap(), AttentionMask::Causal));
}

#[test]
fn left_padding_hides_pad_positions_per_row() {
    // Two rows, 4 slots; row 1 has 2 pad slots. Queries are the last 2 positions.
    let mask = AttentionMask::build(2, &[0, 1, 2, 3], 2, None, 0, &[0, 2]).unwrap();
    #[rustfmt::skip]
    let expected = [
        true, true, true, false,   true, true, true, true,     // row 0: causal only
        false, false, true, false,  false, false, true, true,  // row 1: pads 0, 1 hidden
    ];
    assert_eq!(visible(&mask), expected);
}

#[test]
fn windows_spare_the_kept_prefix() {
    // Window 2, keep 1: query 4 sees position 0 (kept), 3 and 4.
    let mask = AttentionMask::build(1, &[0, 1, 2, 3, 4], 4, Some(2), 1, &[]).unwrap();
    assert_eq!(visible(&mask), [true, false, false, true, true]);
}

fn kv(b: i32, len: i32, start: f32) -> Array {
    let data: Vec<f32> = (0..b * len).map(|i| start + i as f32).collect();
    Array::from_slice(&data, &[b, 1, len, 1])
}

#[test]
fn rotating_cache_keeps_the_prefix_and_the_recent_window() {
    let mut cache = RotatingCache::new(4, 1);
    for t in 0..6 {
        let view = cache.update_and_fetch(kv(1, 1, t as f32), kv(1, 1, t as f32)).unwrap();
        let KvTensors::Dense { keys, .. } = view.tensors else { panic!("dense") };
        let seen: Vec<f32> = keys.as_slice::<f32>().to_vec();
        // At most max_size keys: the kept first token and the most recent ones.
        let expected: Vec<f32> = match t {
            0..=3 => (0..=t).map(|x| x as f32).collect(),
            _ => [0.0].into_iter().chain((t - 2..=t).map(|x| x as f32)).collect(),
        };
        assert_eq!(seen, expected, "token {t}");
    }
    assert_eq!(cache.offset(), 6);
    assert_eq!(cache.trim(1), 1);
    assert_eq!(cache.offset(), 5);
}

#[test]
fn standard_cache_grows_in_steps_and_trims() {
    let mut cache = StandardCache::new(4);
    cache.update_and_fetch(kv(1, 3, 0.0), kv(1, 3, 0.0)).unwrap();
    let view = cache.update_and_fetch(kv(1, 3, 10.0), kv(1, 3, 10.0)).unwrap();
    let KvTensors::Dense { keys, .. } = view.tensors else { panic!("dense") };
    assert_eq!(keys.as_slice::<f32>(), &[0.0, 1.0, 2.0, 10.0, 11.0, 12.0]);
    assert_eq!(cache.state()[0].shape()[2], 8, "two blocks of 4");
    cache.trim(2);
    let view = cache.update_and_fetch(kv(1, 1, 20.0), kv(1, 1, 20.0)).unwrap();
    let KvTensors::Dense { keys, .. } = view.tensors else { panic!("dense") };
    assert_eq!(keys.as_slice::<f32>(), &[0.0, 1.0, 2.0, 10.0, 20.0]);
}

#[test]
fn repeating_rows_shares_a_prompt_across_samples() {
    let mut cache = StandardCache::new(8);
    cache.set_left_padding(vec![0, 1]);
    cache.update_and_fetch(kv(2, 2, 0.0), kv(2, 2, 0.0)).unwrap();
    cache.repeat_rows(3).unwrap();
    let view = cache.update_and_fetch(kv(6, 1, 100.0), kv(6, 1, 100.0)).unwrap();
    let KvTensors::Dense { keys, .. } = view.tensors else { panic!("dense") };
    assert_eq!(keys.shape(), &[6, 1, 3, 1]);
    let rows: Vec<Vec<f32>> = (0..6).map(|r| keys.index(r).as_dtype(mlx_rs::Dtype::Float32).unwrap().flatten(None, None).unwrap().to_vec_exact::<f32>().unwrap()).collect();
    assert_eq!(rows[0][..2], [0.0, 1.0]);
    assert_eq!(rows[2][..2], [0.0, 1.0]);
    assert_eq!(rows[3][..2], [2.0, 3.0]);
    assert_eq!(rows[5][..2], [2.0, 3.0]);
    // Padding repeated with its row: rows 3-5 hide slot 0.
    let v = visible(&view.mask);
    assert_eq!(v.len(), 6 * 3);
    assert_eq!(&v[9..12], &[false, true, true]);
    assert_eq!(&v[0..3], &[true, true, true]);
}

#[test]
fn quantized_cache_switches_at_its_start() {
    let mut cache = QuantizedCache::new(crate::nn::Quant::affine(8, 32), 3);
    let head = |len: i32, v: f32| Array::from_slice(&vec![v; (len * 32) as usize], &[1, 1, len, 32]);
    let view = cache.update_and_fetch(head(2, 1.0), head(2, 1.0)).unwrap();
    assert!(matches!(view.tensors, KvTensors::Dense { .. }));
    // The update that reaches `start` still attends in full precision (as mlx-lm, which converts its cache
    // after the model call); the next one reads quantized entries.
    let view = cache.update_and_fetch(head(2, 2.0), head(2, 2.0)).unwrap();
    assert!(matches!(view.tensors, KvTensors::Dense { .. }), "the crossing update is dense");
    let view = cache.update_and_fetch(head(1, 3.0), head(1, 3.0)).unwrap();
    let KvTensors::Quantized { keys, .. } = view.tensors else { panic!("quantized after start") };
    assert_eq!(keys[0].shape(), &[1, 1, 5, 8], "32 values of 8 bits pack into 8 words");
    assert_eq!(cache.offset(), 5);
}
