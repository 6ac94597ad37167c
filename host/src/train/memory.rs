//! How many layers to checkpoint: explicit on/off wins (`on` with an optional layer count); `auto` checkpoints
//! the fewest layers that bring an estimate of the activations a training step keeps for its backward pass
//! within a memory budget (a checkpointed layer keeps only its input, and costs one more forward pass).
//!
//! The estimate per layer and sequence of s tokens at hidden size h, a heads and b bytes per element follows
//! Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"):
//! s·h·34·b/2 + 5·a·s²·b/2, with the MLP term scaled by intermediate/(4h) (their 4h MLP). Only the layers from the
//! first adapted one to the last keep activations (nothing before them needs a gradient), the logits'
//! float32 log-softmax (s × vocabulary) counts once, and so does the trainable parameters' training state
//! (gradients, optimizer moments), which decides the budget left in full fine-tuning.

use crate::{config::Checkpointing, model::TransformerConfig};

/// The activations a step keeps, per layer and in total.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Bytes one layer keeps without checkpointing.
    pub per_layer: u64,
    /// Bytes a checkpointed layer keeps (its input).
    pub per_checkpointed_layer: u64,
    /// The logits' float32 log-softmax.
    pub logits: u64,
    /// Layers that keep activations (from the first adapted one to the last).
    pub layers: usize,
    /// The trainable parameters' training state: gradients being accumulated, the step's gradients and the
    /// optimizer's moments.
    pub state: u64,
}

impl Estimate {
    /// Bytes with the first `checkpointed` of the layers checkpointed.
    pub fn bytes(&self, checkpointed: usize) -> u64 {
        let n = checkpointed.min(self.layers) as u64;
        self.per_layer * (self.layers as u64 - n) + self.per_checkpointed_layer * n + self.logits + self.state
    }

    pub fn with_state(self, state: u64) -> Self {
        Estimate { state, ..self }
    }
}

/// Copies of the trainable parameters a step holds besides the parameters themselves: the accumulated
/// gradient, the micro-batch's gradient, and the optimizer's moments (Adam's two, SGD's momentum, Adafactor's
/// factored rows and columns, counted as one since they are far smaller than a matrix only for large ones).
pub fn state_copies(optimizer: &crate::config::OptimizerConfig) -> u64 {
    use crate::config::OptimizerKind;
    let moments = match optimizer.kind {
        OptimizerKind::Adamw | OptimizerKind::Adam => 2,
        OptimizerKind::Sgd => u64::from(optimizer.momentum.is_some_and(|m| m != 0.0)),
        OptimizerKind::Adafactor => 1,
    };
    2 + moments
}

/// The activations one step keeps for `rows` sequences of `seq` tokens through `layers` layers.
pub fn estimate(c: &TransformerConfig, rows: usize, seq: usize, layers: usize, dtype_bytes: usize) -> Estimate {
    let (s, h, a, b) = (seq as f64, f64::from(c.hidden_size), f64::from(c.num_attention_heads), dtype_bytes as f64);
    let mlp_scale = f64::from(c.intermediate_size) / (4.0 * h);
    // 34 s h = 11 s h (attention block) + 19 s h (MLP at 4h) + 4 s h (norms); scale the MLP part.
    let per_layer = (s * h * (15.0 + 19.0 * mlp_scale)) * b / 2.0 + 5.0 * a * s * s * b / 2.0;
    let logits = s * f64::from(c.vocab_size) * 4.0 * 2.0;
    let r = rows as f64;
    Estimate { per_layer: (r * per_layer) as u64, per_checkpointed_layer: (r * s * h * b) as u64, logits: (r * logits) as u64, layers, state: 0 }
}

/// Bytes of activations one step keeps without checkpointing.
pub fn activation_bytes(c: &TransformerConfig, rows: usize, seq: usize, layers: usize, dtype_bytes: usize) -> u64 {
    estimate(c, rows, seq, layers, dtype_bytes).bytes(0)
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

/// How many layers to checkpoint (`usize::MAX`: all), and a line explaining it. `layers` is `[train]
/// checkpoint_layers`, which goes with `on` only.
pub fn decide(mode: Checkpointing, layers: Option<usize>, estimate: &Estimate, budget: u64) -> (usize, String) {
    let gb = |b: u64| b as f64 / 1e9;
    match mode {
        Checkpointing::On => match layers {
            Some(n) => (n, format!("gradient checkpointing on for {n} of {} layers (configured)", estimate.layers)),
            None => (usize::MAX, "gradient checkpointing on (configured)".into()),
        },
        Checkpointing::Off => (0, "gradient checkpointing off (configured)".into()),
        Checkpointing::Auto => {
            let what = if estimate.state > 0 { "activations and training state" } else { "activations" };
            let full = estimate.bytes(0);
            if full <= budget {
                return (0, format!("gradient checkpointing off: {what} ~{:.2} GB fit the {:.2} GB budget", gb(full), gb(budget)));
            }
            match (1..=estimate.layers).find(|&n| estimate.bytes(n) <= budget) {
                Some(n) => (
                    n,
                    format!(
                        "gradient checkpointing on for {n} of {} layers: {what} ~{:.2} GB → ~{:.2} GB, within the {:.2} GB budget",
                        estimate.layers,
                        gb(full),
                        gb(estimate.bytes(n)),
                        gb(budget)
                    ),
                ),
                None => (
                    usize::MAX,
                    format!(
                        "gradient checkpointing on for every layer: {what} ~{:.2} GB → ~{:.2} GB, still over the {:.2} GB budget",
                        gb(full),
                        gb(estimate.bytes(estimate.layers)),
                        gb(budget)
                    ),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama-2-7B's shape, resolved as a checkpoint's config.json would be.
    fn config() -> TransformerConfig {
        let args: crate::model::HfArgs = serde_json::from_value(serde_json::json!({
            "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 16384,
            "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "rms_norm_eps": 1e-5
        }))
        .unwrap();
        crate::model::family_config(&args).unwrap()
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
    fn explicit_settings_win_and_auto_checkpoints_the_fewest_layers_that_fit() {
        // 10 layers of 100 bytes (10 when checkpointed) and 50 bytes of logits: 1050 bytes unchecked.
        let e = Estimate { per_layer: 100, per_checkpointed_layer: 10, logits: 50, layers: 10, state: 0 };
        assert_eq!(e.bytes(3), 700 + 30 + 50);
        assert_eq!(decide(Checkpointing::On, None, &e, 10_000).0, usize::MAX);
        assert_eq!(decide(Checkpointing::On, Some(4), &e, 10_000).0, 4);
        assert_eq!(decide(Checkpointing::Off, None, &e, 1).0, 0);
        assert_eq!(decide(Checkpointing::Auto, None, &e, 1050).0, 0);
        // 1050 − 90·n ≤ 800 first holds at n = 3.
        assert_eq!(decide(Checkpointing::Auto, None, &e, 800).0, 3);
        let (n, why) = decide(Checkpointing::Auto, None, &e, 100);
        assert_eq!(n, usize::MAX);
        assert!(why.contains("still over"), "{why}");
        assert_eq!(budget_bytes(Some(2.5)), 2_500_000_000);
        // Full fine-tuning's state (here 300 bytes) counts against the budget: 1050 + 300 − 90·n ≤ 1000 first
        // holds at n = 4, where without it no checkpointing was needed.
        let full = e.with_state(300);
        assert_eq!(full.bytes(0), 1350);
        assert_eq!(decide(Checkpointing::Auto, None, &full, 1050).0, 4);
    }
}
