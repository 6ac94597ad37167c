//! The sections of a run configuration. Each is a struct with `deny_unknown_fields`, defaults defined once
//! here; pluggable sections carry `kind` and leave every other key to the plugin.

use std::path::PathBuf;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// `[train]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps in the run (mlx-lm's `iters`; default 1000).
    #[serde(default = "TrainConfig::default_steps")]
    pub steps: u64,
}

impl TrainConfig {
    fn default_steps() -> u64 {
        1000
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig { steps: Self::default_steps() }
    }
}

/// `[optimizer]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// The peak learning rate; schedules scale from it.
    pub lr: f64,
}

/// `[plugins]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// cdylib plugin files to load, relative to the working directory.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
}

/// `[output]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Where a run writes its outputs (default `runs/<config file name>`).
    pub dir: Option<PathBuf>,
}

/// A pluggable section: `kind` names the plugin, the other keys are its own configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginTable {
    pub kind: String,
    pub config: toml::Table,
}

impl PluginTable {
    pub fn named(kind: &str) -> Self {
        PluginTable { kind: kind.to_owned(), config: toml::Table::new() }
    }

    fn from_table<E: de::Error>(mut table: toml::Table) -> Result<Self, E> {
        match table.remove("kind") {
            Some(toml::Value::String(kind)) => Ok(PluginTable { kind, config: table }),
            Some(other) => Err(E::custom(format!("`kind` must be a string naming a plugin, got {}", other.type_str()))),
            None => Err(E::custom("missing `kind`: which plugin to use")),
        }
    }

    fn to_table(&self) -> toml::Table {
        let mut table = self.config.clone();
        table.insert("kind".to_owned(), toml::Value::String(self.kind.clone()));
        table
    }
}

impl<'de> Deserialize<'de> for PluginTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PluginTable::from_table(toml::Table::deserialize(d)?)
    }
}

impl Serialize for PluginTable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_table().serialize(s)
    }
}

/// `[schedule]`: an LR schedule plugin plus the linear warmup the host puts in front of any schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSection {
    pub plugin: PluginTable,
    /// Steps of linear warmup before the schedule starts (default 0).
    pub warmup_steps: u64,
    /// The rate warmup starts from (default 0).
    pub warmup_init: f64,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        ScheduleSection { plugin: PluginTable::named("constant"), warmup_steps: 0, warmup_init: 0.0 }
    }
}

impl<'de> Deserialize<'de> for ScheduleSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(d)?;
        let warmup_steps = match table.remove("warmup_steps") {
            None => 0,
            Some(toml::Value::Integer(n)) if n >= 0 => n as u64,
            Some(v) => return Err(de::Error::custom(format!("`warmup_steps` must be a non-negative integer, got {v}"))),
        };
        let warmup_init = match table.remove("warmup_init") {
            None => 0.0,
            Some(toml::Value::Float(x)) => x,
            Some(toml::Value::Integer(n)) => n as f64,
            Some(v) => return Err(de::Error::custom(format!("`warmup_init` must be a number, got {v}"))),
        };
        Ok(ScheduleSection { plugin: PluginTable::from_table(table)?, warmup_steps, warmup_init })
    }
}

impl Serialize for ScheduleSection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut table = self.plugin.to_table();
        table.insert("warmup_steps".to_owned(), toml::Value::Integer(self.warmup_steps as i64));
        table.insert("warmup_init".to_owned(), toml::Value::Float(self.warmup_init));
        table.serialize(s)
    }
}
