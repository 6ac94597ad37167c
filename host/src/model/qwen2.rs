//! Qwen2 and Qwen2.5: biases on q, k and v (not on o), often tied embeddings. With `use_sliding_window`
//! (off in the released checkpoints), layers from `max_window_layers` on attend within `sliding_window`, or as
//! `layer_types` lists them, as transformers does. Reference: transformers' `modeling_qwen2.py`, mlx-lm's
//! `models/qwen2.py`.

use super::args::{HfArgs, TransformerConfig};

pub fn config(args: &HfArgs) -> Result<TransformerConfig, String> {
    let mut c = args.base()?;
    c.qkv_bias = true;
    c.o_bias = false;
    c.mlp_bias = false;
    c.layer_window = windows(args, c.num_hidden_layers as usize)?;
    Ok(c)
}

/// Qwen's per-layer sliding windows (shared with qwen3).
pub(super) fn windows(args: &HfArgs, layers: usize) -> Result<Vec<Option<usize>>, String> {
    let sliding: Vec<bool> = match &args.layer_types {
        Some(types) if types.len() != layers => return Err(format!("layer_types has {} entries for {layers} layers", types.len())),
        Some(types) => types
            .iter()
            .map(|t| match t.as_str() {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => Err(format!("layer_types: `{other}` is not supported (sliding_attention, full_attention)")),
            })
            .collect::<Result<_, _>>()?,
        None if args.use_sliding_window == Some(true) => {
            let from = args.max_window_layers.unwrap_or(layers);
            (0..layers).map(|i| i >= from).collect()
        }
        None => vec![false; layers],
    };
    if !sliding.iter().any(|&s| s) {
        return Ok(vec![None; layers]);
    }
    let window = args.sliding_window.ok_or("sliding layers need `sliding_window`")?;
    if window == 0 {
        return Err("sliding_window must be at least 1".into());
    }
    Ok(sliding.into_iter().map(|s| args.binding_window(s.then_some(window))).collect())
}
