//! Batches bucketed by token count: examples sorted by length (ties broken by a per-epoch hash, so batches
//! differ between epochs), cut into batches of `batch_size`, batch order shuffled per epoch. Each batch is
//! padded only to its own longest example (rounded up to `pad_multiple` so a compiled step sees few shapes).

use mlx_rs::Array;

use super::{
    packing::{collate_packed, footprint, PackInto, Packed},
    Example, Item,
};

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

/// How many rows a batch takes: at most `rows`, and with `max_tokens`, only as many as keep rows × the
/// batch's longest row within it (at least one row): short rows then travel in larger batches, so every step
/// does a similar amount of work (on a GPU a step's fixed cost otherwise dominates short batches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSize {
    pub rows: usize,
    pub max_tokens: Option<usize>,
}

impl BatchSize {
    pub fn rows(rows: usize) -> Self {
        BatchSize { rows, max_tokens: None }
    }
}

/// The batches (indices into the dataset) of one epoch.
pub fn plan_epoch(lengths: &[usize], size: BatchSize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let mut rng = SplitMix::new(seed ^ epoch.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let jitter: Vec<u64> = (0..lengths.len()).map(|_| rng.next()).collect();
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], jitter[i]));
    let cap = size.rows.max(1);
    let mut batches: Vec<Vec<usize>> = match size.max_tokens {
        None => order.chunks(cap).map(<[usize]>::to_vec).collect(),
        Some(budget) => {
            // Ascending lengths: the row being added is the batch's longest.
            let mut batches: Vec<Vec<usize>> = Vec::new();
            let mut current: Vec<usize> = Vec::new();
            for i in order {
                if !current.is_empty() && (current.len() == cap || (current.len() + 1) * lengths[i] > budget) {
                    batches.push(std::mem::take(&mut current));
                }
                current.push(i);
            }
            if !current.is_empty() {
                batches.push(current);
            }
            batches
        }
    };
    for i in (1..batches.len()).rev() {
        let j = rng.below(i + 1);
        batches.swap(i, j);
    }
    batches
}

/// One batch, shifted for next-token prediction: padded rows, or with `packed` rows packed side by side.
pub struct Batch {
    /// [B, T] int32 input ids (packed: `[bins, width]`).
    pub inputs: Array,
    /// [B, T] int32 target ids (packed: `[bins, width]`).
    pub targets: Array,
    /// [B, T] float32, 1 where a target is supervised (never on padding).
    pub mask: Array,
    /// [B, T] float32, 1 at every non-padding input position (prompt included): what the routers' load
    /// balancing averages over (packed: `[bins, width]`).
    pub real: Array,
    pub rows: usize,
    /// Non-padding input positions.
    pub real_tokens: usize,
    /// Input positions computed, padding included (B × T, or bins × width).
    pub padded_tokens: usize,
    pub supervised: usize,
    /// Preference pairs P: rows `[0, P)` are the chosen completions, `[P, 2P)` the rejected ones; 0 otherwise.
    pub pairs: usize,
    /// `[B]` float32, 1 for a desirable completion and 0 for an undesirable one (labelled rows).
    pub labels: Option<Array>,
    /// Each row's prompt with another row's completion (KTO's KL reference point), padded to its own width.
    pub kl: Option<Box<Batch>>,
    /// `[B, T]` reference log-probs of the targets when they were computed before training.
    pub reference: Option<Array>,
    /// The packed layout, with `[data] packing`.
    pub packed: Option<Packed>,
}

impl Batch {
    /// The rows the loss averages over: pairs for preference data, rows otherwise.
    pub fn units(&self) -> usize {
        if self.pairs > 0 { self.pairs } else { self.rows }
    }

    /// Attaches per-row reference log-probs (each row's targets, unpadded), padding them to the batch width.
    pub fn set_reference(&mut self, rows: &[&[f32]]) {
        let width = self.mask.shape()[1] as usize;
        let mut values = vec![0f32; rows.len() * width];
        for (r, row) in rows.iter().enumerate() {
            let n = row.len().min(width);
            values[r * width..r * width + n].copy_from_slice(&row[..n]);
        }
        self.reference = Some(Array::from_slice(&values, &[rows.len() as i32, width as i32]));
    }
}

/// The batch of some items: their sequences (chosen ones first, then rejected ones, for pairs), their labels,
/// and with `partners` (one per item) the mismatched prompt/completion sequences. With `pack` the rows are
/// packed, placed item by item in the given order, each row counted at its item's length (as the packing
/// planner counted them).
pub fn assemble(items: &[&Item], partners: Option<&[&Item]>, pad_multiple: usize, max_len: usize, pack: Option<PackInto>) -> Batch {
    let width = items.iter().map(|i| i.examples.len()).max().unwrap_or(1);
    // Row r of example k of item i: k × items + i (only rows that exist).
    let rows: Vec<(usize, usize)> = (0..width).flat_map(|k| items.iter().enumerate().filter(move |(_, i)| k < i.examples.len()).map(move |(i, _)| (k, i))).collect();
    let examples: Vec<&Example> = rows.iter().map(|&(k, i)| &items[i].examples[k]).collect();
    let mut batch = match pack {
        None => collate(&examples, pad_multiple, 0),
        Some(into) => {
            let footprints: Vec<usize> = rows.iter().map(|&(_, i)| footprint(items[i].len())).collect();
            let index_of = |k: usize, i: usize| rows.iter().position(|&r| r == (k, i));
            let placement: Vec<usize> = (0..items.len()).flat_map(|i| (0..width).filter_map(move |k| index_of(k, i))).collect();
            let placed_footprints: Vec<usize> = placement.iter().map(|&r| footprints[r]).collect();
            collate_packed(&examples, &placement, &placed_footprints, into, pad_multiple, 0)
        }
    };
    if width == 2 {
        batch.pairs = items.len();
    }
    if items.iter().all(|i| i.label.is_some()) && !items.is_empty() {
        let labels: Vec<f32> = items.iter().map(|i| if i.label == Some(true) { 1.0 } else { 0.0 }).collect();
        batch.labels = Some(Array::from_slice(&labels, &[labels.len() as i32]));
    }
    if let Some(partners) = partners {
        let mismatched: Vec<Example> = items.iter().zip(partners).map(|(i, p)| i.examples[0].with_completion_of(&p.examples[0], max_len)).collect();
        let mismatched: Vec<&Example> = mismatched.iter().collect();
        batch.kl = Some(Box::new(match pack {
            None => collate(&mismatched, pad_multiple, 0),
            Some(into) => {
                let footprints: Vec<usize> = mismatched.iter().map(|e| footprint(e.tokens.len())).collect();
                let placement: Vec<usize> = (0..mismatched.len()).collect();
                collate_packed(&mismatched, &placement, &footprints, PackInto { bins: 1, ..into }, pad_multiple, 0)
            }
        }));
    }
    batch
}

pub fn collate(examples: &[&Example], pad_multiple: usize, pad_id: u32) -> Batch {
    let longest = examples.iter().map(|e| e.tokens.len()).max().unwrap_or(2).max(2);
    let m = pad_multiple.max(1);
    let width = (longest - 1).div_ceil(m) * m;
    let rows = examples.len();
    let mut inputs = vec![pad_id as i32; rows * width];
    let mut targets = vec![pad_id as i32; rows * width];
    let mut mask = vec![0f32; rows * width];
    let mut present = vec![0f32; rows * width];
    let (mut real, mut supervised) = (0, 0);
    for (r, e) in examples.iter().enumerate() {
        let n = e.tokens.len();
        for j in 0..n.saturating_sub(1) {
            inputs[r * width + j] = e.tokens[j] as i32;
            targets[r * width + j] = e.tokens[j + 1] as i32;
            present[r * width + j] = 1.0;
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
        real: Array::from_slice(&present, &shape),
        rows,
        real_tokens: real,
        padded_tokens: rows * width,
        supervised,
        pairs: 0,
        labels: None,
        kl: None,
        reference: None,
        packed: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_group_similar_lengths_and_shuffle_batch_order() {
        let lengths: Vec<usize> = (0..40).map(|i| (i * 37) % 100 + 1).collect();
        let a = plan_epoch(&lengths, BatchSize::rows(4), 7, 0);
        let b = plan_epoch(&lengths, BatchSize::rows(4), 7, 1);
        assert_eq!(a, plan_epoch(&lengths, BatchSize::rows(4), 7, 0), "deterministic");
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
    fn a_token_budget_puts_more_short_rows_in_a_batch() {
        let lengths = [10, 10, 10, 10, 10, 10, 40, 40, 100, 100];
        let plan = plan_epoch(&lengths, BatchSize { rows: 8, max_tokens: Some(80) }, 1, 0);
        let mut sizes: Vec<(usize, usize)> = plan.iter().map(|b| (b.iter().map(|&i| lengths[i]).max().unwrap(), b.len())).collect();
        sizes.sort();
        // Six rows of 10 (60 ≤ 80), two of 40 (80), and rows of 100 alone: over budget, but never dropped.
        assert_eq!(sizes, vec![(10, 6), (40, 2), (100, 1), (100, 1)]);
        let capped = plan_epoch(&lengths, BatchSize { rows: 4, max_tokens: Some(80) }, 1, 0);
        assert!(capped.iter().all(|b| b.len() <= 4));
        assert_eq!(capped.iter().map(Vec::len).sum::<usize>(), 10);
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
        assert_eq!(b.real.as_slice::<f32>(), &[1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        assert_eq!((b.real_tokens, b.padded_tokens, b.supervised), (4, 8, 3));
    }

    #[test]
    fn pairs_put_chosen_rows_first_and_labelled_rows_get_mismatched_partners() {
        let ex = |tokens: Vec<u32>, prompt: usize| Example { supervised: (0..tokens.len()).map(|i| i >= prompt).collect(), tokens, truncated: false };
        let p1 = Item { examples: vec![ex(vec![1, 2, 3], 2), ex(vec![1, 2, 4, 5], 2)], label: None };
        let p2 = Item { examples: vec![ex(vec![6, 7], 1), ex(vec![6, 8], 1)], label: None };
        let b = assemble(&[&p1, &p2], None, 1, 64, None);
        assert_eq!(b.pairs, 2);
        assert_eq!(b.inputs.as_slice::<i32>(), &[1, 2, 0, 6, 0, 0, 1, 2, 4, 6, 0, 0]);
        assert_eq!(b.units(), 2);

        let k1 = Item { examples: vec![ex(vec![1, 2, 3, 4], 2)], label: Some(true) };
        let k2 = Item { examples: vec![ex(vec![5, 6, 7], 1)], label: Some(false) };
        let b = assemble(&[&k1, &k2], Some(&[&k2, &k1]), 1, 64, None);
        assert_eq!(b.labels.as_ref().unwrap().as_slice::<f32>(), &[1.0, 0.0]);
        let kl = b.kl.as_ref().unwrap();
        // Row 0: prompt [1, 2] + k2's completion [6, 7]; row 1: prompt [5] + k1's completion [3, 4].
        assert_eq!(kl.inputs.as_slice::<i32>(), &[1, 2, 6, 5, 3, 0]);
        assert_eq!(kl.targets.as_slice::<i32>(), &[2, 6, 7, 3, 4, 0]);
        assert_eq!(kl.mask.as_slice::<f32>(), &[0.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
    }
}
