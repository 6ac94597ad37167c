//! Qwen2 and Qwen2.5: biases on q, k and v (not on o), often tied embeddings. Reference: transformers'
//! `modeling_qwen2.py`, mlx-lm's `models/qwen2.py`.

use super::args::{HfArgs, TransformerConfig};

pub fn config(args: &HfArgs) -> Result<TransformerConfig, String> {
    let mut c = args.base()?;
    c.qkv_bias = true;
    c.o_bias = false;
    c.mlp_bias = false;
    Ok(c)
}
