//! SmolLM3: Llama with RoPE left out of some layers ("NoPE"): `no_rope_layers[i]` is 1 where layer i uses
//! RoPE and 0 where it does not; without the list, every `no_rope_layer_interval`-th layer (default 4:
//! layers 3, 7, ...) has none. Reference: transformers' `modeling_smollm3.py`, mlx-lm's `models/smollm3.py`.

use super::args::{HfArgs, TransformerConfig};

const DEFAULT_NO_ROPE_INTERVAL: usize = 4;

pub fn config(args: &HfArgs) -> Result<TransformerConfig, String> {
    let mut c = args.base()?;
    let layers = c.num_hidden_layers as usize;
    let uses_rope: Vec<bool> = match &args.no_rope_layers {
        Some(flags) if flags.len() != layers => {
            return Err(format!("no_rope_layers has {} entries for {layers} layers", flags.len()));
        }
        Some(flags) => flags.iter().map(|&f| f != 0).collect(),
        None => {
            let interval = args.no_rope_layer_interval.unwrap_or(DEFAULT_NO_ROPE_INTERVAL);
            if interval == 0 {
                return Err("no_rope_layer_interval must be at least 1".into());
            }
            (0..layers).map(|i| (i + 1) % interval != 0).collect()
        }
    };
    for (rope, uses) in c.layer_rope.iter_mut().zip(uses_rope) {
        if !uses {
            *rope = None;
        }
    }
    Ok(c)
}
