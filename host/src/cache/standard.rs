use mlx_rs::{error::Exception, ops, ops::indexing::{IndexOp, TryIndexMutOp}, Array};
use sdk::KvCacheSpec;

use super::{repeat_padding, repeat_rows, AttentionMask, KvCache, KvTensors, KvView};

/// Keys and values in buffers that grow `step` positions at a time, so decoding writes in place instead of
/// concatenating every token.
pub struct StandardCache {
    step: usize,
    buffers: Option<(Array, Array)>,
    offset: usize,
    padding: Vec<usize>,
}

impl StandardCache {
    pub fn new(step: usize) -> Self {
        StandardCache { step, buffers: None, offset: 0, padding: Vec::new() }
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
        Ok(KvView { tensors: view, mask: AttentionMask::build(len, &positions, at, None, 0, &self.padding)? })
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
        Ok(())
    }

    fn spec(&self) -> KvCacheSpec {
        KvCacheSpec::Standard { step: self.step }
    }

    fn state(&self) -> Vec<&Array> {
        self.buffers.iter().flat_map(|(k, v)| [k, v]).collect()
    }
}
