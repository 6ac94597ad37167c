//! The sections that only GRPO reads: `[rollout]` (sampling and advantages), `[[reward]]` and `[eval]`.

use std::path::PathBuf;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::sections::PluginTable;

/// `[rollout]`: how GRPO samples completions and turns rewards into advantages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// Completions per prompt, G (default 8, as TRL).
    #[serde(default = "RolloutConfig::default_generations")]
    pub num_generations: usize,
    /// Completion tokens at most (TRL's max_completion_length; default 256).
    #[serde(default = "RolloutConfig::default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default = "RolloutConfig::one")]
    pub temperature: f32,
    #[serde(default = "RolloutConfig::one")]
    pub top_p: f32,
    #[serde(default)]
    pub top_k: i32,
    #[serde(default)]
    pub min_p: f32,
    /// Divide centred rewards by the group's standard deviation (`"group"` or `true`, the default), the whole
    /// batch's (`"batch"`), or not at all (`"none"` or `false`, Dr. GRPO).
    #[serde(default)]
    pub scale_rewards: ScaleRewards,
    /// Optimizer steps per batch of rollouts (μ; default 1). Later iterations clip against the rollout policy.
    #[serde(default = "RolloutConfig::one_iteration")]
    pub num_iterations: u64,
    /// A KvCachePolicy plugin for generation (default standard).
    #[serde(default = "RolloutConfig::default_cache")]
    pub cache: PluginTable,
    /// Completions that hit `max_tokens` without EOS keep their rewards but train on none of their tokens
    /// (TRL's `mask_truncated_completions`, DAPO's overlong filtering).
    #[serde(default)]
    pub mask_truncated_completions: bool,
    /// DAPO's dynamic sampling: prompts whose completions all got the same reward are dropped and more
    /// prompts sampled until each micro-batch has `batch_size` prompts with spread, for at most
    /// `max_sampling_rounds` rounds (then dropped prompts fill the rest).
    #[serde(default)]
    pub dynamic_sampling: bool,
    /// Sampling rounds per micro-batch under `dynamic_sampling` (default 4).
    #[serde(default = "RolloutConfig::default_rounds")]
    pub max_sampling_rounds: usize,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            num_generations: Self::default_generations(),
            max_tokens: Self::default_max_tokens(),
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            scale_rewards: ScaleRewards::Group,
            num_iterations: 1,
            cache: Self::default_cache(),
            mask_truncated_completions: false,
            dynamic_sampling: false,
            max_sampling_rounds: Self::default_rounds(),
        }
    }
}

impl RolloutConfig {
    /// The sampler these settings describe (no repetition penalty: GRPO samples as the policy says).
    pub fn sampler(&self) -> crate::generate::SamplerConfig {
        crate::generate::SamplerConfig {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: 1.0,
            repetition_context: 0,
        }
    }

    fn default_generations() -> usize {
        8
    }

    fn default_max_tokens() -> usize {
        256
    }

    fn one() -> f32 {
        1.0
    }

    fn one_iteration() -> u64 {
        1
    }

    fn default_cache() -> PluginTable {
        PluginTable::named("standard")
    }

    fn default_rounds() -> usize {
        4
    }
}

/// How centred rewards are scaled into advantages (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ScaleRewards {
    #[default]
    Group,
    Batch,
    None,
}

impl<'de> Deserialize<'de> for ScaleRewards {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match toml::Value::deserialize(d)? {
            toml::Value::Boolean(true) => Ok(ScaleRewards::Group),
            toml::Value::Boolean(false) => Ok(ScaleRewards::None),
            toml::Value::String(s) if s == "group" => Ok(ScaleRewards::Group),
            toml::Value::String(s) if s == "batch" => Ok(ScaleRewards::Batch),
            toml::Value::String(s) if s == "none" => Ok(ScaleRewards::None),
            v => Err(de::Error::custom(format!("`scale_rewards` is \"group\", \"batch\", \"none\", true or false, got {v}"))),
        }
    }
}

impl Serialize for ScaleRewards {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            ScaleRewards::Group => "group",
            ScaleRewards::Batch => "batch",
            ScaleRewards::None => "none",
        })
    }
}

/// The `weight` (default 1) and `name` keys a reward or an environment takes beside its plugin's own.
pub(super) fn weight_and_name<E: de::Error>(table: &mut toml::Table) -> Result<(f64, Option<String>), E> {
    let weight = match table.remove("weight") {
        None => 1.0,
        Some(toml::Value::Float(x)) if x.is_finite() => x,
        Some(toml::Value::Integer(n)) => n as f64,
        Some(v) => return Err(E::custom(format!("`weight` must be a number, got {v}"))),
    };
    let name = match table.remove("name") {
        None => None,
        Some(toml::Value::String(n)) if !n.is_empty() && n.chars().all(|c| c.is_alphanumeric() || "_-.".contains(c)) => Some(n),
        Some(v) => return Err(E::custom(format!("`name` must be a non-empty string of letters, digits, `_`, `-` or `.`, got {v}"))),
    };
    Ok((weight, name))
}

/// One `[[reward]]`: a Reward plugin and its weight in the sum.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardEntry {
    pub plugin: PluginTable,
    /// Default 1.
    pub weight: f64,
    /// The name in metrics and logs (`rewards/<name>/mean`); default the kind (`kind_<i>` when repeated).
    pub name: Option<String>,
}

impl<'de> Deserialize<'de> for RewardEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(d)?;
        let (weight, name) = weight_and_name(&mut table)?;
        Ok(RewardEntry { plugin: PluginTable::from_table(table)?, weight, name })
    }
}

impl Serialize for RewardEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut table = self.plugin.to_table();
        table.insert("weight".to_owned(), toml::Value::Float(self.weight));
        if let Some(name) = &self.name {
            table.insert("name".to_owned(), toml::Value::String(name.clone()));
        }
        table.serialize(s)
    }
}

/// `[eval]`: validation rollouts for losses that learn from rewards: completions of held-out prompts,
/// scored by the run's `[[reward]]` functions, every `every` steps and at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Prompt rows, as `[data] train` (relative to the working directory).
    pub prompts: PathBuf,
    /// Evaluate every this many steps (the end of the run always evaluates).
    pub every: Option<u64>,
    /// Completions per prompt (default 1).
    #[serde(default = "EvalConfig::one")]
    pub num_generations: usize,
    /// Sampling temperature (default 0: greedy, the same completions every time for the same weights).
    #[serde(default)]
    pub temperature: f32,
    /// Completion tokens at most (default `[rollout] max_tokens`).
    pub max_tokens: Option<usize>,
    /// Evaluate only the first this many prompts (default all).
    pub max_prompts: Option<usize>,
    /// Prompts per generation batch (default `[data] batch_size`).
    pub batch_size: Option<usize>,
}

impl EvalConfig {
    fn one() -> usize {
        1
    }
}
