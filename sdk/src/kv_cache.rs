//! KV cache policies: the host owns the caches, a policy decides which kind each layer gets.

use crate::PluginError;

/// The cache a layer gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvCacheSpec {
    /// Grows by preallocating `step` positions at a time.
    Standard { step: usize },
    /// Holds at most `max_size` positions, always keeping the first `keep`.
    Rotating { max_size: usize, keep: usize },
    /// Stores keys and values quantized (`bits`, `group_size`) once `start` positions are cached.
    Quantized { bits: u32, group_size: u32, start: usize },
}

pub trait KvCachePolicy {
    /// The cache for layer `layer` of `num_layers`.
    fn layer_cache(&self, layer: usize, num_layers: usize) -> Result<KvCacheSpec, PluginError>;
}
