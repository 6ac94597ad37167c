//! Llama 2 and 3.x (with Llama 3.1's RoPE scaling), and everything shipped as `model_type = "llama"` such as
//! SmolLM. Bias on all four attention projections when `attention_bias`, on the MLP when `mlp_bias`.
//! Reference: transformers' `modeling_llama.py`, mlx-lm's `models/llama.py`.

use super::args::{HfArgs, TransformerConfig};

pub fn config(args: &HfArgs) -> Result<TransformerConfig, String> {
    args.base()
}
