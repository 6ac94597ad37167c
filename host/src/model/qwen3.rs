//! Qwen3: RMSNorm over each head of q and k before RoPE (`q_norm`, `k_norm`), biases only with
//! `attention_bias`, and `head_dim` 128 unless the config says otherwise. Reference: transformers'
//! `modeling_qwen3.py`, mlx-lm's `models/qwen3.py`.

use super::args::{HfArgs, TransformerConfig};

/// transformers' `Qwen3Config.head_dim` default.
const DEFAULT_HEAD_DIM: i32 = 128;

pub fn config(args: &HfArgs) -> Result<TransformerConfig, String> {
    let mut with_head_dim = args.clone();
    with_head_dim.head_dim = Some(args.head_dim.unwrap_or(DEFAULT_HEAD_DIM));
    let mut c = with_head_dim.base()?;
    c.qk_norm = super::args::QkNorm::PerHead;
    c.layer_window = super::qwen2::windows(args, c.num_hidden_layers as usize)?;
    c.mlp_bias = false;
    Ok(c)
}
