use mlx_rs::{error::Exception, ops, ops::indexing::IndexOp, Array};
use sdk::KvCacheSpec;

use super::{repeat_padding, repeat_rows, AttentionMask, KvCache, KvTensors, KvView, Realign};

/// A sliding window: each query sees the first `keep` positions and the most recent `max_size − keep`
/// (itself included); storage never exceeds `max_size − 1` positions between calls.
pub struct RotatingCache {
    max_size: usize,
    keep: usize,
    stored: Option<(Array, Array)>,
    /// Absolute position of each stored slot.
    positions: Vec<usize>,
    offset: usize,
    padding: Vec<usize>,
    /// RoPE shift per row (empty: none), set by `realign`.
    shifts: Vec<i32>,
}

impl RotatingCache {
    pub fn new(max_size: usize, keep: usize) -> Self {
        let max_size = max_size.max(keep + 1);
        RotatingCache { max_size, keep, stored: None, positions: Vec::new(), offset: 0, padding: Vec::new(), shifts: Vec::new() }
    }

    /// Slots to keep after a call: the first `keep`, then the most recent that still fit.
    fn retained(&self, total: usize) -> Vec<usize> {
        let cap = self.max_size - 1;
        if total <= cap {
            return (0..total).collect();
        }
        let head = self.keep.min(total);
        (0..head).chain(total - (cap - head)..total).collect()
    }
}

fn gather_slots(a: &Array, slots: &[usize]) -> Result<Array, Exception> {
    let contiguous = slots.windows(2).all(|w| w[1] == w[0] + 1);
    if contiguous {
        let (start, end) = (slots.first().copied().unwrap_or(0) as i32, slots.last().map_or(0, |&s| s + 1) as i32);
        return Ok(a.index((.., .., start..end, ..)));
    }
    let idx: Vec<i32> = slots.iter().map(|&s| s as i32).collect();
    a.take_axis(Array::from_slice(&idx, &[idx.len() as i32]), 2)
}

impl KvCache for RotatingCache {
    fn offset(&self) -> usize {
        self.offset
    }

    fn update_and_fetch(&mut self, keys: Array, values: Array) -> Result<KvView, Exception> {
        let len = keys.shape()[2] as usize;
        let start = self.offset;
        let (k, v) = match self.stored.take() {
            Some((k0, v0)) => (ops::concatenate(&[k0, keys], 2)?, ops::concatenate(&[v0, values], 2)?),
            None => (keys, values),
        };
        self.positions.extend(start..start + len);
        self.offset = start + len;
        let window = self.max_size - self.keep;
        let mask = AttentionMask::build(len, &self.positions, start, Some(window), self.keep, &self.padding)?;
        let slots = self.retained(self.positions.len());
        self.stored = Some((gather_slots(&k, &slots)?, gather_slots(&v, &slots)?));
        self.positions = slots.iter().map(|&s| self.positions[s]).collect();
        Ok(KvView { tensors: KvTensors::Dense { keys: k, values: v }, mask })
    }

    fn trim(&mut self, n: usize) -> usize {
        // Only positions still stored can be forgotten.
        let n = n.min(self.positions.len());
        let keep = self.positions.len() - n;
        if let Some((k, v)) = self.stored.take() {
            self.stored = Some((k.index((.., .., ..keep as i32, ..)), v.index((.., .., ..keep as i32, ..))));
        }
        self.positions.truncate(keep);
        self.offset -= n;
        n
    }

    fn reset(&mut self) {
        self.stored = None;
        self.positions.clear();
        self.offset = 0;
        self.padding.clear();
        self.shifts.clear();
    }

    fn set_left_padding(&mut self, padding: Vec<usize>) {
        self.padding = padding;
    }

    fn repeat_rows(&mut self, n: usize) -> Result<(), Exception> {
        if let Some((k, v)) = &self.stored {
            self.stored = Some((repeat_rows(k, n)?, repeat_rows(v, n)?));
        }
        self.padding = repeat_padding(&self.padding, n);
        self.shifts = repeat_padding(&self.shifts, n);
        Ok(())
    }

    fn rope_shifts(&self) -> &[i32] {
        &self.shifts
    }

    fn realign(&mut self, plan: &Realign) -> Result<(), Exception> {
        // Only while every position is still stored: once the window dropped some, a row that stopped early
        // may have lost the ones it needs (multi-turn rollouts use `cache::for_episodes`, which never builds
        // rotating caches).
        if self.positions.len() != self.offset {
            return Err(Exception::custom("a rotating cache that dropped positions cannot realign its rows"));
        }
        plan.check(self.offset, &self.padding)?;
        self.stored = match (&self.stored, plan.len) {
            (Some((k, v)), len) if len > 0 => Some((plan.apply(k, &self.padding)?, plan.apply(v, &self.padding)?)),
            _ => None,
        };
        self.offset = plan.len;
        self.positions = (0..plan.len).collect();
        self.shifts = plan.shifts(&self.padding, &self.shifts);
        self.padding = plan.padding();
        Ok(())
    }

    fn spec(&self) -> KvCacheSpec {
        KvCacheSpec::Rotating { max_size: self.max_size, keep: self.keep }
    }

    fn state(&self) -> Vec<&Array> {
        self.stored.iter().flat_map(|(k, v)| [k, v]).collect()
    }
}
