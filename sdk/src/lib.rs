//! The plugin SDK: one trait per plugin kind, registration of built-in plugins through `inventory`, and the
//! C ABI through which a third party's `cdylib` provides the same trait implementations to the host without
//! recompiling it.
//!
//! A plugin is a type implementing [`Plugin`] (its name, a one-line summary, and construction from its own
//! TOML table) and the trait of its kind:
//!
//! | kind | trait | registered with | exported with |
//! |---|---|---|---|
//! | loss | [`Loss`] | [`register_loss!`] | `export_plugins!(loss T)` |
//! | LR schedule | [`LrSchedule`] | [`register_schedule!`] | `export_plugins!(schedule T)` |
//! | LoRA target mapper | [`LoraTargetMapper`] | [`register_lora_target_mapper!`] | `export_plugins!(lora_target_mapper T)` |
//! | KV cache policy | [`KvCachePolicy`] | [`register_kv_cache_policy!`] | `export_plugins!(kv_cache_policy T)` |
//! | data cache policy | [`DataCachePolicy`] | [`register_data_cache_policy!`] | `export_plugins!(data_cache_policy T)` |
//! | reward | [`Reward`] | [`register_reward!`] | `export_plugins!(reward T)` |
//! | environment | [`Environment`] | [`register_environment!`] | `export_plugins!(environment T)` |
//!
//! Rules for code that runs inside a plugin (see `abi` for why): a loss only builds the MLX graph (no
//! `eval`, `item` or `as_slice`, no data-dependent control flow, no per-call side effects: under `compile` it
//! runs once per trace), takes PRNG keys from its inputs, never frees what it was lent, and hands back new
//! arrays. A cdylib plugin links with `-Wl,-Bsymbolic` (see `plugins/example-cdylib/build.rs`).

pub mod abi;
mod config;
mod data_cache;
mod environment;
mod error;
mod kind;
mod kv_cache;
mod lora_target;
mod loss;
mod registry;
mod reward;
mod schedule;

pub use config::from_table;
pub use data_cache::DataCachePolicy;
pub use environment::{replies_from_json, tools_from_json, EnvReply, EnvTurn, Environment};
pub use error::PluginError;
pub use kind::PluginKind;
pub use kv_cache::{KvCachePolicy, KvCacheSpec};
pub use lora_target::{LoraTarget, LoraTargetMapper, ModelModules};
pub use loss::{Loss, LossInputs, LossOutput, Requirements};
pub use mlx_rs;
pub use serde_json;
pub use registry::{builtin_registrations, Factory, Registration};
pub use reward::{Reward, RewardBatch};
pub use schedule::{LrSchedule, ScheduleContext, Warmup};
pub use toml;

/// A plugin's identity and construction from its own TOML table (the section minus `kind`).
pub trait Plugin: Sized + 'static {
    /// The name users write as `kind = "..."`: short, lowercase, unique within the plugin kind.
    const NAME: &'static str;
    /// One line for `host plugins`.
    const SUMMARY: &'static str;
    /// Builds the plugin from its table; unknown keys must be an error (use [`from_table`] with a
    /// `#[serde(deny_unknown_fields)]` struct).
    fn from_config(config: &toml::Table) -> Result<Self, PluginError>;
}

/// The version of this SDK, carried in every cdylib's descriptor for diagnostics.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

#[doc(hidden)]
pub mod __private {
    pub use inventory;
}
