//! Granite (3.x dense): Llama with four multipliers from the config, all required: embeddings times
//! `embedding_multiplier`, attention scores scaled by `attention_multiplier` (instead of head_dim^-½), each
//! sublayer's output times `residual_multiplier` before its residual add, and logits divided by
//! `logits_scaling`. The head dimension is hidden_size / heads. Reference: transformers'
//! `modeling_granite.py`, mlx-lm's `models/granite.py`.

use super::args::{HfArgs, TransformerConfig};

pub fn config(args: &HfArgs) -> Result<TransformerConfig, String> {
    if let Some(d) = args.head_dim {
        if d * args.num_attention_heads != args.hidden_size {
            return Err(format!("head_dim {d} differs from hidden_size / num_attention_heads, which granite uses"));
        }
    }
    let mut c = args.base()?;
    c.embedding_multiplier = args.required(args.embedding_multiplier, "embedding_multiplier")?;
    c.attention_scale = args.required(args.attention_multiplier, "attention_multiplier")?;
    c.residual_multiplier = args.required(args.residual_multiplier, "residual_multiplier")?;
    c.logits_scaling = args.required(args.logits_scaling, "logits_scaling")?;
    if c.logits_scaling == 0.0 {
        return Err("logits_scaling must not be 0".into());
    }
    Ok(c)
}
