//! SimPO: L = −(1−ε)·log σ(z) − ε·log σ(−z) with z = β·(ℓ̄_θ(y_w) − ℓ̄_θ(y_l)) − γ, per-token-mean log-probs,
//! no reference; the margin γ is not scaled by β. `sft_weight` adds α·NLL(y_w) (CPO's behaviour-cloning
//! term; 0, pure SimPO, by default). Defaults as TRL's CPO trainer: β 0.1, γ 0.5.

use serde::Deserialize;
use sdk::{
    from_table,
    mlx_rs::Array,
    register_loss, Loss, LossInputs, LossOutput, Plugin, PluginError, Requirements,
};

use crate::scores::{chosen_nll, halves, pair_metrics, pairs, row_counts, row_sums, smoothed_logistic};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Simpo {
    #[serde(default = "Simpo::default_beta")]
    beta: f32,
    #[serde(default = "Simpo::default_gamma")]
    gamma: f32,
    #[serde(default)]
    label_smoothing: f32,
    #[serde(default)]
    sft_weight: f32,
}

impl Simpo {
    fn default_beta() -> f32 {
        0.1
    }

    fn default_gamma() -> f32 {
        0.5
    }

    pub fn new(beta: f32, gamma: f32, label_smoothing: f32, sft_weight: f32) -> Result<Self, PluginError> {
        Simpo { beta, gamma, label_smoothing, sft_weight }.checked()
    }

    fn checked(self) -> Result<Self, PluginError> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(PluginError::Config(format!("`beta` must be positive, got {}", self.beta)));
        }
        if !self.gamma.is_finite() {
            return Err(PluginError::Config(format!("`gamma` must be a finite number, got {}", self.gamma)));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(PluginError::Config(format!("`label_smoothing` must be in [0, 0.5), got {}", self.label_smoothing)));
        }
        if !(self.sft_weight.is_finite() && self.sft_weight >= 0.0) {
            return Err(PluginError::Config(format!("`sft_weight` must be non-negative, got {}", self.sft_weight)));
        }
        Ok(self)
    }
}

impl Plugin for Simpo {
    const NAME: &'static str = "simpo";
    const SUMMARY: &'static str = "SimPO: length-normalized preference loss with margin gamma, no reference";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        from_table::<Simpo>(config)?.checked()
    }
}

impl Loss for Simpo {
    fn requirements(&self) -> Requirements {
        Requirements { pairs: true, ..Requirements::default() }
    }

    fn forward(&self, inputs: &LossInputs<'_>) -> Result<LossOutput, PluginError> {
        let p = pairs(inputs, "simpo")?;
        let mean_logps = row_sums(inputs.policy_logps, inputs.mask)?.divide(row_counts(inputs.mask)?)?;
        let (aw, al) = halves(&mean_logps, p);
        let beta = Array::from_f32(self.beta);
        let z = aw.subtract(&al)?.multiply(&beta)?.subtract(Array::from_f32(self.gamma))?;
        let mut loss = smoothed_logistic(&z, self.label_smoothing)?.mean(None)?;
        let mut metrics = pair_metrics(&aw.multiply(&beta)?, &al.multiply(&beta)?, &aw, &al)?;
        if self.sft_weight > 0.0 {
            let nll = chosen_nll(inputs, p)?;
            loss = loss.add(nll.multiply(Array::from_f32(self.sft_weight))?)?;
            metrics.push(("nll_loss".to_owned(), nll));
        }
        Ok(LossOutput { loss, metrics })
    }
}

register_loss!(Simpo);
