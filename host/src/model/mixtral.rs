//! Mixtral (8x7B, 8x22B): Mistral's attention with a sparse block on every layer, `block_sparse_moe`: a
//! router (`gate`) over `num_local_experts` SwiGLU experts of width `intermediate_size`, each token through
//! the `num_experts_per_tok` largest router logits, weighted by the softmax of those k logits. Checkpoints store
//! the experts apart as `w1` (gate), `w3` (up) and `w2` (down); they are stacked on load into mlx-lm's
//! `block_sparse_moe.switch_mlp.*`. Reference: transformers' `modeling_mixtral.py`, mlx-lm's `models/mixtral.py`.

use super::args::{HfArgs, MoeConfig, MoeNames, TransformerConfig};
use crate::nn::{ExpertActivation, Routing};

pub fn config(args: &HfArgs) -> Result<TransformerConfig, String> {
    let mut c = super::mistral::config(args)?;
    if let Some(noise) = args.router_jitter_noise.filter(|n| *n != 0.0) {
        return Err(format!("router_jitter_noise = {noise}: training-time router noise is not implemented (set it to 0)"));
    }
    let experts = args.num_local_experts.ok_or("mixtral needs `num_local_experts`")?;
    let top_k = args.num_experts_per_tok.ok_or("mixtral needs `num_experts_per_tok`")?;
    if experts < 1 || top_k < 1 || top_k > experts {
        return Err(format!("num_experts_per_tok ({top_k}) must be in 1..=num_local_experts ({experts})"));
    }
    c.moe = Some(MoeConfig {
        routing: Routing { experts, top_k, normalize: false, softmax_after_top_k: true },
        intermediate: c.intermediate_size,
        sparse: vec![true; c.num_hidden_layers as usize],
        bias: false,
        activation: ExpertActivation::Swiglu,
        names: MoeNames::GateSwitchMlp,
        router_quant: None,
    });
    c.block_sparse_moe = true;
    Ok(c)
}
