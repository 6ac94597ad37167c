//! Run configuration: one TOML file, a section per concern, every pluggable section naming its plugin with
//! `kind`. Loading reports every problem at once — unknown sections and keys, wrong types, unknown plugins,
//! plugin config errors, cross-field rules — each with file, line and column (or the `--set` it came from).

mod fields;
mod problem;
mod sections;
mod source;

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sdk::{LrSchedule, ScheduleContext, Warmup};

pub use problem::{ConfigError, ConfigProblem, Location};
pub use sections::{OptimizerConfig, OutputConfig, PluginTable, PluginsConfig, ScheduleSection, TrainConfig};
pub use source::Override;

use crate::plugins::{Registry, RegistryError};
use source::Source;

/// A whole run configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    #[serde(default)]
    pub train: TrainConfig,
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub schedule: ScheduleSection,
    #[serde(default)]
    pub plugins: PluginsConfig,
    #[serde(default)]
    pub output: OutputConfig,
}

/// Reads one section on its own, so that problems in different sections are all reported: first every key
/// the section's struct does not know, then the first type error serde finds. `Ok(None)`: the section is absent.
fn section<T: DeserializeOwned>(source: &Source, name: &str, problems: &mut Vec<ConfigProblem>) -> Result<Option<T>, ()> {
    let Some(value) = source.table.get(name) else { return Ok(None) };
    if let (Some(fields), Some(table)) = (fields::field_names::<T>(), value.as_table()) {
        let unknown: Vec<&String> = table.keys().filter(|k| !fields.contains(&k.as_str())).collect();
        for key in &unknown {
            problems.push(source.problem(&[name, key], format!("unknown key; expected one of: {}", fields.join(", "))));
        }
        if !unknown.is_empty() {
            return Err(());
        }
    }
    serde_path_to_error::deserialize::<_, T>(value.clone()).map(Some).map_err(|e| {
        let inner = e.path().to_string();
        let mut path = vec![name];
        if inner != "." {
            path.extend(inner.split('.'));
        }
        problems.push(source.problem(&path, e.into_inner().message().to_owned()));
    })
}

/// The first `backticked` word of a plugin's message, which by SDK convention names the offending key.
fn key_in_message(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    let key = &message[start..start + len];
    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_').then_some(key)
}

/// Reports a plugin section's creation error at the key it names (or at `kind`).
fn check_plugin(source: &Source, name: &str, table: &PluginTable, error: Option<RegistryError>, problems: &mut Vec<ConfigProblem>) {
    let Some(error) = error else { return };
    let message = match &error {
        RegistryError::Create { error, .. } => error.to_string(),
        _ => String::new(),
    };
    let key = match &error {
        RegistryError::Create { .. } => key_in_message(&message).filter(|k| table.config.contains_key(*k)).unwrap_or("kind"),
        _ => "kind",
    };
    problems.push(source.problem(&[name, key], error.to_string()));
}

impl RunConfig {
    /// Reads, overrides, checks and validates a configuration, loading the cdylibs it names into `registry`.
    pub fn load(file: &Path, overrides: &[Override], registry: &mut Registry) -> Result<RunConfig, ConfigError> {
        let source = Source::read(file, overrides)?;
        let mut problems = Vec::new();
        let sections = fields::field_names::<RunConfig>().unwrap_or_default();
        for key in source.table.keys().filter(|k| !sections.contains(&k.as_str())) {
            problems.push(source.problem(&[key], format!("unknown section; expected one of: {}", sections.join(", "))));
        }
        let train = section::<TrainConfig>(&source, "train", &mut problems).map(Option::unwrap_or_default);
        let optimizer = section::<OptimizerConfig>(&source, "optimizer", &mut problems).and_then(|o| {
            o.ok_or_else(|| problems.push(source.problem(&[], "missing section [optimizer] (at least `lr`)")))
        });
        let schedule = section::<ScheduleSection>(&source, "schedule", &mut problems).map(Option::unwrap_or_default);
        let plugins = section::<PluginsConfig>(&source, "plugins", &mut problems).map(Option::unwrap_or_default);
        let output = section::<OutputConfig>(&source, "output", &mut problems).map(Option::unwrap_or_default);

        // Each rule runs when the sections it reads parsed, so one bad section hides no other problem.
        if let Ok(train) = &train {
            if train.steps == 0 {
                problems.push(source.problem(&["train", "steps"], "must be at least 1"));
            }
        }
        if let Ok(optimizer) = &optimizer {
            if !(optimizer.lr.is_finite() && optimizer.lr > 0.0) {
                problems.push(source.problem(&["optimizer", "lr"], format!("must be a positive number, got {}", optimizer.lr)));
            }
        }
        if let (Ok(train), Ok(schedule)) = (&train, &schedule) {
            if schedule.warmup_steps >= train.steps && train.steps > 0 {
                problems.push(source.problem(
                    &["schedule", "warmup_steps"],
                    format!("{} warmup steps leave none of the run's {} steps to the schedule", schedule.warmup_steps, train.steps),
                ));
            }
        }
        // Libraries load before plugin sections are checked: they may provide the plugins named there.
        if let Ok(plugins) = &plugins {
            for (i, path) in plugins.paths.iter().enumerate() {
                if let Err(e) = registry.load_library(path) {
                    problems.push(source.problem(&["plugins", "paths", &i.to_string()], e.to_string()));
                }
            }
        }
        if let Ok(schedule) = &schedule {
            check_plugin(&source, "schedule", &schedule.plugin, registry.schedule(&schedule.plugin.kind, &schedule.plugin.config).err(), &mut problems);
        }

        match (train, optimizer, schedule, plugins, output) {
            (Ok(train), Ok(optimizer), Ok(schedule), Ok(plugins), Ok(mut output)) if problems.is_empty() => {
                if output.dir.is_none() {
                    let stem = file.file_stem().map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned());
                    output.dir = Some(PathBuf::from("runs").join(stem));
                }
                Ok(RunConfig { train, optimizer, schedule, plugins, output })
            }
            _ => Err(ConfigError { file: file.to_owned(), problems }),
        }
    }

    /// The schedule this configuration names, with its warmup.
    pub fn build_schedule(&self, registry: &Registry) -> Result<(Box<dyn LrSchedule>, ScheduleContext), RegistryError> {
        let inner = registry.schedule(&self.schedule.plugin.kind, &self.schedule.plugin.config)?;
        let ctx = ScheduleContext { base_lr: self.optimizer.lr, total_steps: self.train.steps };
        let schedule: Box<dyn LrSchedule> = if self.schedule.warmup_steps > 0 {
            Box::new(Warmup { inner, steps: self.schedule.warmup_steps, init: self.schedule.warmup_init })
        } else {
            inner
        };
        Ok((schedule, ctx))
    }

    /// The output directory (always set after [`RunConfig::load`]).
    pub fn output_dir(&self) -> PathBuf {
        self.output.dir.clone().unwrap_or_else(|| PathBuf::from("runs/run"))
    }

    /// Writes the configuration as resolved (defaults filled in, overrides applied) to `dir/resolved.toml`,
    /// atomically.
    pub fn write_resolved(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let text = toml::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::create_dir_all(dir)?;
        let path = dir.join("resolved.toml");
        let tmp = dir.join(".resolved.toml.tmp");
        std::fs::write(&tmp, format!("# The configuration this run used, with defaults and --set overrides applied.\n{text}"))?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests;
