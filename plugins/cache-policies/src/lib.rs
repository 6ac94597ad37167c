//! Built-in cache policies. KV caches (every layer gets the same kind) and data caches (below).
//!
//! | kind | keys | cache |
//! |---|---|---|
//! | `standard` | `step` (256) | grows by `step` positions at a time |
//! | `rotating` | `max_size` (required), `keep` (4) | the first `keep` tokens plus the most recent, `max_size` in all |
//! | `quantized` | `bits` (8), `group_size` (64), `start` (0) | keys and values quantized once an update leaves `start` or more tokens cached (that update still attends in full precision, as mlx-lm's conversion after each model call) |
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

// --- Data cache policies -------------------------------------------------------------------------------------
//
// | kind | keys | behaviour |
// |---|---|---|
// | `disk` | `dir` (`$XDG_CACHE_HOME/host/datasets`) | tokenize everything before training, keep it in memory and on disk; batches bucketed by exact token counts |
// | `lazy` | — | tokenize every row at load and keep it in memory only (nothing on disk); batches bucketed by exact token counts |
// | `none` | — | tokenize each row at load for its token count and again whenever it is used, keeping only the rows; batches bucketed by exact token counts |

use std::path::PathBuf;

use sdk::{register_data_cache_policy, DataCachePolicy};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoDataCache {}

impl Plugin for NoDataCache {
    const NAME: &'static str = "none";
    const SUMMARY: &'static str = "tokenize rows whenever they are used (and once at load, to count); only rows kept";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        from_table(config)
    }
}

impl DataCachePolicy for NoDataCache {
    fn tokenize_eagerly(&self) -> bool {
        false
    }
    fn memoize(&self) -> bool {
        false
    }
    fn load(&mut self, _key: &str) -> Result<Option<Vec<u8>>, PluginError> {
        Ok(None)
    }
    fn store(&mut self, _key: &str, _data: &[u8]) -> Result<(), PluginError> {
        Ok(())
    }
}

register_data_cache_policy!(NoDataCache);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LazyDataCache {}

impl Plugin for LazyDataCache {
    const NAME: &'static str = "lazy";
    const SUMMARY: &'static str = "tokenize every row at load and keep it in memory, not on disk";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        from_table(config)
    }
}

impl DataCachePolicy for LazyDataCache {
    fn tokenize_eagerly(&self) -> bool {
        false
    }
    fn memoize(&self) -> bool {
        true
    }
    fn load(&mut self, _key: &str) -> Result<Option<Vec<u8>>, PluginError> {
        Ok(None)
    }
    fn store(&mut self, _key: &str, _data: &[u8]) -> Result<(), PluginError> {
        Ok(())
    }
}

register_data_cache_policy!(LazyDataCache);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskDataCache {
    dir: Option<PathBuf>,
}

impl DiskDataCache {
    fn dir(&self) -> Result<PathBuf, PluginError> {
        if let Some(dir) = &self.dir {
            return Ok(dir.clone());
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .ok_or_else(|| PluginError::Config("no cache directory: set `dir`, XDG_CACHE_HOME or HOME".into()))?;
        Ok(base.join("host").join("datasets"))
    }

    fn path(&self, key: &str) -> Result<PathBuf, PluginError> {
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(PluginError::Invalid(format!("cache key `{key}` is not a plain name")));
        }
        Ok(self.dir()?.join(format!("{key}.bin")))
    }
}

impl Plugin for DiskDataCache {
    const NAME: &'static str = "disk";
    const SUMMARY: &'static str = "tokenize before training; keep tokens on disk, keyed by tokenizer, template and data";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        from_table(config)
    }
}

impl DataCachePolicy for DiskDataCache {
    fn tokenize_eagerly(&self) -> bool {
        true
    }
    fn memoize(&self) -> bool {
        true
    }
    fn load(&mut self, key: &str) -> Result<Option<Vec<u8>>, PluginError> {
        match std::fs::read(self.path(key)?) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
    fn store(&mut self, key: &str, data: &[u8]) -> Result<(), PluginError> {
        let path = self.path(key)?;
        let dir = path.parent().map(PathBuf::from).unwrap_or_default();
        std::fs::create_dir_all(&dir)?;
        // Written under a temporary name and renamed: a crash never leaves a partial cache file.
        let tmp = dir.join(format!(".{key}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, data)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }
}

register_data_cache_policy!(DiskDataCache);
