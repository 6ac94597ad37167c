//! Phi-3 / Phi-3.5 / Phi-4-mini: Llama with q/k/v fused in `qkv_proj` and gate/up in `gate_up_proj` (kept
//! fused, as stored; LoRA adapts the fused modules, as in mlx-lm), head_dim = hidden / heads, RoPE on the first
//! `partial_rotary_factor` of each head, and `rope_scaling` of type `longrope` (or `su`): periods stretched by
//! `long_factor` and the rotated features scaled by √(1 + ln(max/original) / ln(original)), with `max` and
//! `original` the config's `max_position_embeddings` and `original_max_position_embeddings`; or `linear`.
//! As mlx-lm, LongRoPE always uses `long_factor` (transformers switches to `short_factor` while the sequence
//! fits the original context; `short_factor` is checked but not used). `sliding_window` is applied to every
//! layer, as transformers does. Reference: transformers' `modeling_phi3.py`, mlx-lm's `models/phi3.py`.

use super::args::{HfArgs, RopeParams, TransformerConfig};
use crate::nn::RopeScaling;

// transformers' Phi3Config defaults.
const DEFAULT_MAX_POSITIONS: f64 = 4096.0;

pub fn config(args: &HfArgs) -> Result<TransformerConfig, String> {
    if let Some(d) = args.head_dim {
        if d * args.num_attention_heads != args.hidden_size {
            return Err(format!("head_dim {d} differs from hidden_size / num_attention_heads, which phi3 uses"));
        }
    }
    let mut plain = args.clone();
    plain.rope_scaling = None;
    let mut c = plain.base()?;
    let factor = args.partial_rotary_factor.unwrap_or(1.0);
    if !(factor > 0.0 && factor <= 1.0) {
        return Err(format!("partial_rotary_factor must be in (0, 1], got {factor}"));
    }
    let dims = (f64::from(c.head_dim) * factor) as i32;
    if dims < 2 || dims % 2 != 0 {
        return Err(format!("partial_rotary_factor {factor} rotates {dims} of {} features; it must be an even number", c.head_dim));
    }
    let scaling = rope_scaling(args, dims)?;
    c.layer_rope = vec![Some(RopeParams { theta: args.rope_theta, scaling, dims }); c.num_hidden_layers as usize];
    c.layer_window = vec![args.binding_window(args.sliding_window); c.num_hidden_layers as usize];
    c.fused_projections = true;
    c.qkv_bias = false;
    c.o_bias = false;
    c.mlp_bias = false;
    Ok(c)
}

fn rope_scaling(args: &HfArgs, dims: i32) -> Result<RopeScaling, String> {
    let Some(scaling) = &args.rope_scaling else { return Ok(RopeScaling::None) };
    let kind = scaling.get("type").or_else(|| scaling.get("rope_type")).and_then(|v| v.as_str()).unwrap_or("default");
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => {
            let factor = scaling.get("factor").and_then(|v| v.as_f64()).ok_or("rope_scaling.factor is missing")?;
            Ok(RopeScaling::Linear { factor })
        }
        "longrope" | "su" => {
            if scaling.contains_key("attention_factor") {
                return Err("rope_scaling.attention_factor is set; only the derived LongRoPE scale is implemented".into());
            }
            let factors = |key: &str| -> Result<Vec<f64>, String> {
                let list = scaling.get(key).and_then(|v| v.as_array()).ok_or_else(|| format!("rope_scaling.{key} is missing"))?;
                let values: Vec<f64> = list.iter().map(|v| v.as_f64().ok_or_else(|| format!("rope_scaling.{key} holds a non-number"))).collect::<Result<_, _>>()?;
                if values.len() != dims as usize / 2 {
                    return Err(format!("rope_scaling.{key} has {} factors for {} rotated pairs", values.len(), dims / 2));
                }
                Ok(values)
            };
            let long = factors("long_factor")?;
            factors("short_factor")?;
            let original = scaling
                .get("original_max_position_embeddings")
                .and_then(|v| v.as_f64())
                .or(args.original_max_position_embeddings)
                .ok_or("original_max_position_embeddings is missing (LongRoPE needs it)")?;
            let max = args.max_position_embeddings.unwrap_or(DEFAULT_MAX_POSITIONS);
            let ratio = max / original;
            let mscale = if ratio <= 1.0 { 1.0 } else { (1.0 + ratio.ln() / original.ln()).sqrt() };
            Ok(RopeScaling::LongRope { factors: long, mscale })
        }
        other => Err(format!("rope_scaling type `{other}` is not supported for phi3 (longrope, su, linear)")),
    }
}
