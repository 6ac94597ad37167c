//! mlx-lm's adapter files: `adapters.safetensors` (the trainable tensors by model path: `….lora_a`, `….lora_b`,
//! and DoRA's `….m`) and `adapter_config.json` (`fine_tune_type`, `num_layers`, `lora_parameters` with `rank`,
//! `scale`, `dropout`, `keys`). Written so mlx-lm loads them; read from mlx-lm's as well.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    rc::Rc,
};

use mlx_rs::{module::ModuleParameters, Array};
use serde_json::{json, Value};

use super::{apply_explicit, layer_index, LoraError, LoraSettings};
use crate::model::CausalLm;

pub struct AdapterFiles;

impl AdapterFiles {
    pub const WEIGHTS: &'static str = "adapters.safetensors";
    pub const CONFIG: &'static str = "adapter_config.json";
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> LoraError {
    LoraError::File { path: path.to_owned(), message: message.to_string() }
}

/// The adapted module paths and the settings of the first one (all share them in runs made here).
fn adapted(model: &mut CausalLm) -> (Vec<String>, Option<(i32, f32, f32, bool)>) {
    let mut paths = Vec::new();
    let mut settings = None;
    for (path, layer) in model.adaptable_mut() {
        if let Some(a) = layer.adapter() {
            settings.get_or_insert((a.rank, a.scale, a.dropout, layer.dora()));
            paths.push(path);
        }
    }
    (paths, settings)
}

/// Writes the adapters (atomically: temporary names, then renames) with `extra` keys added to the config, as
/// mlx-lm records its whole run configuration there.
pub fn save_adapters(model: &mut CausalLm, dir: &Path, extra: &serde_json::Map<String, Value>) -> Result<PathBuf, LoraError> {
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let (paths, settings) = adapted(model);
    let (rank, scale, dropout, dora) = settings.ok_or_else(|| LoraError::Targets("the model has no adapters".into()))?;
    let num_layers = model.num_layers();
    let first = paths.iter().filter_map(|p| layer_index(p)).min().unwrap_or(num_layers.saturating_sub(1));
    let keys: BTreeSet<String> = paths
        .iter()
        .map(|p| match layer_index(p) {
            Some(i) => p.trim_start_matches(&format!("model.layers.{i}.")).to_owned(),
            None => p.clone(),
        })
        .collect();
    let mut config = extra.clone();
    config.insert("fine_tune_type".into(), json!(if dora { "dora" } else { "lora" }));
    config.insert("num_layers".into(), json!(num_layers - first));
    config.insert("lora_parameters".into(), json!({"rank": rank, "scale": scale, "dropout": dropout, "keys": keys}));
    let text = serde_json::to_string_pretty(&Value::Object(config)).map_err(|e| file_error(dir, e))?;
    let config_path = dir.join(AdapterFiles::CONFIG);
    let tmp = dir.join(".adapter_config.json.tmp");
    std::fs::write(&tmp, text).map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, &config_path).map_err(|e| file_error(&config_path, e))?;

    let params = model.trainable_parameters().flatten();
    let weights = dir.join(AdapterFiles::WEIGHTS);
    let tmp = dir.join(".partial-adapters.safetensors");
    crate::tensor_file::write(&tmp, params.iter().map(|(k, v)| (&**k, *v)), Some("mlx")).map_err(|e| file_error(&tmp, e.message))?;
    std::fs::rename(&tmp, &weights).map_err(|e| file_error(&weights, e))?;
    Ok(weights)
}

/// Adds the adapters stored in `dir` (ours or mlx-lm's) to a model without any, and loads their tensors.
/// Every tensor must belong to a linear layer of the model and have the shape the config implies.
pub fn load_adapters(model: &mut CausalLm, dir: &Path) -> Result<LoraSettings, LoraError> {
    let config_path = dir.join(AdapterFiles::CONFIG);
    let text = std::fs::read_to_string(&config_path).map_err(|e| file_error(&config_path, e))?;
    let config: Value = serde_json::from_str(&text).map_err(|e| file_error(&config_path, format!("invalid JSON: {e}")))?;
    let kind = config.get("fine_tune_type").and_then(Value::as_str).unwrap_or("lora");
    if kind != "lora" && kind != "dora" {
        return Err(file_error(&config_path, format!("fine_tune_type `{kind}` is not an adapter (lora or dora)")));
    }
    let params = config.get("lora_parameters").ok_or_else(|| file_error(&config_path, "no `lora_parameters`"))?;
    let number = |key: &str| params.get(key).and_then(Value::as_f64).ok_or_else(|| file_error(&config_path, format!("lora_parameters.{key} missing")));
    let settings = LoraSettings {
        rank: number("rank")? as i32,
        scale: number("scale")? as f32,
        dropout: params.get("dropout").and_then(Value::as_f64).unwrap_or(0.0) as f32,
        dora: kind == "dora",
        last_n_layers: None,
    };

    let weights_path = dir.join(AdapterFiles::WEIGHTS);
    let tensors = Array::load_safetensors(&weights_path).map_err(|e| file_error(&weights_path, format!("cannot read safetensors: {e}")))?;
    let mut targets: BTreeMap<String, ()> = BTreeMap::new();
    let mut unexpected = Vec::new();
    for name in tensors.keys() {
        match name.rsplit_once('.') {
            Some((module, "lora_a" | "lora_b" | "m")) => {
                targets.insert(module.to_owned(), ());
            }
            _ => unexpected.push(name.clone()),
        }
    }
    if !unexpected.is_empty() {
        unexpected.sort();
        return Err(file_error(&weights_path, format!("not adapter tensors: {}", unexpected.join(", "))));
    }
    let targets: Vec<String> = targets.into_keys().collect();
    apply_explicit(model, &targets, &settings, 0).map_err(|e| file_error(&weights_path, e))?;

    let expected = model.trainable_parameters().flatten();
    let mut problems = Vec::new();
    for (name, param) in &expected {
        match tensors.get(&**name) {
            None => problems.push(format!("missing {name}")),
            Some(t) if t.shape() != param.shape() => problems.push(format!("{name} is {:?}, the model needs {:?}", t.shape(), param.shape())),
            Some(_) => {}
        }
    }
    if !problems.is_empty() {
        problems.sort();
        return Err(file_error(&weights_path, problems.join("; ")));
    }
    // Adapters live in float32 whatever the model's dtype (see `Linear::add_adapter`).
    let mut update: HashMap<Rc<str>, Array> = HashMap::new();
    for (name, t) in tensors {
        update.insert(Rc::from(name), t.as_dtype(mlx_rs::Dtype::Float32)?);
    }
    model.update_flattened(update);
    Ok(settings)
}
