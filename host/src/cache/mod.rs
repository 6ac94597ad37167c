//! The KV cache: one trait, three kinds (the host owns them; `KvCachePolicy` plugins choose per layer).
//!
//! A cache stores each layer's rotated keys and values, `[B, H_kv, S, D]`, and hands attention a [`KvView`]:
//! what to attend to and the mask that goes with it. Rows of a batch may be left-padded (batched
//! generation); padded key slots are masked out for their row.

mod mask;
mod quantized;
mod rotating;
mod standard;

use mlx_rs::{error::Exception, Array};
use sdk::{KvCachePolicy, KvCacheSpec, PluginError};

pub use mask::AttentionMask;
pub use quantized::QuantizedCache;
pub use rotating::RotatingCache;
pub use standard::StandardCache;

use crate::nn::Quant;

/// Keys and values as stored: dense, or quantized (packed, scales, biases).
pub enum KvTensors {
    Dense { keys: Array, values: Array },
    Quantized { keys: [Array; 3], values: [Array; 3], quant: Quant },
}

/// What one attention call sees.
pub struct KvView {
    pub tensors: KvTensors,
    pub mask: AttentionMask,
}

pub trait KvCache {
    /// Tokens processed so far: the RoPE position of the next token.
    fn offset(&self) -> usize;
    /// Appends `[B, H_kv, L, D]` keys and values and returns what the L new queries attend to.
    fn update_and_fetch(&mut self, keys: Array, values: Array) -> Result<KvView, Exception>;
    /// Forgets the last `n` tokens (speculative decoding, retries); returns how many were forgotten.
    fn trim(&mut self, n: usize) -> usize;
    /// Empties the cache, keeping its kind and settings.
    fn reset(&mut self);
    /// Left padding per batch row: key slots below it are never attended to by that row.
    fn set_left_padding(&mut self, padding: Vec<usize>);
    /// Repeats every row `n` times along the batch axis (a prompt's cache shared by `n` samples).
    fn repeat_rows(&mut self, n: usize) -> Result<(), Exception>;
    fn spec(&self) -> KvCacheSpec;
    /// The arrays the cache holds (to evaluate them).
    fn state(&self) -> Vec<&Array>;
    /// Rebuilds the batch between the turns of a multi-turn rollout (see [`Realign`]): rows that go on are
    /// kept, each with a prefix of its real tokens, right-aligned to a common length and left-padded again.
    fn realign(&mut self, plan: &Realign) -> Result<(), Exception>;
    /// Per row, what to add to a slot's index for its RoPE position (empty: nothing, the usual case). A realign
    /// moves a row's keys to other slots with their rotations baked in at the old positions; new tokens of
    /// that row must be rotated as if the row had not moved.
    fn rope_shifts(&self) -> &[i32];
}

/// A new batch from an old one: new row i is old row `rows[i]` holding its first `keep[i]` real tokens
/// (counted from its first token after the old left padding) in slots `len − keep[i] .. len`; the slots
/// before them are its new left padding. Relative positions inside a row are unchanged, so RoPE'd keys stay
/// valid (a row's shift is a constant offset for all its tokens).
#[derive(Debug, Clone, PartialEq)]
pub struct Realign {
    pub rows: Vec<usize>,
    pub keep: Vec<usize>,
    pub len: usize,
}

impl Realign {
    pub fn padding(&self) -> Vec<usize> {
        self.keep.iter().map(|&k| self.len - k).collect()
    }

    /// The rows' RoPE shifts after the realign: a row that moves left by d slots adds d to its shift.
    pub(crate) fn shifts(&self, old_padding: &[usize], old_shifts: &[i32]) -> Vec<i32> {
        let shifts: Vec<i32> = self
            .rows
            .iter()
            .zip(self.padding())
            .map(|(&r, new_pad)| old_shifts.get(r).copied().unwrap_or(0) + old_padding.get(r).copied().unwrap_or(0) as i32 - new_pad as i32)
            .collect();
        if shifts.iter().all(|&s| s == 0) { Vec::new() } else { shifts }
    }

    /// `[B', 1, len, 1]` source slots for a `[B, H, S, D]` array whose rows had `old_padding` (padding slots
    /// read slot 0: they are masked).
    fn slots(&self, old_padding: &[usize]) -> Result<Array, Exception> {
        let mut idx = Vec::with_capacity(self.rows.len() * self.len);
        for (&row, &keep) in self.rows.iter().zip(&self.keep) {
            let old_pad = old_padding.get(row).copied().unwrap_or(0);
            let new_pad = self.len - keep;
            idx.extend((0..self.len).map(|s| if s < new_pad { 0 } else { (old_pad + s - new_pad) as i32 }));
        }
        Ok(Array::from_slice(&idx, &[self.rows.len() as i32, 1, self.len as i32, 1]))
    }

    /// The realigned `[B', H, len, D]` array (axis 2 holds positions; the last axis may be packed).
    pub(crate) fn apply(&self, a: &Array, old_padding: &[usize]) -> Result<Array, Exception> {
        let rows: Vec<i32> = self.rows.iter().map(|&r| r as i32).collect();
        let picked = a.take_axis(Array::from_slice(&rows, &[rows.len() as i32]), 0)?;
        picked.take_along_axis(self.slots(old_padding)?, 2)
    }

    /// Checks the plan against a cache of `offset` positions whose rows had `old_padding`.
    pub(crate) fn check(&self, offset: usize, old_padding: &[usize]) -> Result<(), Exception> {
        for (i, (&row, &keep)) in self.rows.iter().zip(&self.keep).enumerate() {
            let old_pad = old_padding.get(row).copied().unwrap_or(0);
            if keep > self.len || old_pad + keep > offset || (!old_padding.is_empty() && row >= old_padding.len()) {
                return Err(Exception::custom(format!(
                    "cache realign: new row {i} keeps {keep} tokens of row {row} (padding {old_pad}) from {offset} cached, into {}",
                    self.len
                )));
            }
        }
        Ok(())
    }
}

/// A fresh cache of the given kind.
pub fn make(spec: KvCacheSpec) -> Box<dyn KvCache> {
    match spec {
        KvCacheSpec::Standard { step } => Box::new(StandardCache::new(step.max(1))),
        KvCacheSpec::Rotating { max_size, keep } => Box::new(RotatingCache::new(max_size, keep)),
        KvCacheSpec::Quantized { bits, group_size, start } => {
            Box::new(QuantizedCache::new(Quant::affine(bits as i32, group_size as i32), start))
        }
    }
}

/// One cache per layer for multi-turn rollouts, whose batches are realigned between turns: as
/// [`for_layers`], except that a sliding-window layer gets a full cache masked to its window (a rotating cache
/// drops positions that a row which finished its turn early still needs), and a rotating cache chosen by the
/// policy is refused for the same reason.
pub fn for_episodes(policy: &dyn KvCachePolicy, windows: &[Option<usize>]) -> Result<Vec<Box<dyn KvCache>>, PluginError> {
    let n = windows.len();
    (0..n)
        .map(|layer| {
            let spec = policy.layer_cache(layer, n)?;
            let cache: Box<dyn KvCache> = match (windows[layer], spec) {
                (_, KvCacheSpec::Rotating { .. }) => {
                    return Err(PluginError::Config(format!(
                        "the cache policy gives layer {layer} a rotating cache; multi-turn rollouts realign their rows between turns, \
                         which needs every position of a turn kept: use a standard or quantized cache policy"
                    )))
                }
                (Some(w), KvCacheSpec::Standard { step }) => Box::new(StandardCache::windowed(step.max(1), w)),
                (Some(w), KvCacheSpec::Quantized { .. }) => Box::new(StandardCache::windowed(256, w)),
                (None, spec) => make(spec),
            };
            Ok(cache)
        })
        .collect()
}

/// One cache per layer (`windows[i]`: layer i's sliding attention window, if any), as the policy decides,
/// except that a layer with a window always gets a rotating cache of at most that window: it never attends
/// further back, so keeping more would change its outputs (and waste memory). Such a cache keeps no first
/// positions and is never quantized (as mlx-lm's).
pub fn for_layers(policy: &dyn KvCachePolicy, windows: &[Option<usize>]) -> Result<Vec<Box<dyn KvCache>>, PluginError> {
    let n = windows.len();
    (0..n)
        .map(|layer| {
            let spec = policy.layer_cache(layer, n)?;
            Ok(make(match (windows[layer], spec) {
                (None, spec) => spec,
                (Some(w), KvCacheSpec::Rotating { max_size, keep }) if max_size <= w => KvCacheSpec::Rotating { max_size, keep },
                (Some(w), _) => KvCacheSpec::Rotating { max_size: w, keep: 0 },
            }))
        })
        .collect()
}

/// Repeats each row of a `[B, ...]` array `n` times: rows b0 b0 b0 b1 b1 b1 ...
pub(crate) fn repeat_rows(a: &Array, n: usize) -> Result<Array, Exception> {
    let shape = a.shape().to_vec();
    let mut expanded = shape.clone();
    expanded.insert(1, n as i32);
    let tiled = mlx_rs::ops::broadcast_to(a.expand_dims(1)?, &expanded)?;
    let mut merged = shape;
    merged[0] *= n as i32;
    tiled.reshape(&merged)
}

fn repeat_padding<T: Copy>(padding: &[T], n: usize) -> Vec<T> {
    padding.iter().flat_map(|&p| std::iter::repeat_n(p, n)).collect()
}

#[cfg(test)]
mod tests;
