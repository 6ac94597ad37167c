//! `[environment]`: the host's keys of a multi-turn GRPO environment beside its plugin's own.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::{rollout::weight_and_name, sections::PluginTable};

/// `[environment]`: multi-turn rollouts. An Environment plugin (`kind` and its own keys) answers every assistant
/// turn; the host's keys say how long an episode may run and how its reward counts.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentConfig {
    pub plugin: PluginTable,
    /// Assistant turns per episode (default 4).
    pub max_turns: usize,
    /// Tokens after the prompt per episode, generated and observed (default `max_turns` × `[rollout]
    /// max_tokens`, the per-turn limit).
    pub max_episode_tokens: Option<usize>,
    /// How the model writes tool calls: `hermes`, `llama3_json` or `mistral` (default: its family's).
    pub tool_call_format: Option<String>,
    /// The weight of the environment's reward in the sum with the `[[reward]]` functions (default 1).
    pub weight: f64,
    /// The environment's reward in metrics (`rewards/<name>/mean`); default the kind.
    pub name: Option<String>,
}

impl EnvironmentConfig {
    /// The episode budget for a per-turn limit of `turn_tokens`.
    pub fn episode_tokens(&self, turn_tokens: usize) -> usize {
        self.max_episode_tokens.unwrap_or(self.max_turns * turn_tokens)
    }

    /// The metric name of its reward.
    pub fn reward_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.plugin.kind.clone())
    }
}

impl<'de> Deserialize<'de> for EnvironmentConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(d)?;
        let count = |table: &mut toml::Table, key: &str| -> Result<Option<usize>, D::Error> {
            match table.remove(key) {
                None => Ok(None),
                Some(toml::Value::Integer(n)) if n >= 1 => Ok(Some(n as usize)),
                Some(v) => Err(de::Error::custom(format!("`{key}` must be a whole number of at least 1, got {v}"))),
            }
        };
        let max_turns = count(&mut table, "max_turns")?.unwrap_or(4);
        let max_episode_tokens = count(&mut table, "max_episode_tokens")?;
        let tool_call_format = match table.remove("tool_call_format") {
            None => None,
            Some(toml::Value::String(f)) if crate::tools::CallFormat::parse_name(&f).is_some() => Some(f),
            Some(v) => return Err(de::Error::custom(format!("`tool_call_format` must be \"hermes\", \"llama3_json\" or \"mistral\", got {v}"))),
        };
        let (weight, name) = weight_and_name(&mut table)?;
        Ok(EnvironmentConfig { plugin: PluginTable::from_table(table)?, max_turns, max_episode_tokens, tool_call_format, weight, name })
    }
}

impl Serialize for EnvironmentConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut table = self.plugin.to_table();
        table.insert("max_turns".to_owned(), toml::Value::Integer(self.max_turns as i64));
        if let Some(n) = self.max_episode_tokens {
            table.insert("max_episode_tokens".to_owned(), toml::Value::Integer(n as i64));
        }
        if let Some(f) = &self.tool_call_format {
            table.insert("tool_call_format".to_owned(), toml::Value::String(f.clone()));
        }
        table.insert("weight".to_owned(), toml::Value::Float(self.weight));
        if let Some(name) = &self.name {
            table.insert("name".to_owned(), toml::Value::String(name.clone()));
        }
        table.serialize(s)
    }
}
