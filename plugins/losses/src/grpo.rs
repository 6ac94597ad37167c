//! GRPO's clipped surrogate (TRL's `_compute_loss`). Per completion token, with ρ = exp(log π_θ − log π_old):
//! s = −min(ρ·A, clip(ρ, 1 − ε, 1 + ε_high)·A), plus β·k with the k3 estimator
//! k = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1 when β > 0 (β = 0 never runs a reference).
//! Aggregation over the completion mask m (`loss_type`):
//! - `grpo`: mean over completions of Σ_t m·ℓ / Σ_t m
//! - `bnpo` and `dapo`: Σ m·ℓ / Σ m over the batch (the host weighs micro-batches by their tokens, so
//!   accumulated steps normalize by all of the step's tokens, DAPO's rule)
//! - `dr_grpo`: Σ m·ℓ / (B · `max_completion_length`)
//!
//! Defaults as TRL's: ε 0.2, ε_high = ε, β 0, `dapo`.

use serde::Deserialize;
use sdk::{
    from_table,
    mlx_rs::{error::Exception, ops, Array, Dtype},
    register_loss, Loss, LossInputs, LossOutput, Plugin, PluginError, Requirements,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrpoType {
    Grpo,
    Bnpo,
    DrGrpo,
    Dapo,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "Config::default_type")]
    loss_type: GrpoType,
    #[serde(default = "Config::default_epsilon")]
    epsilon: f32,
    epsilon_high: Option<f32>,
    #[serde(default)]
    beta: f32,
    max_completion_length: Option<usize>,
}

impl Config {
    fn default_type() -> GrpoType {
        GrpoType::Dapo
    }

    fn default_epsilon() -> f32 {
        0.2
    }
}

#[derive(Debug, Clone)]
pub struct Grpo {
    loss_type: GrpoType,
    epsilon: f32,
    epsilon_high: f32,
    beta: f32,
    max_completion_length: Option<usize>,
}

impl Grpo {
    pub fn new(loss_type: GrpoType, epsilon: f32, epsilon_high: Option<f32>, beta: f32, max_completion_length: Option<usize>) -> Result<Self, PluginError> {
        if !(epsilon.is_finite() && epsilon > 0.0 && epsilon < 1.0) {
            return Err(PluginError::Config(format!("`epsilon` must be in (0, 1), got {epsilon}")));
        }
        let epsilon_high = epsilon_high.unwrap_or(epsilon);
        if !(epsilon_high.is_finite() && epsilon_high > 0.0) {
            return Err(PluginError::Config(format!("`epsilon_high` must be positive, got {epsilon_high}")));
        }
        if !(beta.is_finite() && beta >= 0.0) {
            return Err(PluginError::Config(format!("`beta` must be non-negative, got {beta}")));
        }
        match (loss_type, max_completion_length) {
            (GrpoType::DrGrpo, None) => return Err(PluginError::Config("`max_completion_length` is needed by loss_type dr_grpo (it divides by B × that length)".into())),
            (GrpoType::DrGrpo, Some(0)) => return Err(PluginError::Config("`max_completion_length` must be at least 1".into())),
            (GrpoType::DrGrpo, Some(_)) => {}
            (_, Some(_)) => return Err(PluginError::Config("`max_completion_length` applies to loss_type dr_grpo only".into())),
            (_, None) => {}
        }
        Ok(Grpo { loss_type, epsilon, epsilon_high, beta, max_completion_length })
    }

    /// The `max_completion_length` this loss divides by (dr_grpo), for the host to check against its rollouts.
    pub fn max_completion_length(&self) -> Option<usize> {
        self.max_completion_length
    }
}

impl Plugin for Grpo {
    const NAME: &'static str = "grpo";
    const SUMMARY: &'static str = "GRPO clipped surrogate with k3 KL: loss_type grpo | bnpo | dr_grpo | dapo, epsilon, epsilon_high, beta";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let c: Config = from_table(config)?;
        Grpo::new(c.loss_type, c.epsilon, c.epsilon_high, c.beta, c.max_completion_length)
    }
}

/// Σ x·m / max(Σ m, 1).
fn masked_mean(x: &Array, m: &Array) -> Result<Array, Exception> {
    x.multiply(m)?.sum(None)?.divide(ops::maximum(m.sum(None)?, Array::from_f32(1.0))?)
}

impl Loss for Grpo {
    fn requirements(&self) -> Requirements {
        Requirements {
            old_policy: true,
            advantages: true,
            reference: self.beta > 0.0,
            // grpo averages per completion, dr_grpo divides by a fixed B × length; bnpo and dapo by the tokens.
            row_mean: matches!(self.loss_type, GrpoType::Grpo | GrpoType::DrGrpo),
            ..Requirements::default()
        }
    }

    fn forward(&self, inputs: &LossInputs<'_>) -> Result<LossOutput, PluginError> {
        let logp = inputs.policy_logps;
        let m = inputs.mask;
        let old = LossInputs::require(inputs.old_logps, "old_logps")?;
        let advantages = LossInputs::require(inputs.advantages, "advantages")?.expand_dims(-1)?;
        let ratio = logp.subtract(old)?.exp()?;
        let low = Array::from_f32(1.0 - self.epsilon);
        let high = Array::from_f32(1.0 + self.epsilon_high);
        let clipped = ops::clip(&ratio, (&low, &high))?;
        let surrogate = ops::minimum(ratio.multiply(&advantages)?, clipped.multiply(&advantages)?)?.negative()?;
        let mut metrics = Vec::new();
        let per_token = if self.beta > 0.0 {
            let reference = LossInputs::require(inputs.reference_logps, "reference_logps")?;
            let d = reference.subtract(logp)?;
            let k3 = d.exp()?.subtract(&d)?.subtract(Array::from_f32(1.0))?;
            metrics.push(("kl".to_owned(), masked_mean(&k3, m)?));
            surrogate.add(k3.multiply(Array::from_f32(self.beta))?)?
        } else {
            surrogate
        };
        let loss = match self.loss_type {
            GrpoType::Grpo => {
                let per_row = per_token.multiply(m)?.sum_axis(-1, None)?.divide(ops::maximum(m.sum_axis(-1, None)?, Array::from_f32(1.0))?)?;
                per_row.mean(None)?
            }
            GrpoType::Bnpo | GrpoType::Dapo => masked_mean(&per_token, m)?,
            GrpoType::DrGrpo => {
                let rows = logp.shape()[0] as f32;
                let length = self.max_completion_length.unwrap_or(1) as f32;
                per_token.multiply(m)?.sum(None)?.divide(Array::from_f32(rows * length))?
            }
        };
        // Tokens where clipping took the gradient away (TRL's clip ratio: low side with A < 0, high side with A > 0).
        let zero = Array::from_f32(0.0);
        let low_clip = ratio.lt(&low)?.logical_and(&advantages.lt(&zero)?)?;
        let high_clip = ratio.gt(&high)?.logical_and(&advantages.gt(&zero)?)?;
        let region = low_clip.logical_or(&high_clip)?.as_dtype(Dtype::Float32)?;
        metrics.push(("clip_ratio/low_mean".to_owned(), masked_mean(&low_clip.as_dtype(Dtype::Float32)?, m)?));
        metrics.push(("clip_ratio/high_mean".to_owned(), masked_mean(&high_clip.as_dtype(Dtype::Float32)?, m)?));
        metrics.push(("clip_ratio/region_mean".to_owned(), masked_mean(&region, m)?));
        metrics.push(("ratio".to_owned(), masked_mean(&ratio, m)?));
        Ok(LossOutput { loss, metrics })
    }
}

register_loss!(Grpo);
