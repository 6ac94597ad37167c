use mlx_rs::{error::Exception, ops, ops::indexing::{IndexOp, TryIndexMutOp}, Array};
use sdk::KvCacheSpec;

use super::{repeat_padding, repeat_rows, AttentionMask, KvCache, KvTensors, KvView, Realign};

/// Keys and values in buffers that grow `step` positions at a time, so decoding writes in place instead of
/// concatenating every token.
pub struct StandardCache {
    step: usize,
    buffers: Option<(Array, Array)>,
    offset: usize,
    padding: Vec<usize>,
    /// RoPE shift per row (empty: none), set by `realign`.
    shifts: Vec<i32>,
    /// A sliding window applied through the mask only (every position is kept): multi-turn rollouts.
    window: Option<usize>,
}

impl StandardCache {
    pub fn new(step: usize) -> Self {
        StandardCache { step, buffers: None, offset: 0, padding: Vec::new(), shifts: Vec::new(), window: None }
    }

    /// A cache that keeps every position but lets each query see only the last `window` (itself included),
    /// as a rotating cache of that size would.
    pub fn windowed(step: usize, window: usize) -> Self {
        StandardCache { window: Some(window.max(1)), ..StandardCache::new(step) }
    }
}

/// Writes `[B, H, L, D]` new entries at slots `[at, at + L)` of a buffer large enough for them.
pub(super) fn grow_and_write(
    buffer: Option<Array>,
    new: &Array,
    at: usize,
    step: usize,
) -> Result<Array, Exception> {
    let shape = new.shape();
    let len = shape[2] as usize;
    let mut buffer = match buffer {
        Some(b) if b.shape()[2] as usize >= at + len => b,
        existing => {
            let blocks = (at + len).div_ceil(step);
            let fresh = Array::zeros::<f32>(&[shape[0], shape[1], (blocks * step) as i32, shape[3]])?.as_dtype(new.dtype())?;
            match existing {
                Some(b) => {
                    let kept = b.index((.., .., ..at as i32, ..));
                    let tail = fresh.index((.., .., at as i32.., ..));
                    ops::concatenate(&[kept, tail], 2)?
                }
                None => fresh,
            }
        }
    };
    buffer.try_index_mut((.., .., at as i32..(at + len) as i32, ..), new)?;
    Ok(buffer)
}

impl KvCache for StandardCache {
    fn offset(&self) -> usize {
        self.offset
    }

    fn update_and_fetch(&mut self, keys: Array, values: Array) -> Result<KvView, Exception> {
        let at = self.offset;
        let len = keys.shape()[2] as usize;
        let (kb, vb) = match self.buffers.take() {
            Some((k, v)) => (Some(k), Some(v)),
            None => (None, None),
        };
        let k = grow_and_write(kb, &keys, at, self.step)?;
        let v = grow_and_write(vb, &values, at, self.step)?;
        self.offset = at + len;
        let end = self.offset as i32;
        let view = KvTensors::Dense { keys: k.index((.., .., ..end, ..)), values: v.index((.., .., ..end, ..)) };
        self.buffers = Some((k, v));
        let positions: Vec<usize> = (0..self.offset).collect();
        Ok(KvView { tensors: view, mask: AttentionMask::build(len, &positions, at, self.window, 0, &self.padding)? })
    }

    fn trim(&mut self, n: usize) -> usize {
        let n = n.min(self.offset);
        self.offset -= n;
        n
    }

    fn reset(&mut self) {
        self.buffers = None;
        self.offset = 0;
        self.padding.clear();
        self.shifts.clear();
    }

    fn set_left_padding(&mut self, padding: Vec<usize>) {
        self.padding = padding;
    }

    fn repeat_rows(&mut self, n: usize) -> Result<(), Exception> {
        if let Some((k, v)) = &self.buffers {
            let end = self.offset as i32;
            let (k, v) = (k.index((.., .., ..end, ..)), v.index((.., .., ..end, ..)));
            self.buffers = Some((repeat_rows(&k, n)?, repeat_rows(&v, n)?));
        }
        self.padding = repeat_padding(&self.padding, n);
        self.shifts = repeat_padding(&self.shifts, n);
        Ok(())
    }

    fn spec(&self) -> KvCacheSpec {
        KvCacheSpec::Standard { step: self.step }
    }

    fn rope_shifts(&self) -> &[i32] {
        &self.shifts
    }

    fn realign(&mut self, plan: &Realign) -> Result<(), Exception> {
        plan.check(self.offset, &self.padding)?;
        self.buffers = match (&self.buffers, plan.len) {
            (Some((k, v)), len) if len > 0 => Some((plan.apply(k, &self.padding)?, plan.apply(v, &self.padding)?)),
            _ => None,
        };
        self.offset = plan.len;
        self.shifts = plan.shifts(&self.padding, &self.shifts);
        self.padding = plan.padding();
        Ok(())
    }

    fn state(&self) -> Vec<&Array> {
        self.buffers.iter().flat_map(|(k, v)| [k, v]).collect()
    }
}
