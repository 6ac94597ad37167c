//! Writing a model directory as mlx-lm does (`mlx_lm.convert`, `save_model`): `config.json` with a
//! `quantization` block (and its `quantization_config` mirror), weights in safetensors shards of at most
//! 5 GB with an index when there are several, and the tokenizer files copied unchanged.

use std::{collections::BTreeMap, path::Path};

use mlx_rs::{module::ModuleParameters, Array};
use serde_json::{json, Value};

use super::{CausalLm, LoadedModel, ModelError, QuantizationPlan};

/// mlx-lm's shard size limit.
const MAX_SHARD_BYTES: usize = 5 << 30;

/// Files a model directory carries besides config and weights.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];

/// mlx-lm's block: the default, then every module that differs from it (float ones as `false`), each with its
/// `mode` (a module entry without one would load as affine).
fn quantization_json(model: &CausalLm, plan: &QuantizationPlan) -> Value {
    let mut block = serde_json::Map::new();
    block.insert("group_size".into(), json!(plan.default.group_size));
    block.insert("bits".into(), json!(plan.default.bits));
    block.insert("mode".into(), json!(plan.default.mode.name()));
    // What the model holds now, not what the plan said on load: fused, quantized or dequantized layers and
    // modules whose settings were inferred from their tensors are all written as they are.
    // (A clone: the traversal is the mutable one the adapters use; arrays are shared, not copied.)
    for (path, q) in model.clone().module_quants() {
        let v = match q {
            Some(q) if q == plan.default => continue,
            Some(q) => json!({"group_size": q.group_size, "bits": q.bits, "mode": q.mode.name()}),
            None => Value::Bool(false),
        };
        block.insert(path, v);
    }
    Value::Object(block)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| ModelError::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::file(path, e))
}

/// Writes `loaded` (as it is now, e.g. after quantizing) to `out`.
pub fn save(loaded: &LoadedModel, out: &Path) -> Result<(), ModelError> {
    save_parts(&loaded.model, &loaded.config_json, loaded.quantization.as_ref(), &loaded.dir, out)
}

/// Writes `model` to `out` as a model directory: `config_json` with the quantization block of `quantization`,
/// the weights, and the tokenizer files of `tokenizer_dir`.
pub fn save_parts(
    model: &CausalLm,
    config_json: &serde_json::Map<String, Value>,
    quantization: Option<&QuantizationPlan>,
    tokenizer_dir: &Path,
    out: &Path,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(out).map_err(|e| ModelError::file(out, e))?;
    let mut config = config_json.clone();
    config.remove("quantization");
    config.remove("quantization_config");
    if let Some(plan) = quantization {
        let block = quantization_json(model, plan);
        config.insert("quantization".into(), block.clone());
        config.insert("quantization_config".into(), block);
    }
    let text = serde_json::to_string_pretty(&Value::Object(config)).map_err(|e| ModelError::file(out, e))?;
    write_atomic(&out.join("config.json"), text.as_bytes())?;

    let params = model.parameters().flatten();
    let mut names: Vec<&str> = params.keys().map(|k| &**k).collect();
    names.sort();
    let mut shards: Vec<Vec<&str>> = vec![Vec::new()];
    let mut size = 0usize;
    for name in names {
        let bytes = params[name].nbytes();
        if size + bytes > MAX_SHARD_BYTES && !shards.last().is_some_and(Vec::is_empty) {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        shards.last_mut().map(|s| s.push(name));
    }
    let count = shards.len();
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = if count == 1 { "model.safetensors".to_owned() } else { format!("model-{:05}-of-{count:05}.safetensors", i + 1) };
        let path = out.join(&file);
        let tmp = out.join(format!(".partial-{file}"));
        let tensors: Vec<(&str, &Array)> = shard.iter().map(|n| (*n, params[*n])).collect();
        crate::tensor_file::write(&tmp, tensors, Some("mlx")).map_err(|e| ModelError::file(&tmp, e.message))?;
        std::fs::rename(&tmp, &path).map_err(|e| ModelError::file(&path, e))?;
        for n in shard {
            weight_map.insert((*n).to_owned(), file.clone());
        }
    }
    if count > 1 {
        let total: usize = params.values().map(|a| a.nbytes()).sum();
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let text = serde_json::to_string_pretty(&index).map_err(|e| ModelError::file(out, e))?;
        write_atomic(&out.join("model.safetensors.index.json"), text.as_bytes())?;
    }
    for name in TOKENIZER_FILES {
        let from = tokenizer_dir.join(name);
        if from.is_file() && from != out.join(name) {
            let to = out.join(name);
            std::fs::copy(&from, &to).map_err(|e| ModelError::file(&to, e))?;
        }
    }
    Ok(())
}
