//! GRPO's clipped surrogate (TRL's `_compute_loss`). With the log-ratio r = log π_θ − log π_old per completion
//! token and the importance weight w = exp(r) (`importance_sampling_level = "token"`) or GSPO's w = exp(Σ_t m·r /
//! Σ_t m), one weight per completion broadcast over its tokens (`"sequence"`; its gradient reaches every
//! token through the mean): s = −min(w·A, clip(w, 1 − ε, 1 + ε_high)·A), plus β·k with the k3 estimator
//! k = exp(d) − d − 1, d = log π_ref − log π_θ (clipped to ±`kl_log_ratio_clip` when set: exp(d) overflows
//! float32 once the policy has drifted ~88 nats from the reference), when β > 0 (β = 0 never runs a reference).
//! Aggregation over the completion mask m (`loss_type`):
//! - `grpo`: mean over completions of Σ_t m·ℓ / Σ_t m
//! - `bnpo` and `dapo`: Σ m·ℓ / Σ m over the batch (the host weighs micro-batches by their tokens, so
//!   accumulated steps normalize by all of the step's tokens, DAPO's rule)
//! - `dr_grpo`: Σ m·ℓ / (B · `max_completion_length`)
//!
//! Defaults as TRL's: ε 0.2, ε_high = ε, β 0, `dapo`, token-level weights, no KL clip.

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

/// Where the importance weight is taken: per token (GRPO) or per completion (GSPO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportanceLevel {
    #[default]
    Token,
    Sequence,
}

/// The `[loss] kind = "grpo"` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoConfig {
    #[serde(default = "GrpoConfig::default_type")]
    pub loss_type: GrpoType,
    #[serde(default = "GrpoConfig::default_epsilon")]
    pub epsilon: f32,
    pub epsilon_high: Option<f32>,
    #[serde(default)]
    pub beta: f32,
    pub max_completion_length: Option<usize>,
    #[serde(default)]
    pub importance_sampling_level: ImportanceLevel,
    pub kl_log_ratio_clip: Option<f32>,
}

impl GrpoConfig {
    fn default_type() -> GrpoType {
        GrpoType::Dapo
    }

    fn default_epsilon() -> f32 {
        0.2
    }
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            loss_type: Self::default_type(),
            epsilon: Self::default_epsilon(),
            epsilon_high: None,
            beta: 0.0,
            max_completion_length: None,
            importance_sampling_level: ImportanceLevel::Token,
            kl_log_ratio_clip: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Grpo {
    loss_type: GrpoType,
    epsilon: f32,
    epsilon_high: f32,
    beta: f32,
    max_completion_length: Option<usize>,
    level: ImportanceLevel,
    kl_clip: Option<f32>,
}

impl Grpo {
    pub fn new(c: GrpoConfig) -> Result<Self, PluginError> {
        let GrpoConfig { loss_type, epsilon, epsilon_high, beta, max_completion_length, importance_sampling_level, kl_log_ratio_clip } = c;
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
        match kl_log_ratio_clip {
            Some(c) if !(c.is_finite() && c > 0.0) => return Err(PluginError::Config(format!("`kl_log_ratio_clip` must be positive, got {c}"))),
            Some(_) if beta == 0.0 => return Err(PluginError::Config("`kl_log_ratio_clip` clips the KL term, which `beta` = 0 leaves out".into())),
            _ => {}
        }
        match (loss_type, max_completion_length) {
            (GrpoType::DrGrpo, None) => return Err(PluginError::Config("`max_completion_length` is needed by loss_type dr_grpo (it divides by B × that length)".into())),
            (GrpoType::DrGrpo, Some(0)) => return Err(PluginError::Config("`max_completion_length` must be at least 1".into())),
            (GrpoType::DrGrpo, Some(_)) => {}
            (_, Some(_)) => return Err(PluginError::Config("`max_completion_length` applies to loss_type dr_grpo only".into())),
            (_, None) => {}
        }
        Ok(Grpo { loss_type, epsilon, epsilon_high, beta, max_completion_length, level: importance_sampling_level, kl_clip: kl_log_ratio_clip })
    }

    /// The `max_completion_length` this loss divides by (dr_grpo), for the host to check against its rollouts.
    pub fn max_completion_length(&self) -> Option<usize> {
        self.max_completion_length
    }
}

impl Plugin for Grpo {
    const NAME: &'static str = "grpo";
    const SUMMARY: &'static str =
        "GRPO/GSPO clipped surrogate with k3 KL: loss_type grpo | bnpo | dr_grpo | dapo, epsilon, epsilon_high, beta, importance_sampling_level, kl_log_ratio_clip";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        Grpo::new(from_table(config)?)
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
        let log_ratio = logp.subtract(old)?;
        let ratio = match self.level {
            ImportanceLevel::Token => log_ratio.exp()?,
            // One weight per completion, [B, 1]: the exponential of its tokens' mean log-ratio.
            ImportanceLevel::Sequence => {
                let tokens = ops::maximum(m.sum_axis(-1, true)?, Array::from_f32(1.0))?;
                log_ratio.multiply(m)?.sum_axis(-1, true)?.divide(&tokens)?.exp()?
            }
        };
        let low = Array::from_f32(1.0 - self.epsilon);
        let high = Array::from_f32(1.0 + self.epsilon_high);
        let clipped = ops::clip(&ratio, (&low, &high))?;
        let surrogate = ops::minimum(ratio.multiply(&advantages)?, clipped.multiply(&advantages)?)?.negative()?;
        let mut metrics = Vec::new();
        let per_token = if self.beta > 0.0 {
            let reference = LossInputs::require(inputs.reference_logps, "reference_logps")?;
            let mut d = reference.subtract(logp)?;
            if let Some(c) = self.kl_clip {
                d = ops::clip(&d, (Array::from_f32(-c), Array::from_f32(c)))?;
            }
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
        // A sequence-level weight counts once for each of its completion's tokens.
        let ratio = ops::broadcast_to(&ratio, m.shape())?;
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
