//! OLMo 2: norms after each sublayer instead of before (`post_attention_layernorm` on the attention output,
//! `post_feedforward_layernorm` on the MLP output, no input norm), and RMSNorm of q and k over the whole
//! projection (all heads at once) before RoPE. Reference: transformers' `modeling_olmo2.py`, mlx-lm's
//! `models/olmo2.py`.

use super::args::{HfArgs, NormPlacement, QkNorm, TransformerConfig};

pub fn config(args: &HfArgs) -> Result<TransformerConfig, String> {
    let mut c = args.base()?;
    c.norms = NormPlacement::Post;
    c.qk_norm = QkNorm::Whole;
    Ok(c)
}
