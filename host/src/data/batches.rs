//! Batches bucketed by token count: examples sorted by length (ties broken by a per-epoch hash, so batches
//! differ between epochs), cut into batches of `batch_size`, batch order shuffled per epoch. Each batch is
//! padded only to its own longest example (rounded up to `pad_multiple` so a compiled step sees few shapes).

use mlx_rs::Array;

use super::Example;

/// SplitMix64: a tiny deterministic generator for shuffles that must be identical on resume.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The batches (indices into the dataset) of one epoch.
pub fn plan_epoch(lengths: &[usize], batch_size: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let mut rng = SplitMix::new(seed ^ epoch.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let jitter: Vec<u64> = (0..lengths.len()).map(|_| rng.next()).collect();
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], jitter[i]));
    let mut batches: Vec<Vec<usize>> = order.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect();
    for i in (1..batches.len()).rev() {
        let j = rng.below(i + 1);
        batches.swap(i, j);
    }
    batches
}

/// One padded batch, shifted for next-token prediction.
pub struct Batch {
    /// [B, T] int32 input ids.
    pub inputs: Array,
    /// [B, T] int32 target ids.
    pub targets: Array,
    /// [B, T] float32, 1 where a target is supervised (never on padding).
    pub mask: Array,
    pub rows: usize,
    /// Non-padding input positions.
    pub real_tokens: usize,
    /// Input positions including padding (B × T).
    pub padded_tokens: usize,
    pub supervised: usize,
}

pub fn collate(examples: &[&Example], pad_multiple: usize, pad_id: u32) -> Batch {
    let longest = examples.iter().map(|e| e.tokens.len()).max().unwrap_or(2).max(2);
    let m = pad_multiple.max(1);
    let width = (longest - 1).div_ceil(m) * m;
    let rows = examples.len();
    let mut inputs = vec![pad_id as i32; rows * width];
    let mut targets = vec![pad_id as i32; rows * width];
    let mut mask = vec![0f32; rows * width];
    let (mut real, mut supervised) = (0, 0);
    for (r, e) in examples.iter().enumerate() {
        let n = e.tokens.len();
        for j in 0..n.saturating_sub(1) {
            inputs[r * width + j] = e.tokens[j] as i32;
            targets[r * width + j] = e.tokens[j + 1] as i32;
            if e.supervised[j + 1] {
                mask[r * width + j] = 1.0;
                supervised += 1;
            }
        }
        real += n.saturating_sub(1);
    }
    let shape = [rows as i32, width as i32];
    Batch {
        inputs: Array::from_slice(&inputs, &shape),
        targets: Array::from_slice(&targets, &shape),
        mask: Array::from_slice(&mask, &shape),
        rows,
        real_tokens: real,
        padded_tokens: rows * width,
        supervised,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_group_similar_lengths_and_shuffle_batch_order() {
        let lengths: Vec<usize> = (0..40).map(|i| (i * 37) % 100 + 1).collect();
        let a = plan_epoch(&lengths, 4, 7, 0);
        let b = plan_epoch(&lengths, 4, 7, 1);
        assert_eq!(a, plan_epoch(&lengths, 4, 7, 0), "deterministic");
        assert_ne!(a, b, "another epoch, another order");
        let mut all: Vec<usize> = a.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..40).collect::<Vec<_>>(), "every example once");
        // Within a batch lengths are neighbours in sorted order: the spread is small.
        for batch in &a {
            let (lo, hi) = (batch.iter().map(|&i| lengths[i]).min().unwrap(), batch.iter().map(|&i| lengths[i]).max().unwrap());
            assert!(hi - lo <= 12, "{batch:?}");
        }
    }

    #[test]
    fn collate_shifts_pads_and_never_supervises_padding() {
        let e1 = Example { tokens: vec![1, 2, 3, 4], supervised: vec![false, false, true, true], truncated: false };
        let e2 = Example { tokens: vec![5, 6], supervised: vec![true, true], truncated: false };
        let b = collate(&[&e1, &e2], 4, 0);
        assert_eq!(b.inputs.shape(), &[2, 4]);
        assert_eq!(b.inputs.as_slice::<i32>(), &[1, 2, 3, 0, 5, 0, 0, 0]);
        assert_eq!(b.targets.as_slice::<i32>(), &[2, 3, 4, 0, 6, 0, 0, 0]);
        assert_eq!(b.mask.as_slice::<f32>(), &[0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        assert_eq!((b.real_tokens, b.padded_tokens, b.supervised), (4, 8, 3));
    }
}
