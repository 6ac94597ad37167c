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

fn repeat_padding(padding: &[usize], n: usize) -> Vec<usize> {
    padding.iter().flat_map(|&p| std::iter::repeat_n(p, n)).collect()
}

#[cfg(test)]
mod tests;
