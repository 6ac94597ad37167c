//! Gemma 3 (text): RMSNorm gains stored as offsets from 1, embeddings scaled by √hidden (rounded to bfloat16,
//! as the reference does), four norms per layer around both sublayers, q/k RMSNorm per head, attention
//! scaled by `query_pre_attn_scalar`^-½, a GeGLU MLP (tanh GELU), and local sliding-window layers (RoPE base
//! `rope_local_base_freq`, no scaling) between global ones (`rope_theta` with `rope_scaling`): every
//! `sliding_window_pattern`-th layer is global, or as `layer_types` lists them. Embeddings tied unless the
//! config says otherwise. Reference: transformers' `modeling_gemma3.py`, mlx-lm's `models/gemma3_text.py`.

use super::args::{Activation, HfArgs, NormPlacement, QkNorm, RopeParams, TransformerConfig};
use crate::nn::RopeScaling;

// transformers' Gemma3TextConfig defaults.
const DEFAULT_HEAD_DIM: i32 = 256;
const DEFAULT_QUERY_PRE_ATTN_SCALAR: f64 = 256.0;
const DEFAULT_LOCAL_BASE: f64 = 10_000.0;
const DEFAULT_WINDOW: usize = 4096;
const DEFAULT_PATTERN: usize = 6;

pub fn config(args: &HfArgs) -> Result<TransformerConfig, String> {
    for (key, value) in [("attn_logit_softcapping", args.attn_logit_softcapping), ("final_logit_softcapping", args.final_logit_softcapping)] {
        if value.flatten().is_some() {
            return Err(format!("`{key}` is set, but gemma3_text has no soft-capping (not implemented for it)"));
        }
    }
    check_activation(args)?;
    let mut with_defaults = args.clone();
    with_defaults.head_dim = Some(args.head_dim.unwrap_or(DEFAULT_HEAD_DIM));
    let mut c = with_defaults.base()?;
    let layers = c.num_hidden_layers as usize;
    let sliding = sliding_layers(args, layers, DEFAULT_PATTERN)?;
    let window = args.sliding_window.unwrap_or(DEFAULT_WINDOW);
    if window == 0 {
        return Err("sliding_window must be at least 1".into());
    }
    let global = RopeParams { theta: args.rope_theta, scaling: args.parsed_rope_scaling()?, dims: c.head_dim };
    let local = RopeParams { theta: args.rope_local_base_freq.unwrap_or(DEFAULT_LOCAL_BASE), scaling: RopeScaling::None, dims: c.head_dim };
    c.layer_rope = sliding.iter().map(|&s| Some(if s { local.clone() } else { global.clone() })).collect();
    c.layer_window = sliding.iter().map(|&s| s.then_some(window)).collect();
    c.tie_word_embeddings = args.tie_word_embeddings.unwrap_or(true);
    c.qkv_bias = args.attention_bias.unwrap_or(false);
    c.o_bias = c.qkv_bias;
    c.mlp_bias = false;
    c.qk_norm = QkNorm::PerHead;
    c.norms = NormPlacement::Sandwich;
    c.norm_plus_one = true;
    c.activation = Activation::GeluTanh;
    c.attention_scale = args.query_pre_attn_scalar.unwrap_or(DEFAULT_QUERY_PRE_ATTN_SCALAR).powf(-0.5) as f32;
    c.embedding_multiplier = half::bf16::from_f32((c.hidden_size as f32).sqrt()).to_f32();
    Ok(c)
}

/// Gemma's MLP activation is tanh GELU; anything else is refused (shared with gemma2).
pub(super) fn check_activation(args: &HfArgs) -> Result<(), String> {
    let activation = args.hidden_activation.as_deref().or(args.hidden_act.as_deref()).unwrap_or("gelu_pytorch_tanh");
    if activation != "gelu_pytorch_tanh" {
        return Err(format!("hidden_activation `{activation}` is not supported (gelu_pytorch_tanh)"));
    }
    Ok(())
}

/// Which layers attend within the sliding window: `layer_types` when the config lists them, else all but
/// every `sliding_window_pattern`-th (`default_pattern` when absent; shared with gemma2).
pub(super) fn sliding_layers(args: &HfArgs, layers: usize, default_pattern: usize) -> Result<Vec<bool>, String> {
    match &args.layer_types {
        Some(types) => {
            if types.len() != layers {
                return Err(format!("layer_types has {} entries for {layers} layers", types.len()));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => Ok(true),
                    "full_attention" => Ok(false),
                    other => Err(format!("layer_types: `{other}` is not supported (sliding_attention, full_attention)")),
                })
                .collect()
        }
        None => {
            let pattern = args.sliding_window_pattern.unwrap_or(default_pattern);
            if pattern == 0 {
                return Err("sliding_window_pattern must be at least 1".into());
            }
            Ok((0..layers).map(|i| (i + 1) % pattern != 0).collect())
        }
    }
}
