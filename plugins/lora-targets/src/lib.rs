//! Built-in LoRA target mappers. The host restricts any mapper's choice to the last N layers with
//! `[lora] last_n_layers` and checks that every chosen path is a linear layer of the model.
//!
//! | kind | keys | targets |
//! |---|---|---|
//! | `short_names` | `targets` (required) | every layer's modules with these names (read from the model's module paths; a fused `qkv_proj`/`gate_up_proj` answers to its parts' names); `attention` and `mlp` name the groups |
//! | `all_linear` | — | every linear layer except the output projection (PEFT's `all-linear`) |
//! | `regex` | `pattern` (required) | module paths the pattern matches in full |

use std::collections::BTreeMap;

use regex::Regex;
use serde::Deserialize;
use sdk::{from_table, register_lora_target_mapper, LoraTarget, LoraTargetMapper, ModelModules, Plugin, PluginError};

/// Short names of the model's layer modules, read from its module paths: each layer linear's own name
/// (`q_proj`, ...), the groups `attention` (under `self_attn`) and `mlp` (under `mlp`), and for fused
/// projections the names of their parts (Phi-3's `qkv_proj` answers to `q_proj`, `k_proj` and `v_proj`,
/// its `gate_up_proj` to `gate_proj` and `up_proj`: the adapter goes on the fused module, as in mlx-lm).
fn short_names(modules: &ModelModules<'_>) -> BTreeMap<String, Vec<String>> {
    const PARTS: &[(&str, &[&str])] = &[("qkv_proj", &["q_proj", "k_proj", "v_proj"]), ("gate_up_proj", &["gate_proj", "up_proj"])];
    let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut add = |key: &str, name: &str| {
        let entry = names.entry(key.to_owned()).or_default();
        if !entry.iter().any(|n| n == name) {
            entry.push(name.to_owned());
        }
    };
    for path in modules.linear_paths.iter().filter(|p| p.contains(".layers.")) {
        let mut segments = path.rsplit('.');
        let (Some(name), Some(parent)) = (segments.next(), segments.next()) else { continue };
        add(name, name);
        for (fused, parts) in PARTS {
            if name == *fused {
                parts.iter().for_each(|part| add(part, name));
            }
        }
        match parent {
            "self_attn" => add("attention", name),
            "mlp" => add("mlp", name),
            _ => {}
        }
    }
    names
}

fn target(path: &str) -> LoraTarget {
    LoraTarget { path: path.to_owned(), rank: None, scale: None }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShortNames {
    targets: Vec<String>,
}

impl Plugin for ShortNames {
    const NAME: &'static str = "short_names";
    const SUMMARY: &'static str = "modules by short name (q_proj, v_proj, ... or attention, mlp) in every layer";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let s: ShortNames = from_table(config)?;
        if s.targets.is_empty() {
            return Err(PluginError::Config("`targets` is empty".into()));
        }
        Ok(s)
    }
}

impl LoraTargetMapper for ShortNames {
    fn select(&self, modules: &ModelModules<'_>) -> Result<Vec<LoraTarget>, PluginError> {
        let table = short_names(modules);
        let mut wanted: Vec<&str> = Vec::new();
        for name in &self.targets {
            let names = table.get(name.as_str()).ok_or_else(|| {
                let valid: Vec<&str> = table.keys().map(String::as_str).collect();
                PluginError::Config(format!("`targets`: `{name}` is not a {} module; valid: {}", modules.model_type, valid.join(", ")))
            })?;
            wanted.extend(names.iter().map(String::as_str));
        }
        Ok(modules
            .linear_paths
            .iter()
            .filter(|p| p.contains(".layers.") && wanted.iter().any(|w| p.rsplit('.').next() == Some(*w)))
            .map(|p| target(p))
            .collect())
    }
}

register_lora_target_mapper!(ShortNames);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllLinear {}

impl Plugin for AllLinear {
    const NAME: &'static str = "all_linear";
    const SUMMARY: &'static str = "every linear layer except the output projection";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        from_table(config)
    }
}

impl LoraTargetMapper for AllLinear {
    fn select(&self, modules: &ModelModules<'_>) -> Result<Vec<LoraTarget>, PluginError> {
        Ok(modules.linear_paths.iter().filter(|p| **p != "lm_head").map(|p| target(p)).collect())
    }
}

register_lora_target_mapper!(AllLinear);

pub struct RegexMapper {
    pattern: Regex,
    source: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegexConfig {
    pattern: String,
}

impl Plugin for RegexMapper {
    const NAME: &'static str = "regex";
    const SUMMARY: &'static str = "module paths matching a regular expression in full";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let c: RegexConfig = from_table(config)?;
        let pattern = Regex::new(&format!("^(?:{})$", c.pattern))
            .map_err(|e| PluginError::Config(format!("`pattern`: {e}")))?;
        Ok(RegexMapper { pattern, source: c.pattern })
    }
}

impl LoraTargetMapper for RegexMapper {
    fn select(&self, modules: &ModelModules<'_>) -> Result<Vec<LoraTarget>, PluginError> {
        let chosen: Vec<LoraTarget> = modules.linear_paths.iter().filter(|p| self.pattern.is_match(p)).map(|p| target(p)).collect();
        if chosen.is_empty() {
            let example = modules.linear_paths.first().copied().unwrap_or("model.layers.0.self_attn.q_proj");
            return Err(PluginError::Config(format!("`pattern` `{}` matches no linear module (paths look like `{example}`)", self.source)));
        }
        Ok(chosen)
    }
}

register_lora_target_mapper!(RegexMapper);

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(layers: usize) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..layers {
            for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                out.push(format!("model.layers.{i}.self_attn.{n}"));
            }
            for n in ["gate_proj", "up_proj", "down_proj"] {
                out.push(format!("model.layers.{i}.mlp.{n}"));
            }
        }
        out.push("lm_head".into());
        out
    }

    fn select(mapper: &dyn LoraTargetMapper) -> Result<Vec<String>, PluginError> {
        let owned = paths(3);
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        let modules = ModelModules { model_type: "qwen2", num_layers: 3, linear_paths: &refs };
        Ok(mapper.select(&modules)?.into_iter().map(|t| t.path).collect())
    }

    fn table(text: &str) -> sdk::toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn short_names_and_groups() {
        let m = ShortNames::from_config(&table("targets = [\"q_proj\", \"v_proj\"]")).unwrap();
        let got = select(&m).unwrap();
        assert_eq!(got.len(), 6);
        assert_eq!(got[0], "model.layers.0.self_attn.q_proj");
        assert_eq!(got[1], "model.layers.0.self_attn.v_proj");
        let m = ShortNames::from_config(&table("targets = [\"mlp\"]")).unwrap();
        assert_eq!(select(&m).unwrap().len(), 9);
        let m = ShortNames::from_config(&table("targets = [\"qkv\"]")).unwrap();
        let err = select(&m).unwrap_err().to_string();
        assert!(err.contains("`qkv` is not a qwen2 module; valid: attention, down_proj, gate_proj, k_proj, mlp, o_proj, q_proj, up_proj, v_proj"), "{err}");
    }

    #[test]
    fn fused_projections_answer_to_the_names_of_their_parts() {
        let mut owned = Vec::new();
        for i in 0..2 {
            owned.push(format!("model.layers.{i}.self_attn.qkv_proj"));
            owned.push(format!("model.layers.{i}.self_attn.o_proj"));
            owned.push(format!("model.layers.{i}.mlp.gate_up_proj"));
            owned.push(format!("model.layers.{i}.mlp.down_proj"));
        }
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        let modules = ModelModules { model_type: "phi3", num_layers: 2, linear_paths: &refs };
        let pick = |targets: &str| -> Vec<String> {
            let m = ShortNames::from_config(&table(&format!("targets = {targets}"))).unwrap();
            m.select(&modules).unwrap().into_iter().map(|t| t.path).collect()
        };
        assert_eq!(pick("[\"q_proj\", \"v_proj\"]"), ["model.layers.0.self_attn.qkv_proj", "model.layers.1.self_attn.qkv_proj"]);
        assert_eq!(pick("[\"up_proj\"]"), ["model.layers.0.mlp.gate_up_proj", "model.layers.1.mlp.gate_up_proj"]);
        assert_eq!(pick("[\"attention\"]").len(), 4);
        let m = ShortNames::from_config(&table("targets = [\"w1\"]")).unwrap();
        let err = m.select(&modules).unwrap_err().to_string();
        assert!(err.contains("valid: attention, down_proj, gate_proj, gate_up_proj, k_proj, mlp, o_proj, q_proj, qkv_proj, up_proj, v_proj"), "{err}");
    }

    #[test]
    fn all_linear_skips_the_output_projection() {
        let got = select(&AllLinear {}).unwrap();
        assert_eq!(got.len(), 21);
        assert!(!got.contains(&"lm_head".to_owned()));
    }

    #[test]
    fn regex_matches_whole_paths() {
        let m = RegexMapper::from_config(&table("pattern = 'model\\.layers\\.[12]\\.self_attn\\.(q|k)_proj'")).unwrap();
        assert_eq!(select(&m).unwrap(), ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.2.self_attn.q_proj", "model.layers.2.self_attn.k_proj"]);
        // Anchored: "q_proj" alone matches nothing.
        let m = RegexMapper::from_config(&table("pattern = 'q_proj'")).unwrap();
        assert!(select(&m).unwrap_err().to_string().contains("matches no linear module"));
        assert!(RegexMapper::from_config(&table("pattern = '('")).err().unwrap().to_string().starts_with("`pattern`"));
    }
}
