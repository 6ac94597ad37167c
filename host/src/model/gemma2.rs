//! Gemma 2: like Gemma 3 (offset RMSNorm, √hidden embedding scale, four norms per layer, tanh-GELU GeGLU,
//! `query_pre_attn_scalar`, tied embeddings) without q/k norms and with one RoPE base, plus soft-capping:
//! attention scores become 50·tanh(s/50) and logits 30·tanh(l/30) by default (`attn_logit_softcapping`,
//! `final_logit_softcapping`; null turns one off). Even layers attend within `sliding_window` (4096), odd
//! ones globally, or as `layer_types` lists them. mlx-lm 0.32.2 leaves the window out (its outputs equal
//! transformers' up to that length); we apply it, as transformers does. Reference: transformers'
//! `modeling_gemma2.py`, mlx-lm's `models/gemma2.py`.

use super::{
    args::{Activation, HfArgs, NormPlacement, TransformerConfig},
    gemma3_text::{check_activation, sliding_layers},
};

// transformers' Gemma2Config defaults.
const DEFAULT_HEAD_DIM: i32 = 256;
const DEFAULT_QUERY_PRE_ATTN_SCALAR: f64 = 256.0;
const DEFAULT_ATTN_SOFTCAP: f64 = 50.0;
const DEFAULT_FINAL_SOFTCAP: f64 = 30.0;
const DEFAULT_WINDOW: usize = 4096;

pub fn config(args: &HfArgs) -> Result<TransformerConfig, String> {
    check_activation(args)?;
    if args.rope_scaling.is_some() {
        return Err("`rope_scaling` is set, but gemma2 has none (not implemented for it)".into());
    }
    let mut with_defaults = args.clone();
    with_defaults.head_dim = Some(args.head_dim.unwrap_or(DEFAULT_HEAD_DIM));
    let mut c = with_defaults.base()?;
    let layers = c.num_hidden_layers as usize;
    let window = args.sliding_window.unwrap_or(DEFAULT_WINDOW);
    if window == 0 {
        return Err("sliding_window must be at least 1".into());
    }
    c.layer_window = sliding_layers(args, layers, 2)?.iter().map(|&s| s.then_some(window)).collect();
    c.tie_word_embeddings = args.tie_word_embeddings.unwrap_or(true);
    c.qkv_bias = args.attention_bias.unwrap_or(false);
    c.o_bias = c.qkv_bias;
    c.mlp_bias = false;
    c.norms = NormPlacement::Sandwich;
    c.norm_plus_one = true;
    c.activation = Activation::GeluTanh;
    c.attention_scale = args.query_pre_attn_scalar.unwrap_or(DEFAULT_QUERY_PRE_ATTN_SCALAR).powf(-0.5) as f32;
    // In the activations' dtype (transformers: a tensor of that dtype; mlx-lm: a Python float).
    c.embedding_multiplier = (c.hidden_size as f32).sqrt();
    let cap = |value: Option<Option<f64>>, default: f64, key: &str| -> Result<Option<f32>, String> {
        match value.unwrap_or(Some(default)) {
            Some(v) if v > 0.0 => Ok(Some(v as f32)),
            Some(v) => Err(format!("{key} must be positive, got {v}")),
            None => Ok(None),
        }
    };
    c.attn_softcap = cap(args.attn_logit_softcapping, DEFAULT_ATTN_SOFTCAP, "attn_logit_softcapping")?;
    c.final_softcap = cap(args.final_logit_softcapping, DEFAULT_FINAL_SOFTCAP, "final_logit_softcapping")?;
    Ok(c)
}
