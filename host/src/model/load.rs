//! Loading a checkpoint directory: `config.json`, `model.safetensors` or shards listed in
//! `model.safetensors.index.json`. Quantized modules are recognised by the presence of `<path>.scales` (with
//! bits and group size from `config.json`'s `quantization`, per-module overrides included); the model is built
//! to match, and every tensor is checked against it before any is used.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    rc::Rc,
};

use mlx_rs::{module::ModuleParameters, transforms::eval, Array, Dtype};

use super::{family, supported_model_types, CausalLm, HfArgs, Misshaped, ModelError, QuantizationPlan, WeightMismatch};
use crate::nn::{Quant, QuantMode};

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Compute dtype for float tensors; default [`default_dtype`].
    pub dtype: Option<Dtype>,
    /// Quantize a float checkpoint on load.
    pub quantize: Option<Quant>,
}

pub struct LoadedModel {
    pub model: CausalLm,
    pub dir: PathBuf,
    pub args: HfArgs,
    /// The raw `config.json`, for writing derived checkpoints.
    pub config_json: serde_json::Map<String, serde_json::Value>,
    /// How the model is quantized now (as loaded or as quantized on load).
    pub quantization: Option<QuantizationPlan>,
}

/// float32 on the CPU (no fast half-precision path there), bfloat16 on a GPU.
pub fn default_dtype() -> Dtype {
    match mlx_rs::Device::try_default().and_then(|d| d.get_type()) {
        Ok(mlx_rs::DeviceType::Gpu) => Dtype::Bfloat16,
        _ => Dtype::Float32,
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::file(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::file(path, format!("invalid JSON: {e}")))
}

/// Bytes that change whenever the checkpoint does, without reading all of it: `config.json`, and for each
/// weight file its name, size, safetensors header (every tensor's name, dtype, shape and offsets) and 16
/// samples of 4 KiB spread over the data. A key for caches derived from the weights (reference log-probs).
pub fn fingerprint(dir: &Path) -> Result<Vec<u8>, ModelError> {
    use std::io::{Read, Seek, SeekFrom};
    let config = dir.join("config.json");
    let mut out = std::fs::read(&config).map_err(|e| ModelError::file(&config, e.to_string()))?;
    for file in weight_files(dir)? {
        let io = |e: std::io::Error| ModelError::file(&file, e.to_string());
        let mut f = std::fs::File::open(&file).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        out.extend_from_slice(file.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        out.extend_from_slice(&size.to_le_bytes());
        let mut len = [0u8; 8];
        f.read_exact(&mut len).map_err(io)?;
        let header_len = u64::from_le_bytes(len).min(size.saturating_sub(8));
        let mut header = vec![0u8; header_len as usize];
        f.read_exact(&mut header).map_err(io)?;
        out.extend_from_slice(&header);
        let data_start = 8 + header_len;
        let data_len = size - data_start;
        for k in 0..16u64 {
            let at = data_start + data_len * k / 16;
            f.seek(SeekFrom::Start(at)).map_err(io)?;
            let mut sample = vec![0u8; 4096.min((size - at) as usize)];
            f.read_exact(&mut sample).map_err(io)?;
            out.extend_from_slice(&sample);
        }
    }
    Ok(out)
}

/// The safetensors files of a checkpoint.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let json = read_json(&index)?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::file(&index, "no `weight_map` object"))?;
        let files: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        if files.is_empty() {
            return Err(ModelError::file(&index, "`weight_map` lists no files"));
        }
        return files
            .into_iter()
            .map(|f| {
                let path = dir.join(f);
                if path.is_file() { Ok(path) } else { Err(ModelError::file(&path, "listed in model.safetensors.index.json but missing")) }
            })
            .collect();
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(ModelError::file(dir, "no model.safetensors or model.safetensors.index.json"))
}

/// Experts stored apart, as Hugging Face checkpoints do (`….mlp.experts.{e}.gate_proj.weight`), stacked into
/// one [experts, out, in] tensor per projection (`….mlp.switch_mlp.gate_proj.weight`), as mlx-lm's sanitize
/// does; MLX-community checkpoints already hold the stacked form.
fn stack_experts(weights: &mut HashMap<String, Array>) -> Result<(), String> {
    let mut groups: BTreeMap<(String, String), BTreeMap<usize, String>> = BTreeMap::new();
    for name in weights.keys() {
        let Some((head, rest)) = name.split_once(".experts.") else { continue };
        let Some((e, tail)) = rest.split_once('.') else { continue };
        let Ok(e) = e.parse::<usize>() else { continue };
        groups.entry((head.to_owned(), tail.to_owned())).or_default().insert(e, name.clone());
    }
    for ((head, tail), experts) in groups {
        if experts.keys().copied().ne(0..experts.len()) {
            return Err(format!("{head}.experts.*.{tail}: experts {:?} are not 0..{}", experts.keys().collect::<Vec<_>>(), experts.len()));
        }
        let parts: Vec<Array> = experts.values().filter_map(|n| weights.remove(n)).collect();
        let stacked = mlx_rs::ops::stack(&parts, 0).map_err(|e| format!("{head}.experts.*.{tail}: {e}"))?;
        // Mixtral's names for the three projections.
        let tail = match tail.split_once('.') {
            Some(("w1", rest)) => format!("gate_proj.{rest}"),
            Some(("w3", rest)) => format!("up_proj.{rest}"),
            Some(("w2", rest)) => format!("down_proj.{rest}"),
            _ => tail,
        };
        weights.insert(format!("{head}.switch_mlp.{tail}"), stacked);
    }
    Ok(())
}

/// How the module at `path` was packed, from its tensors (mlx-lm's `infer_quant_config`): group size from the
/// scales' width, bits from the packed width, the mode from the scales' dtype. None when the shapes fit no
/// mode MLX packs (the check against the model then names the tensor).
fn inferred_quant(weights: &HashMap<String, Array>, path: &str, in_dims: i32) -> Option<Quant> {
    let (w, s) = (weights.get(&format!("{path}.weight"))?, weights.get(&format!("{path}.scales"))?);
    let (groups, packed) = (*s.shape().last()?, *w.shape().last()?);
    if groups <= 0 || in_dims <= 0 || in_dims % groups != 0 || (packed * 32) % in_dims != 0 {
        return None;
    }
    let (group_size, bits) = (in_dims / groups, packed * 32 / in_dims);
    let mode = QuantMode::infer(bits, group_size, s.dtype())?;
    Quant::checked(bits, group_size, mode, path).ok()
}

/// Every tensor of a model directory's safetensors files (one, or the shards of an index).
pub fn read_weights(dir: &Path) -> Result<HashMap<String, Array>, ModelError> {
    let mut weights = HashMap::new();
    for file in weight_files(dir)? {
        let tensors = Array::load_safetensors(&file).map_err(|e| ModelError::file(&file, format!("cannot read safetensors: {e}")))?;
        weights.extend(tensors);
    }
    Ok(weights)
}

/// Compares the checkpoint with the model's parameters: every missing, unexpected and mis-shaped tensor.
fn check(model: &CausalLm, weights: &HashMap<String, Array>) -> WeightMismatch {
    let params = model.parameters().flatten();
    let mut mismatch = WeightMismatch::default();
    for (name, param) in &params {
        match weights.get(&**name) {
            None => mismatch.missing.push(name.to_string()),
            Some(w) if w.shape() != param.shape() => mismatch.misshaped.push(Misshaped {
                name: name.to_string(),
                expected: param.shape().to_vec(),
                found: w.shape().to_vec(),
            }),
            Some(_) => {}
        }
    }
    mismatch.unexpected = weights.keys().filter(|k| !params.contains_key(k.as_str())).cloned().collect();
    mismatch.missing.sort();
    mismatch.unexpected.sort();
    mismatch.misshaped.sort_by(|a, b| a.name.cmp(&b.name));
    mismatch
}

/// Loads a model directory (see [`super::hub::resolve`] for repo ids).
pub fn load(dir: &Path, options: &LoadOptions) -> Result<LoadedModel, ModelError> {
    Ok(load_inner(dir, options, false)?.0)
}

/// A `*ForSequenceClassification` checkpoint of a supported family (a reward model): its body, and its `score`
/// head `[num_labels, hidden]` in float32. The body is built without an output head (it has none).
pub fn load_classifier(dir: &Path, options: &LoadOptions) -> Result<(LoadedModel, Array), ModelError> {
    let (model, score) = load_inner(dir, options, true)?;
    let score = score.ok_or_else(|| ModelError::file(dir, "a sequence-classification checkpoint without `score.weight`"))?;
    Ok((model, score))
}

fn load_inner(dir: &Path, options: &LoadOptions, classifier: bool) -> Result<(LoadedModel, Option<Array>), ModelError> {
    let config_path = dir.join("config.json");
    let config_json = match read_json(&config_path)? {
        serde_json::Value::Object(map) => map,
        _ => return Err(ModelError::file(&config_path, "not a JSON object")),
    };
    let multimodal = config_json.get("model_type").and_then(|t| t.as_str()) == Some("gemma3");
    let config_json = if multimodal {
        super::gemma3::text_config(&config_json).map_err(|message| ModelError::Config { path: config_path.clone(), message })?
    } else {
        config_json
    };
    let args: HfArgs = serde_json::from_value(serde_json::Value::Object(config_json.clone()))
        .map_err(|e| ModelError::Config { path: config_path.clone(), message: e.to_string() })?;
    let family = family(&args.model_type).ok_or_else(|| ModelError::UnknownModelType {
        path: config_path.clone(),
        model_type: args.model_type.clone(),
        supported: supported_model_types(),
    })?;
    let mut config = family(&args).map_err(|message| ModelError::Config { path: config_path.clone(), message })?;
    if classifier {
        let architectures = config_json.get("architectures").and_then(|a| a.as_array()).cloned().unwrap_or_default();
        if !architectures.iter().filter_map(|a| a.as_str()).any(|a| a.ends_with("ForSequenceClassification")) {
            return Err(ModelError::Config {
                path: config_path,
                message: format!("`architectures` is {architectures:?}; a reward model is a *ForSequenceClassification checkpoint"),
            });
        }
        // No language-model head: the body's embedding stands in for it, never used.
        config.tie_word_embeddings = true;
    }
    let plan = args.quantization().map_err(|message| ModelError::Config { path: config_path.clone(), message })?;

    let mut weights = read_weights(dir)?;
    if multimodal {
        let all = weights.len();
        weights = weights.into_iter().filter_map(|(k, v)| k.strip_prefix(super::gemma3::PREFIX).map(|s| (s.to_owned(), v))).collect();
        eprintln!(
            "{}: the language model of a multimodal gemma3 checkpoint; its vision tower and projector ({} tensors) are not loaded",
            dir.display(),
            all - weights.len()
        );
    }
    weights.retain(|name, _| !name.contains("rotary_emb.inv_freq"));
    stack_experts(&mut weights).map_err(|message| ModelError::Config { path: config_path.clone(), message })?;
    if let Some(sanitize) = super::sanitizer(&args.model_type) {
        sanitize(&mut weights, &config).map_err(|message| ModelError::file(dir, message))?;
    }
    let score = if classifier { weights.remove("score.weight") } else { None };
    if config.tie_word_embeddings {
        weights.retain(|name, _| !name.starts_with("lm_head."));
    }
    let dtype = options.dtype.unwrap_or_else(default_dtype);
    // Quantized exactly where the checkpoint has scales (mlx-lm's rule), with the config's settings.
    let scaled: BTreeSet<String> =
        weights.keys().filter_map(|k| k.strip_suffix(".scales")).map(str::to_owned).collect();
    if !scaled.is_empty() && plan.is_none() {
        return Err(ModelError::Config {
            path: config_path,
            message: "the checkpoint has quantized tensors (*.scales) but config.json has no `quantization`".into(),
        });
    }
    let quant_for = |path: &str, in_dims: i32| {
        if scaled.contains(path) {
            plan.as_ref().and_then(|p| p.for_module(path, inferred_quant(&weights, path, in_dims)))
        } else {
            None
        }
    };
    let mut model = CausalLm::new(config, &quant_for, dtype)?;

    let mismatch = check(&model, &weights);
    if !mismatch.is_empty() {
        return Err(ModelError::Weights { dir: dir.to_owned(), mismatch });
    }
    let mut cast: HashMap<Rc<str>, Array> = HashMap::with_capacity(weights.len());
    for (name, w) in weights {
        // Packed weights and microscaling scales are integer codes, kept as stored.
        let w = if matches!(w.dtype(), Dtype::Uint32 | Dtype::Uint8) { w } else { w.as_dtype(dtype)? };
        cast.insert(Rc::from(name), w);
    }
    model.update_flattened(cast);

    let quantization = match (plan, options.quantize) {
        (Some(_), Some(_)) => {
            return Err(ModelError::Config {
                path: config_path,
                message: "the checkpoint is already quantized; quantizing it again on load is not supported".into(),
            })
        }
        (Some(plan), None) => Some(plan),
        (None, Some(quant)) => {
            let overrides = model.quantize(quant)?;
            Some(QuantizationPlan { default: quant, overrides })
        }
        (None, None) => None,
    };
    eval(model.parameters().flatten().values().copied())?;
    let score = score.map(|w| w.as_dtype(Dtype::Float32)).transpose()?;
    Ok((LoadedModel { model, dir: dir.to_owned(), args, config_json, quantization }, score))
}
