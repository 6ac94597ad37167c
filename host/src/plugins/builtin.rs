//! The one list of built-in plugin crates. `inventory` collects registrations only from crates the binary
//! links, and the linker drops crates nothing names; naming each here keeps them (inventory issue #50).

use plugin_cache_policies as _;
use plugin_command as _;
use plugin_lora_targets as _;
use plugin_losses as _;
use plugin_rewards as _;
use plugin_schedules as _;

/// Built-in names the host must always have; a test checks each is registered.
#[cfg(test)]
pub const EXPECTED: &[(sdk::PluginKind, &str)] = &[
    (sdk::PluginKind::LrSchedule, "constant"),
    (sdk::PluginKind::LrSchedule, "linear"),
    (sdk::PluginKind::LrSchedule, "cosine"),
    (sdk::PluginKind::LrSchedule, "step"),
    (sdk::PluginKind::LrSchedule, "exponential"),
    (sdk::PluginKind::LrSchedule, "wsd"),
    (sdk::PluginKind::KvCachePolicy, "standard"),
    (sdk::PluginKind::KvCachePolicy, "rotating"),
    (sdk::PluginKind::KvCachePolicy, "quantized"),
    (sdk::PluginKind::LoraTargetMapper, "short_names"),
    (sdk::PluginKind::LoraTargetMapper, "all_linear"),
    (sdk::PluginKind::LoraTargetMapper, "regex"),
    (sdk::PluginKind::DataCachePolicy, "none"),
    (sdk::PluginKind::DataCachePolicy, "lazy"),
    (sdk::PluginKind::DataCachePolicy, "disk"),
    (sdk::PluginKind::Loss, "sft"),
    (sdk::PluginKind::Reward, "exact_answer"),
    (sdk::PluginKind::Reward, "command"),
    (sdk::PluginKind::Reward, "reward_model"),
    (sdk::PluginKind::Environment, "calculator"),
    (sdk::PluginKind::Environment, "command"),
];
