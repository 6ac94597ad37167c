//! GGUF import (`host convert --gguf FILE --out DIR`): a llama.cpp model file becomes a model directory that
//! `host` and mlx-lm load. Weights go through MLX's own GGUF reader when every tensor is of a type it reads
//! as it is (F32, F16, and Q4_0/Q4_1/Q8_0 as affine quantization with group size 32, no dequantization);
//! otherwise every tensor is read here: Q4_0/Q4_1/Q8_0 repacked into the same affine form (bit for bit what
//! MLX's reader gives), BF16 kept, k-quants and Q5_0/Q5_1 dequantized from their block layouts and, with
//! `--quantize`, quantized again into MLX's format. The tokenizer and chat template are rebuilt from the
//! metadata, the architecture's config.json written, and llama.cpp's weight rewrites undone. The result is
//! loaded back (every tensor checked against the architecture) before it is written in mlx-lm's layout.

mod arch;
mod container;
mod mlx_reader;
pub mod quants;
mod tokenizer;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use mlx_rs::{Array, Dtype};
use serde_json::{json, Value as Json};
use thiserror::Error;

pub use container::{Gguf, TensorInfo, Value};
pub use quants::GgmlType;

use crate::{
    model::{self, LoadOptions, ModelError, QuantizationPlan},
    nn::Quant,
};

#[derive(Debug, Error)]
pub enum GgufError {
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("{}: not a valid GGUF file: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("{}: not supported: {message}", path.display())]
    Unsupported { path: PathBuf, message: String },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("MLX: {0}")]
    Mlx(String),
}

impl From<mlx_rs::error::Exception> for GgufError {
    fn from(e: mlx_rs::error::Exception) -> Self {
        GgufError::Mlx(e.what().to_owned())
    }
}

#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// The dtype of dequantized and float tensors (default: the file's float type, float16 when it has none).
    pub dtype: Option<Dtype>,
    /// Quantize the layers that end up in float (dequantized k-quants, float tensors) with MLX's affine mode.
    pub quantize: Option<Quant>,
    /// Read every tensor here even when MLX's reader could (tests compare the two).
    pub own_reader: bool,
}

/// What a conversion did.
#[derive(Debug, Clone)]
pub struct Converted {
    pub architecture: String,
    pub model_type: String,
    pub tensors: usize,
    /// "MLX's GGUF reader" or "this program's reader".
    pub reader: &'static str,
    /// Tensor counts by ggml type.
    pub types: BTreeMap<String, usize>,
    /// Tensors decoded from block types (k-quants, Q5_0/Q5_1) that stay float in the output.
    pub dequantized: usize,
}

/// Llama 3's rope scaling as llama.cpp stores it; it becomes config.json's rope_scaling.
const ROPE_FREQS: &str = "rope_freqs.weight";

fn io(path: &Path) -> impl Fn(std::io::Error) -> GgufError + '_ {
    move |e| GgufError::Io { path: path.to_owned(), message: e.to_string() }
}

/// Which modules carry quantization after conversion, as config.json's block describes them.
fn plan_of(model: &mut model::CausalLm) -> Option<QuantizationPlan> {
    let modules = model.module_quants();
    let mut counts: BTreeMap<(i32, i32), usize> = BTreeMap::new();
    for q in modules.iter().filter_map(|(_, q)| *q) {
        *counts.entry((q.bits, q.group_size)).or_default() += 1;
    }
    // GGUF's block types repack into affine only.
    let (&(bits, group_size), _) = counts.iter().max_by_key(|(_, n)| **n)?;
    let default = Quant::affine(bits, group_size);
    let overrides = modules.into_iter().filter(|(_, q)| *q != Some(default)).collect();
    Some(QuantizationPlan { default, overrides })
}

/// Inverse of llama.cpp's Q/K row permutation: rows grouped per head as (2, d/2) interleaved back to (d/2, 2)
/// → HF's rotate-half order. Works on packed quantized rows, scales and biases alike (it only moves rows).
fn unpermute(a: &Array, heads: usize) -> Result<Array, GgufError> {
    let shape = a.shape().to_vec();
    let rows = shape[0] as usize;
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        return Err(GgufError::Mlx(format!("cannot undo the Q/K permutation of {rows} rows over {heads} heads")));
    }
    let h = heads as i32;
    let half = (rows / heads / 2) as i32;
    let mut grouped = vec![h, half, 2];
    grouped.extend_from_slice(&shape[1..]);
    Ok(a.reshape(&grouped)?.swap_axes(1, 2)?.reshape(&shape)?)
}

/// Converts `file` into the model directory `out`.
pub fn convert(file: &Path, out: &Path, options: &ConvertOptions) -> Result<Converted, GgufError> {
    let gguf = Gguf::open(file)?;
    let tok = tokenizer::rebuild(&gguf)?;
    let arch_name = gguf.get("general.architecture").and_then(Value::as_str).unwrap_or_default().to_owned();
    let vocab = gguf.get(&format!("{arch_name}.vocab_size")).and_then(Value::as_u64).map_or(tok.vocab_size, |v| v as usize);
    let rope_freqs = match gguf.tensors.iter().find(|t| t.name == ROPE_FREQS) {
        Some(t) => Some(quants::decode(t.kind, &gguf.tensor_bytes(t)?).ok_or_else(|| GgufError::Unsupported { path: file.to_owned(), message: format!("{ROPE_FREQS} of type {:?}", t.kind) })?),
        None => None,
    };
    let arch = arch::config(&gguf, vocab, tok.bos, tok.eos, rope_freqs.as_deref())?;

    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    for t in gguf.tensors.iter().filter(|t| t.name != ROPE_FREQS) {
        *types.entry(format!("{:?}", t.kind)).or_default() += 1;
        if let GgmlType::Unsupported(id) = t.kind {
            return Err(GgufError::Unsupported {
                path: file.to_owned(),
                message: format!("tensor {} has ggml type {id}; read: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K", t.name),
            });
        }
        if arch::hf_name(&arch.name, &t.name).is_none() {
            return Err(GgufError::Unsupported { path: file.to_owned(), message: format!("tensor {} has no counterpart in a {} checkpoint", t.name, arch.name) });
        }
    }
    let dtype = options.dtype.unwrap_or_else(|| {
        let has = |k: GgmlType| gguf.tensors.iter().any(|t| t.kind == k && !t.name.ends_with("norm.weight"));
        if has(GgmlType::BF16) {
            Dtype::Bfloat16
        } else if has(GgmlType::F16) || gguf.tensors.iter().any(|t| t.kind.block().0 > 1) {
            Dtype::Float16
        } else {
            Dtype::Float32
        }
    });
    let use_mlx = !options.own_reader && gguf.tensors.iter().all(|t| t.kind.mlx_reads());

    // GGUF names → arrays (quantized tensors as weight, scales, biases).
    let mut arrays: HashMap<String, Array> = if use_mlx { mlx_reader::load(file)? } else { read_own(&gguf)? };
    arrays.remove(ROPE_FREQS);
    let mut quantized: BTreeMap<String, i32> = BTreeMap::new();
    for t in &gguf.tensors {
        if let Some(bits) = t.kind.affine_bits() {
            if let Some(module) = arch::hf_name(&arch.name, &t.name).and_then(|n| n.strip_suffix(".weight").map(str::to_owned)) {
                quantized.insert(module, bits);
            }
        }
    }
    let mut tensors: Vec<(String, Array)> = Vec::with_capacity(arrays.len());
    let mut names: Vec<String> = arrays.keys().cloned().collect();
    names.sort();
    for name in names {
        let Some(mut a) = arrays.remove(&name) else { continue };
        let hf = arch::hf_name(&arch.name, &name).ok_or_else(|| GgufError::Format { path: file.to_owned(), message: format!("unexpected tensor {name}") })?;
        // Gemma's 1 + w comes back before any narrowing: w is small next to 1.
        if arch.norm_offset(&hf) {
            a = a.as_dtype(Dtype::Float32)?.subtract(Array::from_f32(1.0))?;
        }
        if a.dtype() != Dtype::Uint32 && a.dtype() != dtype {
            a = a.as_dtype(dtype)?;
        }
        if let Some(heads) = arch.permuted_heads(&hf) {
            a = unpermute(&a, heads)?;
        }
        tensors.push((hf, a));
    }

    // A staging directory that loads as a model: it checks every tensor against the architecture.
    let staging = out.join(".gguf-staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let mut config = arch.config.clone();
    if let Some(bits) = quantized.values().copied().max() {
        let mut block = serde_json::Map::new();
        block.insert("group_size".into(), json!(32));
        block.insert("bits".into(), json!(bits));
        block.insert("mode".into(), json!("affine"));
        for (module, b) in &quantized {
            if *b != bits {
                block.insert(module.clone(), json!({"group_size": 32, "bits": b}));
            }
        }
        config.insert("quantization".into(), Json::Object(block));
    }
    let write_json = |path: PathBuf, v: &Json| -> Result<(), GgufError> {
        let text = serde_json::to_string_pretty(v).map_err(|e| GgufError::Io { path: path.clone(), message: e.to_string() })?;
        std::fs::write(&path, text).map_err(io(&path))
    };
    write_json(staging.join("config.json"), &Json::Object(config.clone()))?;
    let weights = staging.join("model.safetensors");
    crate::tensor_file::write(&weights, tensors.iter().map(|(n, a)| (n.as_str(), a)), Some("mlx")).map_err(|e| GgufError::Io { path: e.path, message: e.message })?;
    drop(tensors);
    write_json(staging.join("tokenizer.json"), &tok.tokenizer)?;
    write_json(staging.join("tokenizer_config.json"), &tok.config)?;
    if let Some(eos) = tok.eos {
        write_json(staging.join("generation_config.json"), &json!({"bos_token_id": tok.bos, "eos_token_id": eos}))?;
    }
    let mut loaded = model::load(&staging, &LoadOptions { dtype: Some(dtype), quantize: None })?;
    // Tensors stored in a block type MLX has no form for, decoded to float: they stay float unless re-quantized
    // (layers already quantized, the repacked Q4_0/Q4_1/Q8_0 ones, keep their own settings).
    let decoded: Vec<String> = gguf
        .tensors
        .iter()
        .filter(|t| t.kind.block().0 > 1 && t.kind.affine_bits().is_none())
        .filter_map(|t| arch::hf_name(&arch.name, &t.name)?.strip_suffix(".weight").map(str::to_owned))
        .collect();
    let left_float: Vec<String> = match options.quantize {
        Some(q) => loaded.model.quantize(q)?.into_iter().filter(|(_, q)| q.is_none()).map(|(p, _)| p).collect(),
        None => decoded.clone(),
    };
    let dequantized = decoded.iter().filter(|m| left_float.contains(m)).count();
    loaded.quantization = plan_of(&mut loaded.model);
    model::save(&loaded, out)?;
    std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    Ok(Converted {
        architecture: arch.name.clone(),
        model_type: config.get("model_type").and_then(Json::as_str).unwrap_or_default().to_owned(),
        tensors: gguf.tensors.len(),
        reader: if use_mlx { "MLX's GGUF reader" } else { "this program's reader" },
        types,
        dequantized,
    })
}

/// Every tensor read by this program: affine-repackable types repacked, the rest decoded to float32.
fn read_own(gguf: &Gguf) -> Result<HashMap<String, Array>, GgufError> {
    let mut out = HashMap::new();
    for t in &gguf.tensors {
        let bytes = gguf.tensor_bytes(t)?;
        let shape = t.shape();
        if let Some((words, scales, biases)) = quants::to_affine(t.kind, &bytes) {
            let bits = t.kind.affine_bits().unwrap_or(8);
            let (rows, cols) = (shape[..shape.len() - 1].to_vec(), shape[shape.len() - 1]);
            let with_last = |last: i32| rows.iter().copied().chain(std::iter::once(last)).collect::<Vec<i32>>();
            let prefix = t.name.strip_suffix(".weight").unwrap_or(&t.name);
            out.insert(t.name.clone(), Array::from_slice(&words, &with_last(cols * bits / 32)));
            out.insert(format!("{prefix}.scales"), Array::from_slice(&scales, &with_last(cols / 32)));
            out.insert(format!("{prefix}.biases"), Array::from_slice(&biases, &with_last(cols / 32)));
            continue;
        }
        let values = quants::decode(t.kind, &bytes).ok_or_else(|| GgufError::Unsupported { path: gguf.path.clone(), message: format!("tensor {}: {:?}", t.name, t.kind) })?;
        // Float32 here; the caller narrows to the output dtype after undoing llama.cpp's rewrites.
        out.insert(t.name.clone(), Array::from_slice(&values, &shape));
    }
    Ok(out)
}
