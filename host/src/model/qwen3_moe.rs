//! Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention with sparse feed-forward blocks on every
//! `decoder_sparse_step`-th layer not in `mlp_only_layers`: a router (`mlp.gate`) over `num_experts` SwiGLU
//! experts of width `moe_intermediate_size`, each token through its `num_experts_per_tok` highest-scoring
//! ones, their softmax weights renormalized with `norm_topk_prob`. Checkpoints store the experts apart
//! (`mlp.experts.{e}.gate_proj.weight`); they are stacked on load into mlx-lm's `mlp.switch_mlp.*`.
//! Reference: transformers' `modeling_qwen3_moe.py`, mlx-lm's `models/qwen3_moe.py`.

use super::args::{HfArgs, MoeConfig, MoeNames, TransformerConfig};
use crate::nn::{ExpertActivation, Quant, Routing};

pub fn config(args: &HfArgs) -> Result<TransformerConfig, String> {
    let mut c = super::qwen3::config(args)?;
    let need = |v: Option<i32>, key: &str| v.ok_or_else(|| format!("qwen3_moe needs `{key}`"));
    let experts = need(args.num_experts, "num_experts")?;
    let top_k = need(args.num_experts_per_tok, "num_experts_per_tok")?;
    if experts < 1 || top_k < 1 || top_k > experts {
        return Err(format!("num_experts_per_tok ({top_k}) must be in 1..=num_experts ({experts})"));
    }
    let step = args.decoder_sparse_step.unwrap_or(1);
    if step < 1 {
        return Err(format!("decoder_sparse_step must be at least 1, got {step}"));
    }
    let dense = args.mlp_only_layers.clone().unwrap_or_default();
    let sparse = (0..c.num_hidden_layers).map(|i| !dense.contains(&i) && (i + 1) % step == 0).collect();
    c.moe = Some(MoeConfig {
        routing: Routing { experts, top_k, normalize: args.norm_topk_prob.unwrap_or(false), softmax_after_top_k: false },
        intermediate: need(args.moe_intermediate_size, "moe_intermediate_size")?,
        sparse,
        bias: false,
        activation: ExpertActivation::Swiglu,
        names: MoeNames::GateSwitchMlp,
        router_quant: Some(Quant::affine(8, 64)),
    });
    Ok(c)
}
