use std::fmt;

/// The plugin kinds. The numbers are part of the C ABI and never change; new kinds get new numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum PluginKind {
    Loss = 1,
    LrSchedule = 2,
    LoraTargetMapper = 3,
    KvCachePolicy = 4,
    DataCachePolicy = 5,
    Reward = 6,
    Environment = 7,
}

impl PluginKind {
    pub const ALL: [PluginKind; 7] = [
        PluginKind::Loss,
        PluginKind::LrSchedule,
        PluginKind::LoraTargetMapper,
        PluginKind::KvCachePolicy,
        PluginKind::DataCachePolicy,
        PluginKind::Reward,
        PluginKind::Environment,
    ];

    pub fn from_abi(id: u32) -> Option<PluginKind> {
        Self::ALL.into_iter().find(|k| *k as u32 == id)
    }

    /// The name used in messages and in `host plugins`.
    pub fn label(self) -> &'static str {
        match self {
            PluginKind::Loss => "loss",
            PluginKind::LrSchedule => "schedule",
            PluginKind::LoraTargetMapper => "lora_target_mapper",
            PluginKind::KvCachePolicy => "kv_cache_policy",
            PluginKind::DataCachePolicy => "data_cache_policy",
            PluginKind::Reward => "reward",
            PluginKind::Environment => "environment",
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}
