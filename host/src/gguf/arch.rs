//! From llama.cpp's names and hyperparameters back to a Hugging Face checkpoint: `config.json` for each
//! supported `general.architecture`, tensor names, and the two changes llama.cpp's converter makes to weights
//! (Q/K rows permuted for llama's rotary layout; Gemma's norm weights stored as 1 + w).

use serde_json::{json, Map, Value as Json};

use super::{container::Gguf, GgufError};

/// The architectures converted: `general.architecture`, the Hugging Face `model_type` and class it becomes,
/// and the config key of its activation.
const SUPPORTED: &[(&str, &str, &str, (&str, &str))] = &[
    ("llama", "llama", "LlamaForCausalLM", ("hidden_act", "silu")),
    ("qwen2", "qwen2", "Qwen2ForCausalLM", ("hidden_act", "silu")),
    ("qwen3", "qwen3", "Qwen3ForCausalLM", ("hidden_act", "silu")),
    ("gemma3", "gemma3_text", "Gemma3ForCausalLM", ("hidden_activation", "gelu_pytorch_tanh")),
];

pub struct Arch {
    pub name: String,
    pub config: Map<String, Json>,
    pub heads: usize,
    pub kv_heads: usize,
}

impl Arch {
    /// llama.cpp's converter permutes the rows of llama's q_proj and k_proj (HF's rotate-half layout → ggml's
    /// interleaved one); the others it leaves as HF stores them.
    pub fn permuted_heads(&self, hf_name: &str) -> Option<usize> {
        if self.name != "llama" {
            return None;
        }
        if hf_name.ends_with("self_attn.q_proj.weight") || hf_name.ends_with("self_attn.q_proj.scales") || hf_name.ends_with("self_attn.q_proj.biases") {
            Some(self.heads)
        } else if hf_name.ends_with("self_attn.k_proj.weight") || hf_name.ends_with("self_attn.k_proj.scales") || hf_name.ends_with("self_attn.k_proj.biases") {
            Some(self.kv_heads)
        } else {
            None
        }
    }

    /// Gemma's converter adds 1 to every norm weight (its RMSNorm scales by 1 + w).
    pub fn norm_offset(&self, hf_name: &str) -> bool {
        self.name == "gemma3" && hf_name.ends_with("norm.weight")
    }
}

fn bad(gguf: &Gguf, message: String) -> GgufError {
    GgufError::Format { path: gguf.path.clone(), message }
}

/// The HF name of a GGUF tensor name, or `None` for tensors a HF checkpoint does not store.
pub fn hf_name(arch: &str, name: &str) -> Option<String> {
    let (stem, suffix) = match name.rsplit_once('.') {
        Some((s, x @ ("weight" | "bias" | "scales" | "biases"))) => (s, x),
        _ => return None,
    };
    let top = match stem {
        "token_embd" => Some("model.embed_tokens".to_owned()),
        "output_norm" => Some("model.norm".to_owned()),
        "output" => Some("lm_head".to_owned()),
        _ => None,
    };
    if let Some(top) = top {
        return Some(format!("{top}.{suffix}"));
    }
    let rest = stem.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let gemma = arch == "gemma3";
    let module = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "attn_norm" => "input_layernorm",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}.{suffix}"))
}

/// `config.json` for the file's architecture. Keys that change the math and are not converted are errors.
pub fn config(gguf: &Gguf, vocab_size: usize, bos: Option<u64>, eos: Option<u64>, rope_freqs: Option<&[f32]>) -> Result<Arch, GgufError> {
    let name = gguf.get("general.architecture").and_then(|v| v.as_str()).ok_or_else(|| bad(gguf, "no general.architecture".into()))?.to_owned();
    let Some(&(_, model_type, class, (act_key, act))) = SUPPORTED.iter().find(|(a, ..)| *a == name) else {
        let names: Vec<&str> = SUPPORTED.iter().map(|(a, ..)| *a).collect();
        return Err(GgufError::Unsupported { path: gguf.path.clone(), message: format!("architecture `{name}`; converted: {}", names.join(", ")) });
    };
    let key = |k: &str| format!("{name}.{k}");
    let int = |k: &str| -> Result<Option<u64>, GgufError> {
        match gguf.get(&key(k)) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(x) => Ok(Some(x)),
                None => Err(bad(gguf, format!("{}: expected one integer (per-layer values are not supported), got {v:?}", key(k)))),
            },
        }
    };
    let need = |k: &str| int(k)?.ok_or_else(|| bad(gguf, format!("missing {}", key(k))));
    let float = |k: &str| gguf.get(&key(k)).and_then(|v| v.as_f64());
    let hidden = need("embedding_length")?;
    let layers = need("block_count")?;
    let heads = need("attention.head_count")?;
    let kv_heads = int("attention.head_count_kv")?.unwrap_or(heads);
    let head_dim = int("attention.key_length")?.unwrap_or(hidden / heads.max(1));
    if let Some(v) = int("attention.value_length")? {
        if v != head_dim {
            return Err(bad(gguf, format!("{}: value heads of {v} with key heads of {head_dim} are not supported", key("attention.value_length"))));
        }
    }
    if let Some(rope_dims) = int("rope.dimension_count")? {
        if rope_dims != head_dim {
            return Err(GgufError::Unsupported { path: gguf.path.clone(), message: format!("{} = {rope_dims}: partial rotary embeddings (head size {head_dim})", key("rope.dimension_count")) });
        }
    }
    let eps = float("attention.layer_norm_rms_epsilon").ok_or_else(|| bad(gguf, format!("missing {}", key("attention.layer_norm_rms_epsilon"))))?;
    let theta = float("rope.freq_base").unwrap_or(10_000.0);
    let tied = !gguf.tensors.iter().any(|t| t.name == "output.weight");
    let mut c = Map::new();
    c.insert("hidden_size".into(), json!(hidden));
    c.insert("num_hidden_layers".into(), json!(layers));
    c.insert("intermediate_size".into(), json!(need("feed_forward_length")?));
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert("num_key_value_heads".into(), json!(kv_heads));
    c.insert("head_dim".into(), json!(head_dim));
    c.insert("rms_norm_eps".into(), json!(eps));
    c.insert("rope_theta".into(), json!(theta));
    c.insert("vocab_size".into(), json!(vocab_size));
    c.insert("tie_word_embeddings".into(), json!(tied));
    if let Some(n) = int("context_length")? {
        c.insert("max_position_embeddings".into(), json!(n));
    }
    if let Some(b) = bos {
        c.insert("bos_token_id".into(), json!(b));
    }
    if let Some(e) = eos {
        c.insert("eos_token_id".into(), json!(e));
    }
    let scaling = gguf.get(&key("rope.scaling.type")).and_then(|v| v.as_str()).unwrap_or("none");
    match scaling {
        "none" => {}
        "linear" => {
            let factor = float("rope.scaling.factor").ok_or_else(|| bad(gguf, format!("linear rope scaling without {}", key("rope.scaling.factor"))))?;
            c.insert("rope_scaling".into(), json!({"rope_type": "linear", "factor": factor}));
        }
        other => {
            return Err(GgufError::Unsupported { path: gguf.path.clone(), message: format!("{} = `{other}` (converted: none, linear)", key("rope.scaling.type")) });
        }
    }
    if let Some(factors) = rope_freqs {
        match (name.as_str(), llama3_scaling(factors, theta, head_dim)) {
            ("llama", Some(scaling)) => {
                c.insert("rope_scaling".into(), scaling);
            }
            _ => {
                return Err(GgufError::Unsupported {
                    path: gguf.path.clone(),
                    message: format!("rope_freqs.weight on {name}: per-frequency RoPE factors that no Llama 3 rope_scaling reproduces"),
                })
            }
        }
    }
    c.insert("model_type".into(), json!(model_type));
    c.insert("architectures".into(), json!([class]));
    c.insert(act_key.into(), json!(act));
    if name == "gemma3" {
        // llama.cpp scales queries by 1/sqrt(key_length) for Gemma 3 and keeps the local layers' RoPE base at
        // 10,000, as the released checkpoints do, without storing either; every sixth layer is global
        // unless the file stores the pattern.
        c.insert("query_pre_attn_scalar".into(), json!(head_dim));
        c.insert("rope_local_base_freq".into(), json!(10_000.0));
        c.insert("sliding_window_pattern".into(), json!(sliding_pattern(gguf, &key("attention.sliding_window_pattern"), layers)?));
        let window = int("attention.sliding_window")?.ok_or_else(|| bad(gguf, format!("missing {}", key("attention.sliding_window"))))?;
        c.insert("sliding_window".into(), json!(window));
        for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
            if float(k).is_some() {
                return Err(GgufError::Unsupported { path: gguf.path.clone(), message: format!("{} for gemma3", key(k)) });
            }
        }
    }
    Ok(Arch { name, config: c, heads: heads as usize, kv_heads: kv_heads as usize })
}

/// Llama 3's rope scaling from the per-frequency factors llama.cpp stores instead of its parameters
/// (`rope_freqs.weight`): the factor is the largest one, and the other three parameters are those, among the
/// values Llama 3 checkpoints use (powers of two for the original context, 1/2 and 2/4/8 for the frequency
/// factors), that reproduce every stored factor. `None` when no candidate does.
pub fn llama3_scaling(factors: &[f32], theta: f64, head_dim: u64) -> Option<Json> {
    let factor = factors.iter().copied().fold(f32::MIN, f32::max) as f64;
    let dim = head_dim as f64;
    let expected = |low: f64, high: f64, old: f64, i: usize| {
        let freq = 1.0 / theta.powf((2 * i) as f64 / dim);
        let wavelen = 2.0 * std::f64::consts::PI / freq;
        if wavelen < old / high {
            1.0
        } else if wavelen > old / low {
            factor
        } else {
            let smooth = (old / wavelen - low) / (high - low);
            1.0 / ((1.0 - smooth) / factor + smooth)
        }
    };
    for power in 6..=20 {
        let old = f64::from(1u32 << power);
        for (low, high) in [(1.0, 4.0), (1.0, 2.0), (1.0, 8.0), (2.0, 4.0), (2.0, 8.0)] {
            // Factors were computed in float32 from float32 frequencies: 1e-4 relative is far above that and far
            // below the gap between neighbouring candidates.
            let fits = factors.iter().enumerate().all(|(i, &f)| (expected(low, high, old, i) - f64::from(f)).abs() <= 1e-4 * f64::from(f).max(1.0));
            if fits {
                return Some(json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high, "original_max_position_embeddings": old as u64}));
            }
        }
    }
    None
}

/// Gemma 3's period of local and global layers: `key` as a per-layer list of "sliding" flags (or a period),
/// else llama.cpp's built-in 6. A list that is not "every p-th layer global" cannot be said in config.json.
fn sliding_pattern(gguf: &Gguf, key: &str, layers: u64) -> Result<u64, GgufError> {
    let Some(value) = gguf.get(key) else { return Ok(6) };
    if let Some(p) = value.as_u64() {
        return Ok(p);
    }
    let flags: Option<Vec<bool>> = value.as_array().map(|a| a.iter().map(|v| v.as_bool().or(v.as_u64().map(|x| x != 0))).collect()).and_then(|v: Vec<Option<bool>>| v.into_iter().collect());
    let flags = flags.ok_or_else(|| bad(gguf, format!("{key}: expected a period or one flag per layer")))?;
    let period = flags.iter().position(|&sliding| !sliding).map_or(layers.max(1) + 1, |i| i as u64 + 1);
    if flags.len() as u64 != layers || flags.iter().enumerate().any(|(i, &s)| s == (i as u64 + 1).is_multiple_of(period)) {
        return Err(GgufError::Unsupported { path: gguf.path.clone(), message: format!("{key}: a layer pattern other than every p-th layer global: {flags:?}") });
    }
    Ok(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factors(theta: f64, dim: usize, factor: f64, low: f64, high: f64, old: f64) -> Vec<f32> {
        (0..dim / 2)
            .map(|i| {
                let wavelen = 2.0 * std::f64::consts::PI * theta.powf((2 * i) as f64 / dim as f64);
                if wavelen < old / high {
                    1.0
                } else if wavelen > old / low {
                    factor as f32
                } else {
                    let smooth = (old / wavelen - low) / (high - low);
                    (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
                }
            })
            .collect()
    }

    #[test]
    fn llama3_rope_scaling_is_recovered_from_its_factors_or_refused() {
        // Llama 3.1 8B's parameters, head size 128.
        let f = factors(500_000.0, 128, 8.0, 1.0, 4.0, 8192.0);
        let got = llama3_scaling(&f, 500_000.0, 128).unwrap();
        assert_eq!(got, json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}));
        // Llama 3.2's factor 32.
        assert_eq!(llama3_scaling(&factors(500_000.0, 64, 32.0, 1.0, 4.0, 8192.0), 500_000.0, 64).unwrap()["factor"], json!(32.0));
        // Factors no candidate reproduces (one nudged by 1%) are refused, not approximated.
        let mut bad = f.clone();
        let smooth = bad.iter().position(|&x| x > 1.0 && x < 8.0).unwrap();
        bad[smooth] *= 1.01;
        assert!(llama3_scaling(&bad, 500_000.0, 128).is_none());
    }

    #[test]
    fn llama_cpp_names_map_to_checkpoint_names() {
        assert_eq!(hf_name("llama", "blk.3.attn_q.weight").as_deref(), Some("model.layers.3.self_attn.q_proj.weight"));
        assert_eq!(hf_name("llama", "blk.0.ffn_norm.weight").as_deref(), Some("model.layers.0.post_attention_layernorm.weight"));
        assert_eq!(hf_name("gemma3", "blk.0.ffn_norm.weight").as_deref(), Some("model.layers.0.pre_feedforward_layernorm.weight"));
        assert_eq!(hf_name("gemma3", "blk.1.post_attention_norm.weight").as_deref(), Some("model.layers.1.post_attention_layernorm.weight"));
        assert_eq!(hf_name("qwen2", "blk.0.attn_k.bias").as_deref(), Some("model.layers.0.self_attn.k_proj.bias"));
        assert_eq!(hf_name("qwen2", "token_embd.scales").as_deref(), Some("model.embed_tokens.scales"));
        assert_eq!(hf_name("llama", "blk.0.attn_sinks.weight"), None);
    }
}
