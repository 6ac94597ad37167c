//! gpt-oss (gpt-oss-20b, gpt-oss-120b): grouped-query attention with biases and a learned sink logit per
//! head (`self_attn.sinks`), layers alternating between a sliding window (`sliding_window`) and full
//! attention (`layer_types`, by default sliding first), YaRN RoPE, and on every layer a sparse block: a biased
//! router (`mlp.router`) over `num_local_experts` biased experts (`mlp.experts`), each token through the
//! `num_experts_per_tok` largest router logits weighted by their softmax, the experts' SwiGLU clamped at
//! `swiglu_limit` with the up projection offset by one. OpenAI's checkpoints store the experts in MXFP4
//! (`gate_up_proj_blocks`/`_scales`, gate and up interleaved by row); they are split and repacked on load into
//! mlx-lm's `experts.{gate,up,down}_proj` layout, which is what MLX-community checkpoints hold.
//! Reference: transformers' `modeling_gpt_oss.py`, mlx-lm's `models/gpt_oss.py`.

use std::collections::HashMap;

use mlx_rs::{Array, Dtype};

use super::args::{HfArgs, MoeConfig, MoeNames, RopeParams, TransformerConfig};
use crate::nn::{ExpertActivation, Quant, Routing};

// transformers' GptOssConfig defaults.
const DEFAULT_WINDOW: usize = 128;
const DEFAULT_SWIGLU_LIMIT: f32 = 7.0;
/// The SwiGLU's sigmoid slope (fixed in the reference implementation, not a config key).
const SWIGLU_ALPHA: f32 = 1.702;

pub fn config(args: &HfArgs) -> Result<TransformerConfig, String> {
    let mut with_defaults = args.clone();
    // gpt-oss's head width is independent of hidden / heads (64 with hidden 2880 and 64 heads).
    with_defaults.head_dim = Some(args.required(args.head_dim, "head_dim")?);
    let mut c = with_defaults.base()?;
    let layers = c.num_hidden_layers as usize;
    let experts = args.required(args.num_local_experts, "num_local_experts")?;
    let top_k = args.required(args.num_experts_per_tok, "num_experts_per_tok")?;
    if experts < 1 || top_k < 1 || top_k > experts {
        return Err(format!("num_experts_per_tok ({top_k}) must be in 1..=num_local_experts ({experts})"));
    }
    if let Some(act) = args.hidden_act.as_deref().filter(|a| *a != "silu") {
        return Err(format!("hidden_act `{act}` is not supported by gpt_oss (silu, its clamped SwiGLU)"));
    }
    let window = args.sliding_window.unwrap_or(DEFAULT_WINDOW);
    if window == 0 {
        return Err("sliding_window must be at least 1".into());
    }
    let sliding: Vec<bool> = match &args.layer_types {
        Some(_) => super::gemma3_text::sliding_layers(args, layers, 2)?,
        // Sliding first, then full, alternating (transformers' and mlx-lm's default).
        None => (0..layers).map(|i| i % 2 == 0).collect(),
    };
    let rope = RopeParams { theta: args.rope_theta, scaling: args.parsed_rope_scaling()?, dims: c.head_dim };
    c.layer_rope = vec![Some(rope); layers];
    c.layer_window = sliding.iter().map(|&s| s.then_some(window)).collect();
    c.qkv_bias = args.attention_bias.unwrap_or(true);
    c.o_bias = c.qkv_bias;
    c.attention_sinks = true;
    c.tie_word_embeddings = args.tie_word_embeddings.unwrap_or(false);
    let limit = args.swiglu_limit.unwrap_or(DEFAULT_SWIGLU_LIMIT);
    if !(limit.is_finite() && limit > 0.0) {
        return Err(format!("swiglu_limit must be a positive number, got {limit}"));
    }
    c.moe = Some(MoeConfig {
        routing: Routing { experts, top_k, normalize: false, softmax_after_top_k: true },
        intermediate: c.intermediate_size,
        sparse: vec![true; layers],
        bias: true,
        activation: ExpertActivation::SwigluClamped { alpha: SWIGLU_ALPHA, limit },
        names: MoeNames::RouterExperts,
        router_quant: Some(Quant::affine(8, 64)),
    });
    Ok(c)
}

/// OpenAI's and transformers' expert tensors in mlx-lm's layout (checkpoints already in it pass through):
/// `experts.gate_up_proj{_blocks,_scales,_bias,}` split by alternating rows into `gate_proj` and `up_proj`,
/// `experts.down_proj{_blocks,_scales,_bias,}` renamed; MXFP4 blocks [E, out, in/32, 16] (uint8) viewed as the
/// packed uint32 rows [E, out, in/8] MLX reads. Float tensors in transformers' layout ([E, in, out], used as
/// x·W) are transposed to [E, out, in].
pub fn sanitize(weights: &mut HashMap<String, Array>, c: &TransformerConfig) -> Result<(), String> {
    let (hidden, inter) = (c.hidden_size, c.intermediate_size);
    let names: Vec<String> = weights.keys().filter(|k| k.contains(".mlp.experts.gate_up_proj") || k.contains(".mlp.experts.down_proj")).cloned().collect();
    let e = |name: &str, err: mlx_rs::error::Exception| format!("{name}: {err}");
    for name in names {
        let Some((head, tail)) = name.split_once(".mlp.experts.") else { continue };
        if tail.contains('.') {
            continue; // `down_proj.weight`: mlx-lm's layout already
        }
        let Some(v) = weights.remove(&name) else { continue };
        let (proj, kind) = match tail {
            "gate_up_proj_blocks" | "down_proj_blocks" => (tail.trim_end_matches("_blocks"), "weight"),
            "gate_up_proj_scales" | "down_proj_scales" => (tail.trim_end_matches("_scales"), "scales"),
            "gate_up_proj_bias" | "down_proj_bias" => (tail.trim_end_matches("_bias"), "bias"),
            "gate_up_proj" | "down_proj" => (tail, "float"),
            other => return Err(format!("{name}: unexpected gpt-oss expert tensor `{other}`")),
        };
        let v = match kind {
            "weight" => {
                if v.dtype() != Dtype::Uint8 || v.ndim() != 4 || v.shape()[3] % 4 != 0 {
                    return Err(format!("{name}: expected MXFP4 blocks [experts, out, in/32, 16] of uint8, found {:?} {:?}", v.dtype(), v.shape()));
                }
                let s = v.shape().to_vec();
                v.view::<u32>().and_then(|u| u.reshape(&[s[0], s[1], s[2] * s[3] / 4])).map_err(|err| e(&name, err))?
            }
            "float" => {
                // transformers' float layout: gate_up [E, hidden, 2·inter], down [E, inter, hidden].
                let input = if proj == "gate_up_proj" { hidden } else { inter };
                let s = v.shape();
                if v.ndim() == 3 && s[1] == input {
                    v.swap_axes(1, 2).map_err(|err| e(&name, err))?
                } else {
                    v
                }
            }
            _ => v,
        };
        let kind = if kind == "float" { "weight" } else { kind };
        let prefix = format!("{head}.mlp.experts");
        if proj == "gate_up_proj" {
            // Rows alternate gate, up (axis −2 of weights and scales, the last axis of the bias).
            let axis = if kind == "bias" { -1 } else { -2 };
            let n = v.shape()[(v.ndim() as i32 + axis) as usize];
            if n % 2 != 0 {
                return Err(format!("{name}: {n} rows cannot alternate gate and up"));
            }
            let pick = |start: i32| -> Result<Array, String> {
                let idx = Array::from_slice(&(0..n / 2).map(|i| 2 * i + start).collect::<Vec<i32>>(), &[n / 2]);
                v.take_axis(&idx, axis).map_err(|err| e(&name, err))
            };
            weights.insert(format!("{prefix}.gate_proj.{kind}"), pick(0)?);
            weights.insert(format!("{prefix}.up_proj.{kind}"), pick(1)?);
        } else {
            weights.insert(format!("{prefix}.down_proj.{kind}"), v);
        }
    }
    Ok(())
}
