use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use sdk::{
    abi::import::{
        AbiError, ImportedDataCachePolicy, ImportedKvCachePolicy, ImportedLoraTargetMapper, ImportedLoss,
        ImportedEnvironment, ImportedPlugin, ImportedReward, ImportedSchedule,
    },
    builtin_registrations, DataCachePolicy, Environment, Factory, KvCachePolicy, LoraTargetMapper, Loss, LrSchedule,
    PluginError, PluginKind, Reward,
};
use thiserror::Error;

use super::dylib;

/// Where a plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Linked into the host by the named crate.
    BuiltIn(&'static str),
    /// Loaded from this cdylib.
    Library(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::BuiltIn(krate) => write!(f, "built-in ({krate})"),
            Origin::Library(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("{kind} `{name}` is registered twice: by {first} and by {second}")]
    Duplicate { kind: PluginKind, name: String, first: Origin, second: Origin },
    #[error("unknown {kind} `{name}`; valid names: {}", valid.join(", "))]
    Unknown { kind: PluginKind, name: String, valid: Vec<String> },
    #[error("cannot load plugin library {}: {message}", path.display())]
    Load { path: PathBuf, message: String },
    #[error("refusing plugin library {}: {error}", path.display())]
    Abi { path: PathBuf, error: AbiError },
    #[error("{kind} `{name}` ({origin}): {error}")]
    Create { kind: PluginKind, name: String, origin: Origin, error: PluginError },
}

enum Source {
    BuiltIn(Factory),
    Library(&'static ImportedPlugin),
}

/// One registered plugin, as `host plugins` lists it.
pub struct PluginInfo {
    pub kind: PluginKind,
    pub name: String,
    pub summary: String,
    pub origin: Origin,
    source: Source,
}

/// Every plugin this process can use, by kind and name.
pub struct Registry {
    plugins: BTreeMap<(PluginKind, String), PluginInfo>,
    libraries: Vec<PathBuf>,
}

impl Registry {
    /// The built-in plugins. Two built-ins with one name are an error naming both crates.
    pub fn builtin() -> Result<Self, RegistryError> {
        crate::train::reward_model::keep_linked();
        crate::environment::keep_linked();
        let mut registry = Registry { plugins: BTreeMap::new(), libraries: Vec::new() };
        for r in builtin_registrations() {
            registry.insert(PluginInfo {
                kind: r.factory.kind(),
                name: r.name.to_owned(),
                summary: r.summary.to_owned(),
                origin: Origin::BuiltIn(r.source),
                source: Source::BuiltIn(r.factory),
            })?;
        }
        Ok(registry)
    }

    fn insert(&mut self, info: PluginInfo) -> Result<(), RegistryError> {
        let key = (info.kind, info.name.clone());
        if let Some(existing) = self.plugins.get(&key) {
            return Err(RegistryError::Duplicate {
                kind: info.kind,
                name: info.name,
                first: existing.origin.clone(),
                second: info.origin,
            });
        }
        self.plugins.insert(key, info);
        Ok(())
    }

    /// Loads a cdylib's plugins. A file already loaded (by the same canonical path) is not loaded again. On a
    /// duplicate name nothing of the library is registered.
    pub fn load_library(&mut self, path: &Path) -> Result<(), RegistryError> {
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        if self.libraries.contains(&canonical) {
            return Ok(());
        }
        let loaded = dylib::open(path)?;
        let mut staged = Vec::new();
        for plugin in &loaded.library.plugins {
            let key = (plugin.kind, plugin.name.clone());
            let origin = Origin::Library(loaded.path.clone());
            if let Some(existing) = self.plugins.get(&key) {
                return Err(RegistryError::Duplicate {
                    kind: plugin.kind,
                    name: plugin.name.clone(),
                    first: existing.origin.clone(),
                    second: origin,
                });
            }
            if staged.iter().any(|p: &PluginInfo| p.kind == plugin.kind && p.name == plugin.name) {
                return Err(RegistryError::Duplicate {
                    kind: plugin.kind,
                    name: plugin.name.clone(),
                    first: origin.clone(),
                    second: origin,
                });
            }
            staged.push(PluginInfo {
                kind: plugin.kind,
                name: plugin.name.clone(),
                summary: plugin.summary.clone(),
                origin,
                source: Source::Library(plugin),
            });
        }
        for info in staged {
            self.insert(info)?;
        }
        self.libraries.push(canonical);
        Ok(())
    }

    /// All plugins, ordered by kind then name.
    pub fn plugins(&self) -> impl Iterator<Item = &PluginInfo> {
        self.plugins.values()
    }

    pub fn get(&self, kind: PluginKind, name: &str) -> Result<&PluginInfo, RegistryError> {
        self.plugins.get(&(kind, name.to_owned())).ok_or_else(|| RegistryError::Unknown {
            kind,
            name: name.to_owned(),
            valid: self.plugins.keys().filter(|(k, _)| *k == kind).map(|(_, n)| n.clone()).collect(),
        })
    }

    fn create<T: ?Sized>(
        &self,
        kind: PluginKind,
        name: &str,
        config: &toml::Table,
        builtin: impl FnOnce(Factory) -> Option<Result<Box<T>, PluginError>>,
        imported: impl FnOnce(sdk::abi::import::Instance) -> Result<Box<T>, PluginError>,
    ) -> Result<Box<T>, RegistryError> {
        let info = self.get(kind, name)?;
        let result = match &info.source {
            Source::BuiltIn(factory) => builtin(*factory)
                .unwrap_or_else(|| Err(PluginError::Invalid(format!("registered as {}", factory.kind())))),
            Source::Library(plugin) => plugin.create(config).and_then(imported),
        };
        result.map_err(|error| RegistryError::Create { kind, name: name.to_owned(), origin: info.origin.clone(), error })
    }

    pub fn schedule(&self, name: &str, config: &toml::Table) -> Result<Box<dyn LrSchedule>, RegistryError> {
        self.create(
            PluginKind::LrSchedule,
            name,
            config,
            |f| match f {
                Factory::LrSchedule(make) => Some(make(config)),
                _ => None,
            },
            |i| Ok(Box::new(ImportedSchedule(i))),
        )
    }

    pub fn loss(&self, name: &str, config: &toml::Table) -> Result<Box<dyn Loss>, RegistryError> {
        self.create(
            PluginKind::Loss,
            name,
            config,
            |f| match f {
                Factory::Loss(make) => Some(make(config)),
                _ => None,
            },
            |i| Ok(Box::new(ImportedLoss(i))),
        )
    }

    pub fn reward(&self, name: &str, config: &toml::Table) -> Result<Box<dyn Reward>, RegistryError> {
        self.create(
            PluginKind::Reward,
            name,
            config,
            |f| match f {
                Factory::Reward(make) => Some(make(config)),
                _ => None,
            },
            |i| Ok(Box::new(ImportedReward(i))),
        )
    }

    pub fn environment(&self, name: &str, config: &toml::Table) -> Result<Box<dyn Environment>, RegistryError> {
        self.create(
            PluginKind::Environment,
            name,
            config,
            |f| match f {
                Factory::Environment(make) => Some(make(config)),
                _ => None,
            },
            |i| Ok(Box::new(ImportedEnvironment(i))),
        )
    }

    pub fn lora_target_mapper(
        &self,
        name: &str,
        config: &toml::Table,
    ) -> Result<Box<dyn LoraTargetMapper>, RegistryError> {
        self.create(
            PluginKind::LoraTargetMapper,
            name,
            config,
            |f| match f {
                Factory::LoraTargetMapper(make) => Some(make(config)),
                _ => None,
            },
            |i| Ok(Box::new(ImportedLoraTargetMapper(i))),
        )
    }

    pub fn kv_cache_policy(&self, name: &str, config: &toml::Table) -> Result<Box<dyn KvCachePolicy>, RegistryError> {
        self.create(
            PluginKind::KvCachePolicy,
            name,
            config,
            |f| match f {
                Factory::KvCachePolicy(make) => Some(make(config)),
                _ => None,
            },
            |i| Ok(Box::new(ImportedKvCachePolicy(i))),
        )
    }

    pub fn data_cache_policy(
        &self,
        name: &str,
        config: &toml::Table,
    ) -> Result<Box<dyn DataCachePolicy>, RegistryError> {
        self.create(
            PluginKind::DataCachePolicy,
            name,
            config,
            |f| match f {
                Factory::DataCachePolicy(make) => Some(make(config)),
                _ => None,
            },
            |i| Ok(Box::new(ImportedDataCachePolicy::new(i)?)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_expected_builtin_is_linked() {
        let registry = Registry::builtin().unwrap();
        for (kind, name) in super::super::builtin::EXPECTED {
            assert!(registry.get(*kind, name).is_ok(), "{kind} `{name}` is not registered");
        }
    }

    #[test]
    fn two_builtins_with_one_name_are_an_error_naming_both_crates() {
        let mut registry = Registry::builtin().unwrap();
        let make = |t: &toml::Table| -> Result<Box<dyn LrSchedule>, PluginError> {
            Ok(Box::new(<plugin_schedules::Constant as sdk::Plugin>::from_config(t)?))
        };
        let err = registry
            .insert(PluginInfo {
                kind: PluginKind::LrSchedule,
                name: "cosine".to_owned(),
                summary: String::new(),
                origin: Origin::BuiltIn("plugin-other"),
                source: Source::BuiltIn(Factory::LrSchedule(make)),
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "schedule `cosine` is registered twice: by built-in (plugin-schedules) and by built-in (plugin-other)"
        );
    }

    #[test]
    fn unknown_names_list_every_valid_name_of_the_kind() {
        let registry = Registry::builtin().unwrap();
        let err = registry.schedule("cosin", &toml::Table::new()).err().unwrap();
        assert_eq!(
            err.to_string(),
            "unknown schedule `cosin`; valid names: constant, cosine, exponential, linear, step, wsd"
        );
    }

    #[test]
    fn creation_errors_name_kind_plugin_and_origin() {
        let registry = Registry::builtin().unwrap();
        let table: toml::Table = "min_lrr = 0.1".parse().unwrap();
        let err = registry.schedule("cosine", &table).err().unwrap().to_string();
        assert!(err.starts_with("schedule `cosine` (built-in (plugin-schedules)): "), "{err}");
        assert!(err.contains("min_lrr"), "{err}");
    }
}
