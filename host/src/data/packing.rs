//! Padding-free batches (`[data] packing = true`): rows placed side by side into `bins` packed sequences of
//! `width` input positions each, so every step computes `bins × width` positions whatever the rows' lengths.
//! The model attends within each row (block-diagonal causal masks from the segment ids); the log-probs come
//! back in the padded row layout through `gather`, so every loss sees exactly the arrays it sees unpacked.

use mlx_rs::Array;

use super::{batches::SplitMix, Batch, Example};

/// The packed layout of a batch. The batch's `inputs`, `targets` and `real` are `[bins, width]`; its
/// `mask` (and reference log-probs) keep the row layout `[rows, T]`.
pub struct Packed {
    /// `[bins, width]` int32: 1 + the row each position belongs to, 0 at padding.
    pub segments: Array,
    /// `[rows, T]` int32: where row r's position t lies in the flattened packed sequences (0 past its end,
    /// where the mask is 0).
    pub gather: Array,
}

/// What a packed batch is packed into: at least `bins` sequences of `width` input positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackInto {
    pub bins: usize,
    pub width: usize,
}

/// The input positions a row of `tokens` tokens occupies: every token but the last is an input.
pub fn footprint(tokens: usize) -> usize {
    tokens.saturating_sub(1).max(1)
}

/// The first bin with room for `need` positions, which takes them (an empty bin takes a row of any length:
/// the sequences then widen to hold it).
fn first_fit(used: &mut [usize], width: usize, need: usize) -> Option<usize> {
    let bin = used.iter().position(|&u| u == 0 || u + need <= width)?;
    used[bin] += need;
    Some(bin)
}

/// The bin of each row, rows placed in the order given, first fit; bins beyond `bins` are opened when the rows
/// do not fit (the planner sees to it that batches fit; other callers get as many sequences as they need).
pub fn place(footprints: &[usize], into: PackInto) -> Vec<usize> {
    let mut used = vec![0; into.bins.max(1)];
    footprints
        .iter()
        .map(|&need| {
            first_fit(&mut used, into.width, need).unwrap_or_else(|| {
                used.push(need);
                used.len() - 1
            })
        })
        .collect()
}

/// Open batches an item may still join: items come longest first, so only recent batches have room left that
/// later, shorter items can use; looking further back costs time and rarely finds space.
const OPEN_BATCHES: usize = 32;

/// One epoch's batches with packing (indices into the dataset, in placement order): items longest first
/// (ties broken per epoch), each joining the first open batch whose bins take all of its `rows_per_item` rows
/// (each row counted at the item's length, first fit), else a new one; batch order shuffled per epoch. An
/// item's rows always share a batch (a preference pair stays whole).
pub fn plan_packed_epoch(lengths: &[usize], rows_per_item: usize, into: PackInto, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let mut rng = SplitMix::new(seed ^ epoch.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let jitter: Vec<u64> = (0..lengths.len()).map(|_| rng.next()).collect();
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(lengths[i]), jitter[i]));
    let mut batches: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
    for i in order {
        let need = footprint(lengths[i]);
        let fits = |used: &[usize]| {
            let mut trial = used.to_vec();
            (0..rows_per_item).all(|_| first_fit(&mut trial, into.width, need).is_some()).then_some(trial)
        };
        let start = batches.len().saturating_sub(OPEN_BATCHES);
        match batches[start..].iter_mut().find_map(|(items, used)| fits(used).map(|trial| (items, used, trial))) {
            Some((items, used, trial)) => {
                items.push(i);
                *used = trial;
            }
            None => {
                let mut used = vec![0; into.bins.max(1)];
                for _ in 0..rows_per_item {
                    if first_fit(&mut used, into.width, need).is_none() {
                        used.push(need);
                    }
                }
                batches.push((vec![i], used));
            }
        }
    }
    let mut plan: Vec<Vec<usize>> = batches.into_iter().map(|(items, _)| items).collect();
    for i in (1..plan.len()).rev() {
        let j = rng.below(i + 1);
        plan.swap(i, j);
    }
    plan
}

/// The packed batch of `examples` (rows in this order, as [`super::collate`] lays them out), rows placed in
/// `placement` order with the given footprints (see [`place`]), padding-free up to each sequence's end.
pub fn collate_packed(examples: &[&Example], placement: &[usize], footprints: &[usize], into: PackInto, pad_multiple: usize, pad_id: u32) -> Batch {
    let mut bins_of = vec![0; examples.len()];
    for (&row, bin) in placement.iter().zip(place(footprints, into)) {
        bins_of[row] = bin;
    }
    let bins = bins_of.iter().copied().max().map_or(1, |b| b + 1).max(into.bins.max(1));
    let m = pad_multiple.max(1);
    let longest_fill = footprints.iter().copied().max().unwrap_or(1);
    let width = into.width.max(longest_fill).div_ceil(m) * m;
    let longest = examples.iter().map(|e| e.tokens.len()).max().unwrap_or(2).max(2);
    let row_width = (longest - 1).div_ceil(m) * m;
    let rows = examples.len();
    let mut inputs = vec![pad_id as i32; bins * width];
    let mut targets = vec![pad_id as i32; bins * width];
    let mut present = vec![0f32; bins * width];
    let mut segments = vec![0i32; bins * width];
    let mut gather = vec![0i32; rows * row_width];
    let mut mask = vec![0f32; rows * row_width];
    let mut cursor = vec![0usize; bins];
    let (mut real, mut supervised) = (0, 0);
    // Rows go into their bins in placement order, so each bin's rows sit in the order they were placed.
    for &r in placement {
        let e = examples[r];
        let n = e.tokens.len().saturating_sub(1);
        let bin = bins_of[r];
        let start = bin * width + cursor[bin];
        cursor[bin] += n;
        for j in 0..n {
            let at = start + j;
            inputs[at] = e.tokens[j] as i32;
            targets[at] = e.tokens[j + 1] as i32;
            present[at] = 1.0;
            segments[at] = r as i32 + 1;
            gather[r * row_width + j] = at as i32;
            if e.supervised[j + 1] {
                mask[r * row_width + j] = 1.0;
                supervised += 1;
            }
        }
        real += n;
    }
    let packed_shape = [bins as i32, width as i32];
    let row_shape = [rows as i32, row_width as i32];
    Batch {
        inputs: Array::from_slice(&inputs, &packed_shape),
        targets: Array::from_slice(&targets, &packed_shape),
        mask: Array::from_slice(&mask, &row_shape),
        real: Array::from_slice(&present, &packed_shape),
        rows,
        real_tokens: real,
        padded_tokens: bins * width,
        supervised,
        pairs: 0,
        labels: None,
        kl: None,
        reference: None,
        packed: Some(Packed { segments: Array::from_slice(&segments, &packed_shape), gather: Array::from_slice(&gather, &row_shape) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(tokens: Vec<u32>, prompt: usize) -> Example {
        Example { supervised: (0..tokens.len()).map(|i| i >= prompt).collect(), tokens, truncated: false }
    }

    #[test]
    fn rows_sit_side_by_side_and_come_back_through_gather() {
        // Rows of 5, 3 and 4 tokens (inputs 4, 2, 3) into 2 bins of 6 positions: first fit puts row 0 and
        // row 1 in bin 0 (4 + 2 = 6), row 2 in bin 1.
        let rows = [example(vec![1, 2, 3, 4, 5], 2), example(vec![6, 7, 8], 1), example(vec![9, 10, 11, 12], 3)];
        let refs: Vec<&Example> = rows.iter().collect();
        let into = PackInto { bins: 2, width: 6 };
        let b = collate_packed(&refs, &[0, 1, 2], &[4, 2, 3], into, 2, 0);
        assert_eq!(b.inputs.shape(), &[2, 6]);
        assert_eq!(b.inputs.as_slice::<i32>(), &[1, 2, 3, 4, 6, 7, 9, 10, 11, 0, 0, 0]);
        assert_eq!(b.targets.as_slice::<i32>(), &[2, 3, 4, 5, 7, 8, 10, 11, 12, 0, 0, 0]);
        let p = b.packed.as_ref().unwrap();
        assert_eq!(p.segments.as_slice::<i32>(), &[1, 1, 1, 1, 2, 2, 3, 3, 3, 0, 0, 0]);
        assert_eq!(b.real.as_slice::<f32>(), &[1., 1., 1., 1., 1., 1., 1., 1., 1., 0., 0., 0.]);
        // Row layout [3, 4] (longest inputs 4, a multiple of 2): row 1's positions 4, 5; row 2's 6, 7, 8.
        assert_eq!(p.gather.shape(), &[3, 4]);
        assert_eq!(p.gather.as_slice::<i32>(), &[0, 1, 2, 3, 4, 5, 0, 0, 6, 7, 8, 0]);
        // Supervised targets: tokens from the prompt length on, shifted by one, as the padded layout has them.
        assert_eq!(b.mask.as_slice::<f32>(), &[0., 1., 1., 1., 1., 1., 0., 0., 0., 0., 1., 0.]);
        let padded = super::super::collate(&refs, 2, 0);
        assert_eq!(b.mask.as_slice::<f32>(), padded.mask.as_slice::<f32>());
        assert_eq!((b.real_tokens, b.padded_tokens, b.supervised), (9, 12, padded.supervised));
        // Gathering the packed targets gives the padded targets wherever the mask is on.
        let back = b.targets.flatten(None, None).unwrap().take(&p.gather).unwrap();
        let (m, x, y) = (b.mask.as_slice::<f32>(), back.as_slice::<i32>(), padded.targets.as_slice::<i32>());
        assert!((0..m.len()).all(|i| m[i] == 0.0 || x[i] == y[i]));
    }

    #[test]
    fn rows_that_do_not_fit_open_more_sequences() {
        let rows = [example(vec![1, 2, 3, 4, 5], 1), example(vec![6, 7, 8, 9, 10], 1)];
        let refs: Vec<&Example> = rows.iter().collect();
        let b = collate_packed(&refs, &[0, 1], &[4, 4], PackInto { bins: 1, width: 6 }, 1, 0);
        assert_eq!(b.inputs.shape(), &[2, 6]);
        // A row longer than a sequence widens them all rather than being cut.
        let b = collate_packed(&refs[..1], &[0], &[4], PackInto { bins: 1, width: 3 }, 1, 0);
        assert_eq!(b.inputs.shape(), &[1, 4]);
    }

    #[test]
    fn the_plan_fills_every_batch_into_its_bins_and_keeps_pairs_whole() {
        let lengths: Vec<usize> = (0..200).map(|i| (i * 37) % 60 + 3).collect();
        let into = PackInto { bins: 4, width: 64 };
        for rows_per_item in [1, 2] {
            let plan = plan_packed_epoch(&lengths, rows_per_item, into, 5, 0);
            assert_eq!(plan, plan_packed_epoch(&lengths, rows_per_item, into, 5, 0), "deterministic");
            assert_ne!(plan, plan_packed_epoch(&lengths, rows_per_item, into, 5, 1), "another epoch, another order");
            let mut all: Vec<usize> = plan.iter().flatten().copied().collect();
            all.sort();
            assert_eq!(all, (0..200).collect::<Vec<_>>(), "every item once");
            let mut used = 0;
            for batch in &plan {
                // Replaying the placement (as `assemble` does) never needs a fifth bin.
                let footprints: Vec<usize> = batch.iter().flat_map(|&i| std::iter::repeat_n(footprint(lengths[i]), rows_per_item)).collect();
                let bins = place(&footprints, into);
                assert!(bins.iter().all(|&b| b < 4), "{batch:?} → {bins:?}");
                used += footprints.iter().sum::<usize>();
            }
            // Longest first with look-back fills the sequences: at most one batch's worth of room is left over
            // (the last batches), far from the ~50% a plain first fit in random order leaves with these lengths.
            let capacity = plan.len() * 4 * 64;
            assert!(capacity - used < 4 * 64 + capacity / 20, "{used} of {capacity}");
        }
    }
}
