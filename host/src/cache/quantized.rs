use mlx_rs::{error::Exception, ops::indexing::IndexOp, Array};
use sdk::KvCacheSpec;

use super::{repeat_padding, repeat_rows, standard::grow_and_write, AttentionMask, KvCache, KvTensors, KvView, Realign};
use crate::nn::Quant;

const STEP: usize = 256;

enum Store {
    Empty,
    Dense(Array, Array),
    Quantized([Array; 3], [Array; 3]),
}

/// Dense until an update leaves `start` or more tokens cached, then keys and values quantized (`bits`,
/// `group_size` along the head dimension), as mlx-lm's generation with `quantized_kv_start` converts its
/// caches to `QuantizedKVCache`s.
pub struct QuantizedCache {
    quant: Quant,
    start: usize,
    store: Store,
    offset: usize,
    padding: Vec<usize>,
    /// RoPE shift per row (empty: none), set by `realign`.
    shifts: Vec<i32>,
}

impl QuantizedCache {
    pub fn new(quant: Quant, start: usize) -> Self {
        QuantizedCache { quant, start, store: Store::Empty, offset: 0, padding: Vec::new(), shifts: Vec::new() }
    }

    fn quantize(&self, x: &Array) -> Result<[Array; 3], Exception> {
        let (w, s, b) = self.quant.quantize(x)?;
        let b = b.ok_or_else(|| Exception::custom("the KV cache quantizes affine, which has biases"))?;
        let dtype = x.dtype();
        Ok([w, s.as_dtype(dtype)?, b.as_dtype(dtype)?])
    }
}

fn prefix(a: &Array, end: usize) -> Array {
    a.index((.., .., ..end as i32, ..))
}

impl KvCache for QuantizedCache {
    fn offset(&self) -> usize {
        self.offset
    }

    fn update_and_fetch(&mut self, keys: Array, values: Array) -> Result<KvView, Exception> {
        let at = self.offset;
        let len = keys.shape()[2] as usize;
        let end = at + len;
        let store = std::mem::replace(&mut self.store, Store::Empty);
        // While dense, this update attends to full-precision entries (the new ones included); once `start` or
        // more tokens are cached the store is quantized for the updates after it. This is mlx-lm's schedule,
        // which converts a KVCache to a QuantizedKVCache after each model call with offset >= start.
        let (store, tensors) = match store {
            Store::Empty | Store::Dense(..) => {
                let (kb, vb) = match store {
                    Store::Dense(k, v) => (Some(k), Some(v)),
                    _ => (None, None),
                };
                let (k, v) = (grow_and_write(kb, &keys, at, STEP)?, grow_and_write(vb, &values, at, STEP)?);
                let tensors = KvTensors::Dense { keys: prefix(&k, end), values: prefix(&v, end) };
                let store = if end >= self.start { Store::Quantized(self.quantize(&prefix(&k, end))?, self.quantize(&prefix(&v, end))?) } else { Store::Dense(k, v) };
                (store, tensors)
            }
            Store::Quantized(kq, vq) => {
                let (nk, nv) = (self.quantize(&keys)?, self.quantize(&values)?);
                let write = |old: [Array; 3], new: [Array; 3]| -> Result<[Array; 3], Exception> {
                    let [o0, o1, o2] = old;
                    let [n0, n1, n2] = new;
                    Ok([grow_and_write(Some(o0), &n0, at, STEP)?, grow_and_write(Some(o1), &n1, at, STEP)?, grow_and_write(Some(o2), &n2, at, STEP)?])
                };
                let (k, v) = (write(kq, nk)?, write(vq, nv)?);
                let tensors = KvTensors::Quantized {
                    keys: [prefix(&k[0], end), prefix(&k[1], end), prefix(&k[2], end)],
                    values: [prefix(&v[0], end), prefix(&v[1], end), prefix(&v[2], end)],
                    quant: self.quant,
                };
                (Store::Quantized(k, v), tensors)
            }
        };
        self.offset = end;
        self.store = store;
        let positions: Vec<usize> = (0..end).collect();
        Ok(KvView { tensors, mask: AttentionMask::build(len, &positions, at, None, 0, &self.padding)? })
    }

    fn trim(&mut self, n: usize) -> usize {
        let n = n.min(self.offset);
        self.offset -= n;
        n
    }

    fn reset(&mut self) {
        self.store = Store::Empty;
        self.offset = 0;
        self.padding.clear();
        self.shifts.clear();
    }

    fn set_left_padding(&mut self, padding: Vec<usize>) {
        self.padding = padding;
    }

    fn repeat_rows(&mut self, n: usize) -> Result<(), Exception> {
        let end = self.offset;
        self.store = match std::mem::replace(&mut self.store, Store::Empty) {
            Store::Empty => Store::Empty,
            Store::Dense(k, v) => Store::Dense(repeat_rows(&prefix(&k, end), n)?, repeat_rows(&prefix(&v, end), n)?),
            Store::Quantized(k, v) => {
                let rep = |t: [Array; 3]| -> Result<[Array; 3], Exception> {
                    Ok([repeat_rows(&prefix(&t[0], end), n)?, repeat_rows(&prefix(&t[1], end), n)?, repeat_rows(&prefix(&t[2], end), n)?])
                };
                Store::Quantized(rep(k)?, rep(v)?)
            }
        };
        self.padding = repeat_padding(&self.padding, n);
        self.shifts = repeat_padding(&self.shifts, n);
        Ok(())
    }

    fn state(&self) -> Vec<&Array> {
        match &self.store {
            Store::Empty => Vec::new(),
            Store::Dense(k, v) => vec![k, v],
            Store::Quantized(k, v) => k.iter().chain(v.iter()).collect(),
        }
    }

    fn rope_shifts(&self) -> &[i32] {
        &self.shifts
    }

    fn realign(&mut self, plan: &Realign) -> Result<(), Exception> {
        plan.check(self.offset, &self.padding)?;
        let pad = &self.padding;
        let all = |t: &[Array; 3]| -> Result<[Array; 3], Exception> { Ok([plan.apply(&t[0], pad)?, plan.apply(&t[1], pad)?, plan.apply(&t[2], pad)?]) };
        self.store = match (&self.store, plan.len) {
            (_, 0) | (Store::Empty, _) => Store::Empty,
            (Store::Dense(k, v), _) => Store::Dense(plan.apply(k, pad)?, plan.apply(v, pad)?),
            (Store::Quantized(k, v), _) => Store::Quantized(all(k)?, all(v)?),
        };
        self.offset = plan.len;
        self.shifts = plan.shifts(&self.padding, &self.shifts);
        self.padding = plan.padding();
        Ok(())
    }

    fn spec(&self) -> KvCacheSpec {
        KvCacheSpec::Quantized { bits: self.quant.bits as u32, group_size: self.quant.group_size as u32, start: self.start }
    }
}
