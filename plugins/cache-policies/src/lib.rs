//! Built-in KV cache policies: every layer gets the same kind of cache.
//!
//! | kind | keys | cache |
//! |---|---|---|
//! | `standard` | `step` (256) | grows by `step` positions at a time |
//! | `rotating` | `max_size` (required), `keep` (4) | the first `keep` tokens plus the most recent, `max_size` in all |
//! | `quantized` | `bits` (8), `group_size` (64), `start` (0) | keys and values quantized once `start` tokens are cached |
//!
//! mlx-lm quantizes its KV cache only from token 5000 by default (`--quantized-kv-start`); here `start`
//! defaults to 0, so asking for a quantized cache gives one.

use serde::Deserialize;
use sdk::{from_table, register_kv_cache_policy, KvCachePolicy, KvCacheSpec, Plugin, PluginError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standard {
    #[serde(default = "Standard::default_step")]
    step: usize,
}

impl Standard {
    fn default_step() -> usize {
        256
    }
}

impl Plugin for Standard {
    const NAME: &'static str = "standard";
    const SUMMARY: &'static str = "full KV cache, preallocated step positions at a time";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let s: Standard = from_table(config)?;
        if s.step == 0 {
            return Err(PluginError::Config("`step` must be at least 1".into()));
        }
        Ok(s)
    }
}

impl KvCachePolicy for Standard {
    fn layer_cache(&self, _layer: usize, _num_layers: usize) -> Result<KvCacheSpec, PluginError> {
        Ok(KvCacheSpec::Standard { step: self.step })
    }
}

register_kv_cache_policy!(Standard);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotating {
    max_size: usize,
    #[serde(default = "Rotating::default_keep")]
    keep: usize,
}

impl Rotating {
    fn default_keep() -> usize {
        4
    }
}

impl Plugin for Rotating {
    const NAME: &'static str = "rotating";
    const SUMMARY: &'static str = "sliding window of max_size tokens that always keeps the first keep";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let r: Rotating = from_table(config)?;
        if r.keep >= r.max_size {
            return Err(PluginError::Config(format!("`keep` ({}) must be less than `max_size` ({})", r.keep, r.max_size)));
        }
        Ok(r)
    }
}

impl KvCachePolicy for Rotating {
    fn layer_cache(&self, _layer: usize, _num_layers: usize) -> Result<KvCacheSpec, PluginError> {
        Ok(KvCacheSpec::Rotating { max_size: self.max_size, keep: self.keep })
    }
}

register_kv_cache_policy!(Rotating);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantized {
    #[serde(default = "Quantized::default_bits")]
    bits: u32,
    #[serde(default = "Quantized::default_group_size")]
    group_size: u32,
    #[serde(default)]
    start: usize,
}

impl Quantized {
    fn default_bits() -> u32 {
        8
    }

    fn default_group_size() -> u32 {
        64
    }
}

impl Plugin for Quantized {
    const NAME: &'static str = "quantized";
    const SUMMARY: &'static str = "keys and values quantized (bits, group_size) from token start on";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let q: Quantized = from_table(config)?;
        if ![4, 8].contains(&q.bits) {
            return Err(PluginError::Config(format!("`bits` must be 4 or 8, got {}", q.bits)));
        }
        if ![32, 64, 128].contains(&q.group_size) {
            return Err(PluginError::Config(format!("`group_size` must be 32, 64 or 128, got {}", q.group_size)));
        }
        Ok(q)
    }
}

impl KvCachePolicy for Quantized {
    fn layer_cache(&self, _layer: usize, _num_layers: usize) -> Result<KvCacheSpec, PluginError> {
        Ok(KvCacheSpec::Quantized { bits: self.bits, group_size: self.group_size, start: self.start })
    }
}

register_kv_cache_policy!(Quantized);
