//! Mistral: the Llama architecture without attention biases; `head_dim` may differ from hidden/heads
//! (Mistral-Nemo). A `sliding_window` (Mistral 7B v0.1's 4096; null from v0.2 on) applies to every layer, as in
//! transformers (mlx-lm leaves it out: outputs agree up to that length). Reference: transformers'
//! `modeling_mistral.py`.

use super::args::{HfArgs, TransformerConfig};

pub fn config(args: &HfArgs) -> Result<TransformerConfig, String> {
    let mut c = args.base()?;
    c.qkv_bias = false;
    c.o_bias = false;
    if args.sliding_window == Some(0) {
        return Err("sliding_window must be at least 1".into());
    }
    c.layer_window = vec![args.binding_window(args.sliding_window); c.num_hidden_layers as usize];
    Ok(c)
}
