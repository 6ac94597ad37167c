//! Mistral: the Llama architecture without attention biases; `head_dim` may differ from hidden/heads
//! (Mistral-Nemo). Mistral 7B v0.1's `sliding_window` (4096) is not applied, as in mlx-lm: outputs match
//! transformers up to that context length. Reference: transformers' `modeling_mistral.py`.

use super::args::{HfArgs, TransformerConfig};

pub fn config(args: &HfArgs) -> Result<TransformerConfig, String> {
    let mut c = args.base()?;
    c.qkv_bias = false;
    c.o_bias = false;
    Ok(c)
}
