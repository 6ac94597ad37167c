//! Gemma 3's multimodal checkpoints (`model_type = "gemma3"`, `Gemma3ForConditionalGeneration`): the
//! language model is a `gemma3_text` model whose config is `text_config` (with the outer `vocab_size`, and
//! transformers' defaults for the head counts these configs leave out) and whose tensors are named
//! `language_model.*`; the vision tower and projector are not loaded. A model saved from one (quantized,
//! fused) is a text-only `gemma3_text` directory. Reference: mlx-lm's `models/gemma3.py`.

use serde_json::{Map, Value};

/// The prefix of the language model's tensors.
pub const PREFIX: &str = "language_model.";

// transformers' Gemma3TextConfig defaults for keys the multimodal configs omit.
const DEFAULTS: &[(&str, i64)] = &[("num_attention_heads", 8), ("num_key_value_heads", 4), ("head_dim", 256)];
/// Gemma3Config's vocabulary (image tokens included).
const DEFAULT_VOCAB: i64 = 262_208;

/// The `gemma3_text` config of a multimodal checkpoint's config.
pub fn text_config(outer: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let mut text = match outer.get("text_config") {
        Some(Value::Object(t)) => t.clone(),
        Some(_) => return Err("`text_config` must be an object".into()),
        None => return Err("a gemma3 checkpoint needs `text_config` (its language model's config)".into()),
    };
    text.insert("model_type".into(), Value::from("gemma3_text"));
    text.insert("vocab_size".into(), outer.get("vocab_size").cloned().unwrap_or(Value::from(DEFAULT_VOCAB)));
    for (key, default) in DEFAULTS {
        text.entry(key.to_string()).or_insert(Value::from(*default));
    }
    for key in ["hidden_size", "intermediate_size", "num_hidden_layers"] {
        if !text.contains_key(key) {
            return Err(format!("text_config lacks `{key}`"));
        }
    }
    // Quantization applies to the language model's modules, named without the prefix.
    for key in ["quantization", "quantization_config"] {
        if let Some(Value::Object(block)) = outer.get(key) {
            let inner: Map<String, Value> = block
                .iter()
                .filter_map(|(k, v)| match v {
                    Value::Object(_) | Value::Bool(_) => k.strip_prefix(PREFIX).map(|s| (s.to_owned(), v.clone())),
                    _ => Some((k.clone(), v.clone())),
                })
                .collect();
            text.insert(key.into(), Value::Object(inner));
        }
    }
    for key in ["bos_token_id", "eos_token_id"] {
        if let Some(v) = outer.get(key) {
            text.entry(key.to_string()).or_insert(v.clone());
        }
    }
    Ok(text)
}
