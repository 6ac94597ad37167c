//! Direct preference optimization and its pairwise variants (TRL's `loss_type`), on the reward margin
//! h = Δ(y_w) − Δ(y_l) with Δ = ℓ_θ − ℓ_ref summed over completion tokens:
//! - `sigmoid`: −(1−ε)·log σ(βh) − ε·log σ(−βh) (ε = `label_smoothing`, conservative DPO; ε = 0 is DPO)
//! - `hinge`: max(0, 1 − βh) (SLiC)
//! - `ipo`: (h̄ − 1/(2β))² with per-token-mean log-ratios h̄ = Δ(y_w)/|y_w| − Δ(y_l)/|y_l|
//! - `robust`: [−(1−ε)·log σ(βh) + ε·log σ(−βh)] / (1 − 2ε)
//!
//! averaged over pairs. `reference_free = true` takes ℓ_ref ≡ 0 and skips the reference forward.

use serde::Deserialize;
use sdk::{
    from_table,
    mlx_rs::{nn::log_sigmoid, nn::relu, Array},
    register_loss, Loss, LossInputs, LossOutput, Plugin, PluginError, Requirements,
};

use crate::scores::{halves, pair_metrics, pairs, row_counts, row_sums, smoothed_logistic};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpoType {
    Sigmoid,
    Hinge,
    Ipo,
    Robust,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dpo {
    #[serde(default = "Dpo::default_type")]
    loss_type: DpoType,
    #[serde(default = "Dpo::default_beta")]
    beta: f32,
    #[serde(default)]
    label_smoothing: f32,
    #[serde(default)]
    reference_free: bool,
}

impl Dpo {
    fn default_type() -> DpoType {
        DpoType::Sigmoid
    }

    fn default_beta() -> f32 {
        0.1
    }

    pub fn new(loss_type: DpoType, beta: f32, label_smoothing: f32) -> Result<Self, PluginError> {
        Dpo { loss_type, beta, label_smoothing, reference_free: false }.checked()
    }

    fn checked(self) -> Result<Self, PluginError> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(PluginError::Config(format!("`beta` must be positive, got {}", self.beta)));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(PluginError::Config(format!("`label_smoothing` must be in [0, 0.5), got {}", self.label_smoothing)));
        }
        if self.label_smoothing > 0.0 && matches!(self.loss_type, DpoType::Hinge | DpoType::Ipo) {
            return Err(PluginError::Config("`label_smoothing` applies to loss_type sigmoid and robust only".into()));
        }
        Ok(self)
    }
}

impl Plugin for Dpo {
    const NAME: &'static str = "dpo";
    const SUMMARY: &'static str = "DPO on preference pairs: loss_type sigmoid | hinge | ipo | robust, beta, label_smoothing";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        from_table::<Dpo>(config)?.checked()
    }
}

impl Loss for Dpo {
    fn requirements(&self) -> Requirements {
        Requirements { pairs: true, reference: !self.reference_free, ..Requirements::default() }
    }

    fn forward(&self, inputs: &LossInputs<'_>) -> Result<LossOutput, PluginError> {
        let p = pairs(inputs, "dpo")?;
        let policy = row_sums(inputs.policy_logps, inputs.mask)?;
        let ratio = if self.reference_free {
            policy.clone()
        } else {
            policy.subtract(row_sums(LossInputs::require(inputs.reference_logps, "reference_logps")?, inputs.mask)?)?
        };
        let (chosen, rejected) = halves(&ratio, p);
        let beta = Array::from_f32(self.beta);
        let h = chosen.subtract(&rejected)?;
        let eps = self.label_smoothing;
        let losses = match self.loss_type {
            DpoType::Sigmoid => smoothed_logistic(&h.multiply(&beta)?, eps)?,
            DpoType::Hinge => relu(Array::from_f32(1.0).subtract(h.multiply(&beta)?)?)?,
            DpoType::Ipo => {
                let (nw, nl) = halves(&row_counts(inputs.mask)?, p);
                let mean_h = chosen.divide(&nw)?.subtract(rejected.divide(&nl)?)?;
                mean_h.subtract(Array::from_f32(1.0 / (2.0 * self.beta)))?.square()?
            }
            DpoType::Robust => {
                let z = h.multiply(&beta)?;
                let flipped = log_sigmoid(z.negative()?)?.multiply(Array::from_f32(eps))?;
                log_sigmoid(&z)?.multiply(Array::from_f32(-(1.0 - eps)))?.add(flipped)?.divide(Array::from_f32(1.0 - 2.0 * eps))?
            }
        };
        let (lw, ll) = halves(&policy, p);
        let metrics = pair_metrics(&chosen.multiply(&beta)?, &rejected.multiply(&beta)?, &lw, &ll)?;
        Ok(LossOutput { loss: losses.mean(None)?, metrics })
    }
}

register_loss!(Dpo);
