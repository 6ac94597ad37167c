//! Whether to checkpoint activations: explicit on/off wins; `auto` compares an estimate of the activations a
//! training step keeps for its backward pass with a memory budget.
//!
//! The estimate per layer and sequence of s tokens at hidden size h, a heads and b bytes per element follows
//! Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"):
//! s·h·34·b/2 + 5·a·s²·b/2, with the MLP term scaled by intermediate/(4h) (their 4h MLP). Only the layers from the
//! first adapted one to the last keep activations (nothing before them needs a gradient), and the logits'
//! float32 log-softmax (s × vocabulary) counts once.

use crate::{config::Checkpointing, model::TransformerConfig};

/// Bytes of activations one step keeps for `rows` sequences of `seq` tokens through `layers` layers.
pub fn activation_bytes(c: &TransformerConfig, rows: usize, seq: usize, layers: usize, dtype_bytes: usize) -> u64 {
    let (s, h, a, b) = (seq as f64, f64::from(c.hidden_size), f64::from(c.num_attention_heads), dtype_bytes as f64);
    let mlp_scale = f64::from(c.intermediate_size) / (4.0 * h);
    // 34 s h = 11 s h (attention block) + 19 s h (MLP at 4h) + 4 s h (norms); scale the MLP part.
    let per_layer = (s * h * (15.0 + 19.0 * mlp_scale)) * b / 2.0 + 5.0 * a * s * s * b / 2.0;
    let logits = s * f64::from(c.vocab_size) * 4.0 * 2.0;
    (rows as f64 * (per_layer * layers as f64 + logits)) as u64
}

/// The memory the activations may take: `memory_budget_gb`, else half of the device's (on the CPU, the
/// machine's RAM from /proc/meminfo).
pub fn budget_bytes(configured_gb: Option<f64>) -> u64 {
    if let Some(gb) = configured_gb {
        return (gb * 1e9) as u64;
    }
    let device = device_memory_bytes();
    device / 2
}

fn device_memory_bytes() -> u64 {
    // MLX reports the GPU's recommended working set as its memory limit; on the CPU it is RAM-based too.
    if let Ok(limit) = mlx_rs::memory::memory_limit() {
        if limit > 0 {
            return limit as u64;
        }
    }
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map_or(8 << 30, |kb| kb * 1024)
}

/// The decision and a line explaining it.
pub fn decide(mode: Checkpointing, estimate: u64, budget: u64) -> (bool, String) {
    let gb = |b: u64| b as f64 / 1e9;
    match mode {
        Checkpointing::On => (true, "gradient checkpointing on (configured)".into()),
        Checkpointing::Off => (false, "gradient checkpointing off (configured)".into()),
        Checkpointing::Auto if estimate > budget => (
            true,
            format!("gradient checkpointing on: activations ~{:.2} GB exceed the {:.2} GB budget", gb(estimate), gb(budget)),
        ),
        Checkpointing::Auto => (
            false,
            format!("gradient checkpointing off: activations ~{:.2} GB fit the {:.2} GB budget", gb(estimate), gb(budget)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::RopeScaling;

    fn config() -> TransformerConfig {
        TransformerConfig {
            model_type: "llama".into(),
            hidden_size: 4096,
            num_hidden_layers: 32,
            intermediate_size: 16384,
            num_attention_heads: 32,
            num_key_value_heads: 32,
            head_dim: 128,
            vocab_size: 32000,
            rms_norm_eps: 1e-5,
            rope_theta: 1e4,
            rope_scaling: RopeScaling::None,
            tie_word_embeddings: false,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
        }
    }

    #[test]
    fn estimate_matches_the_papers_formula_for_a_4h_mlp() {
        // With intermediate = 4h the per-layer term is exactly s·h·34·b/2 + 5·a·s²·b/2 (b = 2 bytes).
        let c = config();
        let (s, h, a) = (2048.0, 4096.0, 32.0);
        let per_layer = s * h * 34.0 + 5.0 * a * s * s;
        let logits = s * 32000.0 * 8.0;
        assert_eq!(activation_bytes(&c, 1, 2048, 32, 2), (per_layer * 32.0 + logits) as u64);
        assert_eq!(activation_bytes(&c, 4, 2048, 32, 2), 4 * activation_bytes(&c, 1, 2048, 32, 2));
    }

    #[test]
    fn explicit_settings_win_and_auto_compares_with_the_budget() {
        assert!(decide(Checkpointing::On, 1, 100).0);
        assert!(!decide(Checkpointing::Off, 100, 1).0);
        assert!(decide(Checkpointing::Auto, 101, 100).0);
        assert!(!decide(Checkpointing::Auto, 99, 100).0);
        assert_eq!(budget_bytes(Some(2.5)), 2_500_000_000);
    }
}
