//! MLX numerics through our mlx-sys, against hand-computed values and closed forms evaluated in f64. They run on
//! MLX's default device: the CPU here and in CI; the CUDA build runs the same binary on a GPU.

use std::collections::HashMap;

use half::{bf16, f16};
use mlx_rs::{
    array,
    builder::Builder,
    fast::{self, ScaledDotProductAttentionMask},
    module::{Module, ModuleParameters},
    nn,
    ops::{self, indexing::IndexOp},
    optimizers::{AdamWBuilder, Optimizer},
    transforms::compile::compile,
    Array, Dtype,
};

fn values(a: &Array) -> Vec<f64> {
    let a = a.as_dtype(Dtype::Float32).expect("cast to f32");
    a.as_slice::<f32>().iter().map(|&v| f64::from(v)).collect()
}

/// On a GPU, MLX runs f32 matmuls in TF32 (10-bit mantissa): allow 2e-3 of the largest expected magnitude
/// there. On the CPU the given absolute tolerance applies unchanged.
fn assert_close(actual: &[f64], expected: &[f64], cpu_tolerance: f64, what: &str) {
    let on_gpu = matches!(mlx_rs::Device::try_default().and_then(|d| d.get_type()), Ok(mlx_rs::DeviceType::Gpu));
    let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let tolerance = if on_gpu { cpu_tolerance.max(2e-3 * scale) } else { cpu_tolerance };
    let diff = max_abs_diff(actual, expected);
    assert!(diff <= tolerance, "{what}: max |diff| {diff} > {tolerance}");
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Deterministic pseudo-random values in [-1, 1) (a small LCG, so expected values need no MLX).
fn lcg(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

#[test]
fn matmul_is_exact_on_small_integers() {
    let a = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0], &[2, 2]);
    let b = Array::from_slice(&[5.0f32, 6.0, 7.0, 8.0], &[2, 2]);
    let c = a.matmul(&b).unwrap();
    assert_eq!(c.shape(), &[2, 2]);
    assert_eq!(c.as_slice::<f32>(), &[19.0, 22.0, 43.0, 50.0]);
}

#[test]
fn matmul_matches_f64_reference() {
    let (m, k, n) = (33, 70, 17);
    let a = lcg(m * k, 1);
    let b = lcg(k * n, 2);
    let c = Array::from_slice(&a, &[m as i32, k as i32]).matmul(&Array::from_slice(&b, &[k as i32, n as i32])).unwrap();
    let mut expected = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            expected[i * n + j] = (0..k).map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j])).sum();
        }
    }
    assert_close(&values(&c), &expected, 1e-5, "matmul");
}

fn linear_2_to_1() -> nn::Linear {
    let mut layer = nn::LinearBuilder::new(2, 1).build().unwrap();
    *layer.weight = array!([[1.0f32, 2.0]]);
    *layer.bias = Some(array!([0.5f32]));
    layer
}

fn squared_output(model: &mut nn::Linear, x: &Array) -> Result<Vec<Array>, mlx_rs::error::Exception> {
    let y = model.forward(x)?;
    Ok(vec![y.square()?.sum(None)?])
}

#[test]
fn value_and_grad_through_linear() {
    // y = W x + b for x = (1,1) and (2,3): 3.5 and 8.5; L = Σ y² = 84.5;
    // dL/dW = Σ 2y xᵀ = 7·(1,1) + 17·(2,3) = (41, 58); dL/db = 7 + 17 = 24.
    let mut model = linear_2_to_1();
    let x = array!([[1.0f32, 1.0], [2.0, 3.0]]);
    let mut vg = nn::value_and_grad(squared_output);
    let (loss, grads) = vg(&mut model, &x).unwrap();
    assert_eq!(loss[0].item_exact::<f32>(), 84.5);
    assert_eq!(grads["weight"].as_slice::<f32>(), &[41.0, 58.0]);
    assert_eq!(grads["bias"].as_slice::<f32>(), &[24.0]);
}

#[test]
fn adamw_step_matches_closed_form() {
    let mut model = linear_2_to_1();
    let x = array!([[1.0f32, 1.0], [2.0, 3.0]]);
    let mut vg = nn::value_and_grad(squared_output);
    let (_, grads) = vg(&mut model, &x).unwrap();
    let (lr, wd, b1, b2, eps) = (0.1f64, 0.01f64, 0.9f64, 0.999f64, 1e-8f64);
    let mut opt = AdamWBuilder::new(lr as f32).build().unwrap();
    opt.update(&mut model, &grads).unwrap();
    // One step from zero state (mlx-rs applies no bias correction):
    // p' = p(1 − lr·wd) − lr·m/(√v + eps), m = (1−b1)g, v = (1−b2)g².
    let step = |p: f64, g: f64| {
        let m = (1.0 - b1) * g;
        let v = (1.0 - b2) * g * g;
        p * (1.0 - lr * wd) - lr * m / (v.sqrt() + eps)
    };
    let params = model.parameters().flatten();
    let w = values(params["weight"]);
    let b = values(params["bias"]);
    assert!(max_abs_diff(&w, &[step(1.0, 41.0), step(2.0, 58.0)]) < 3e-6, "{w:?}");
    assert!(max_abs_diff(&b, &[step(0.5, 24.0)]) < 3e-6, "{b:?}");
}

/// Weights on the quantization grid: every group of 64 holds 0 and 2^bits − 1, so scale 1 and bias 0 are exact.
fn grid_weights(rows: usize, cols: usize, bits: u32) -> Vec<f32> {
    let top = (1u32 << bits) - 1;
    (0..rows * cols)
        .map(|i| match i % 64 {
            0 => 0.0,
            1 => top as f32,
            _ => ((i * 7 + i / cols * 3) as u32 % (top + 1)) as f32,
        })
        .collect()
}

#[test]
fn quantize_and_quantized_matmul_4_and_8_bit() {
    let (rows, cols) = (16usize, 128usize);
    for bits in [4, 8] {
        let w = grid_weights(rows, cols, bits as u32);
        let w_arr = Array::from_slice(&w, &[rows as i32, cols as i32]);
        let (packed, scales, biases) = ops::quantize(&w_arr, 64, bits).unwrap();
        assert_eq!(packed.shape(), &[rows as i32, (cols * bits as usize / 32) as i32]);
        assert_eq!(scales.shape(), &[rows as i32, 2]);
        let back = ops::dequantize(&packed, &scales, &biases, 64, bits).unwrap();
        assert_eq!(back.as_slice::<f32>(), &w[..], "{bits}-bit round trip on the grid is exact");

        // Small integer activations: x @ wᵀ is exact in f32.
        let x: Vec<f32> = (0..3 * cols).map(|i| ((i * 5) % 7) as f32 - 3.0).collect();
        let x_arr = Array::from_slice(&x, &[3, cols as i32]);
        let q = ops::quantized_matmul(&x_arr, &packed, &scales, &biases, true, 64, bits).unwrap();
        let reference = x_arr.matmul(&w_arr.t()).unwrap();
        assert_eq!(q.as_slice::<f32>(), reference.as_slice::<f32>(), "{bits}-bit qmm");
    }
}

#[test]
fn quantization_error_on_random_weights_is_within_half_a_step() {
    let (rows, cols, group) = (64usize, 256usize, 64usize);
    let w = lcg(rows * cols, 7);
    let w_arr = Array::from_slice(&w, &[rows as i32, cols as i32]);
    let x = Array::from_slice(&lcg(8 * cols, 8), &[8, cols as i32]);
    for bits in [4, 8] {
        let levels = f64::from((1u32 << bits) - 1);
        let (packed, scales, biases) = ops::quantize(&w_arr, group as i32, bits).unwrap();
        let back = values(&ops::dequantize(&packed, &scales, &biases, group as i32, bits).unwrap());
        // MLX's affine scheme anchors the larger-magnitude edge of each group and makes 0 exactly representable:
        // the step becomes edge/round(edge/s0) with s0 = (max − min)/levels and edge ≥ (max − min)/2, so rounding
        // to the nearest level costs at most s/2 and clipping the far end at most 15·s0·0.5/8 < s0 (4-bit; less at
        // 8-bit). Either way each weight moves by less than one nominal step s0.
        for (g, chunk) in w.chunks(group).enumerate() {
            let (lo, hi) = chunk.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v.into()), hi.max(v.into())));
            let step = (hi - lo) / levels;
            let err = max_abs_diff(&back[g * group..(g + 1) * group], &chunk.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
            assert!(err <= step * 1.001, "{bits}-bit group {g}: error {err} > one step {step}");
            assert!(err > 0.0 || bits == 8, "4-bit quantization of random weights cannot be lossless");
        }
        // The quantized product is the product with the dequantized weights.
        let q = values(&ops::quantized_matmul(&x, &packed, &scales, &biases, true, group as i32, bits).unwrap());
        let deq = Array::from_slice(&back.iter().map(|&v| v as f32).collect::<Vec<_>>(), &[rows as i32, cols as i32]);
        let reference = values(&x.matmul(&deq.t()).unwrap());
        assert_close(&q, &reference, 1e-4, "qmm vs dequantized matmul");
    }
}

#[test]
fn rms_norm_matches_formula() {
    let x = lcg(2 * 8, 3);
    let w: Vec<f32> = (0..8).map(|i| 0.5 + i as f32 * 0.25).collect();
    let eps = 1e-5f64;
    let y = fast::rms_norm(Array::from_slice(&x, &[2, 8]), Some(&Array::from_slice(&w, &[8])), eps as f32).unwrap();
    let mut expected = Vec::new();
    for row in x.chunks(8) {
        let ms = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / 8.0;
        let inv = 1.0 / (ms + eps).sqrt();
        expected.extend(row.iter().zip(&w).map(|(&v, &g)| f64::from(v) * inv * f64::from(g)));
    }
    assert_close(&values(&y), &expected, 1e-6, "rms_norm");
}

#[test]
fn rope_matches_rotation_formula() {
    // Non-traditional RoPE rotates the pairs (i, i + d/2) of each position p by p·base^(−2i/d).
    let (len, d, base, offset) = (5usize, 8usize, 10000.0f64, 3usize);
    let x = lcg(len * d, 4);
    let y = fast::rope(Array::from_slice(&x, &[1, 1, len as i32, d as i32]), d as i32, false, base as f32, 1.0, offset as i32, None)
        .unwrap();
    let mut expected = vec![0.0f64; len * d];
    for p in 0..len {
        for i in 0..d / 2 {
            let theta = (p + offset) as f64 * base.powf(-2.0 * i as f64 / d as f64);
            let (a, b) = (f64::from(x[p * d + i]), f64::from(x[p * d + i + d / 2]));
            expected[p * d + i] = a * theta.cos() - b * theta.sin();
            expected[p * d + i + d / 2] = a * theta.sin() + b * theta.cos();
        }
    }
    assert_close(&values(&y), &expected, 1e-5, "rope");
}

fn attention_reference(q: &[f32], k: &[f32], v: &[f32], lq: usize, lk: usize, d: usize, causal: bool) -> Vec<f64> {
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0f64; lq * d];
    for i in 0..lq {
        // With a causal mask, query i (the last lq of lk positions) sees keys up to lk − lq + i.
        let visible = if causal { lk - lq + i + 1 } else { lk };
        let scores: Vec<f64> = (0..visible)
            .map(|j| (0..d).map(|t| f64::from(q[i * d + t]) * f64::from(k[j * d + t])).sum::<f64>() * scale)
            .collect();
        let max = scores.iter().cloned().fold(f64::MIN, f64::max);
        let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = exps.iter().sum();
        for t in 0..d {
            out[i * d + t] = (0..visible).map(|j| exps[j] / total * f64::from(v[j * d + t])).sum();
        }
    }
    out
}

#[test]
fn scaled_dot_product_attention_matches_softmax() {
    let (lq, lk, d) = (4usize, 6usize, 8usize);
    let (q, k, v) = (lcg(lq * d, 5), lcg(lk * d, 6), lcg(lk * d, 7));
    let shape = |l: usize| [1, 1, l as i32, d as i32];
    let (qa, ka, va) = (Array::from_slice(&q, &shape(lq)), Array::from_slice(&k, &shape(lk)), Array::from_slice(&v, &shape(lk)));
    let scale = 1.0 / (d as f32).sqrt();
    let plain = fast::scaled_dot_product_attention(&qa, &ka, &va, scale, None, None).unwrap();
    assert_close(&values(&plain), &attention_reference(&q, &k, &v, lq, lk, d, false), 1e-5, "sdpa");
    let causal = fast::scaled_dot_product_attention(&qa, &ka, &va, scale, ScaledDotProductAttentionMask::Causal, None).unwrap();
    assert_close(&values(&causal), &attention_reference(&q, &k, &v, lq, lk, d, true), 1e-5, "causal sdpa");
}

#[test]
fn safetensors_round_trip_with_metadata() {
    let dir = std::env::temp_dir().join(format!("mlx-numerics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("round_trip.safetensors");
    let f32s = Array::from_slice(&[1.5f32, -2.25, 3.0, 1e-3], &[2, 2]);
    let f16s = f32s.as_dtype(Dtype::Float16).unwrap();
    let bf16s = f32s.as_dtype(Dtype::Bfloat16).unwrap();
    let ints = Array::from_slice(&[7i32, -9, 11], &[3]);
    let arrays = HashMap::from([("a.f32", &f32s), ("a.f16", &f16s), ("a.bf16", &bf16s), ("b.i32", &ints)]);
    let metadata = HashMap::from([("format".to_owned(), "mlx".to_owned())]);
    Array::save_safetensors(arrays, &metadata, &path).unwrap();
    let (loaded, meta) = Array::load_safetensors_with_metadata(&path).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(meta.get("format").map(String::as_str), Some("mlx"));
    assert_eq!(loaded["a.f32"].as_slice::<f32>(), f32s.as_slice::<f32>());
    assert_eq!(loaded["a.f32"].shape(), &[2, 2]);
    assert_eq!(loaded["a.f16"].dtype(), Dtype::Float16);
    let expected_f16: Vec<f16> = [1.5f32, -2.25, 3.0, 1e-3].iter().map(|&v| f16::from_f32(v)).collect();
    assert_eq!(loaded["a.f16"].as_slice::<f16>(), &expected_f16[..]);
    let expected_bf16: Vec<bf16> = [1.5f32, -2.25, 3.0, 1e-3].iter().map(|&v| bf16::from_f32(v)).collect();
    assert_eq!(loaded["a.bf16"].as_slice::<bf16>(), &expected_bf16[..]);
    assert_eq!(loaded["b.i32"].as_slice::<i32>(), &[7, -9, 11]);
}

#[test]
fn compiled_function_equals_eager() {
    let f = |(x, y): (&Array, &Array)| -> Result<Array, mlx_rs::error::Exception> { x.multiply(y)?.add(array!(1.0f32)) };
    let mut compiled = compile(f, None);
    let x = array!([1.0f32, 2.0, 3.0]);
    let y = array!([4.0f32, 5.0, 6.0]);
    for _ in 0..2 {
        assert_eq!(compiled((&x, &y)).unwrap().as_slice::<f32>(), &[5.0, 11.0, 19.0]);
    }
    // A new shape retraces rather than reusing the first graph.
    let z = array!([[2.0f32, 3.0]]);
    assert_eq!(compiled((&z, &z)).unwrap().as_slice::<f32>(), &[5.0, 10.0]);
}

#[test]
fn half_types_cross_the_c_api() {
    let x = array!([0.1f32, -3.5, 65504.0]);
    let h = x.as_dtype(Dtype::Float16).unwrap();
    let b = x.as_dtype(Dtype::Bfloat16).unwrap();
    assert_eq!(h.as_slice::<f16>(), &[f16::from_f32(0.1), f16::from_f32(-3.5), f16::from_f32(65504.0)]);
    assert_eq!(b.index(1).item_exact::<bf16>(), bf16::from_f32(-3.5));
    let sum = h.add(&h).unwrap();
    assert_eq!(sum.index(1).item_exact::<f16>(), f16::from_f32(-7.0));
}
