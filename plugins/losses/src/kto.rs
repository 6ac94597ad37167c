//! KTO (TRL's kto_trainer): per row r = ℓ_θ(y|x) − ℓ_ref(y|x) over completion tokens, and the reference point
//! z₀ = max(0, mean over the batch of [ℓ_θ(y′|x) − ℓ_ref(y′|x)]) on mismatched prompt/completion pairs,
//! without gradient. Desirable rows: λ_D·(1 − σ(β(r − z₀))); undesirable: λ_U·(1 − σ(β(z₀ − r))); the loss
//! is their mean over all rows.

use serde::Deserialize;
use sdk::{
    from_table,
    mlx_rs::{ops, stop_gradient, Array},
    register_loss, Loss, LossInputs, LossOutput, Plugin, PluginError, Requirements,
};

use crate::scores::row_sums;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kto {
    #[serde(default = "Kto::default_beta")]
    beta: f32,
    #[serde(default = "Kto::default_weight")]
    desirable_weight: f32,
    #[serde(default = "Kto::default_weight")]
    undesirable_weight: f32,
}

impl Kto {
    fn default_beta() -> f32 {
        0.1
    }

    fn default_weight() -> f32 {
        1.0
    }

    pub fn new(beta: f32, desirable_weight: f32, undesirable_weight: f32) -> Result<Self, PluginError> {
        Kto { beta, desirable_weight, undesirable_weight }.checked()
    }

    fn checked(self) -> Result<Self, PluginError> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(PluginError::Config(format!("`beta` must be positive, got {}", self.beta)));
        }
        for (key, w) in [("desirable_weight", self.desirable_weight), ("undesirable_weight", self.undesirable_weight)] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(PluginError::Config(format!("`{key}` must be non-negative, got {w}")));
            }
        }
        Ok(self)
    }
}

impl Plugin for Kto {
    const NAME: &'static str = "kto";
    const SUMMARY: &'static str = "KTO on labelled completions with the batch KL reference point: beta, desirable/undesirable weights";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        from_table::<Kto>(config)?.checked()
    }
}

/// Σ x·w / max(Σ w, 1): a mean over the rows `w` selects, 0 when it selects none.
fn mean_where(x: &Array, w: &Array) -> Result<Array, sdk::mlx_rs::error::Exception> {
    x.multiply(w)?.sum(None)?.divide(ops::maximum(w.sum(None)?, Array::from_f32(1.0))?)
}

impl Loss for Kto {
    fn requirements(&self) -> Requirements {
        Requirements { reference: true, labels: true, kl_pairs: true, ..Requirements::default() }
    }

    fn forward(&self, inputs: &LossInputs<'_>) -> Result<LossOutput, PluginError> {
        let labels = LossInputs::require(inputs.labels, "labels")?;
        let reference = LossInputs::require(inputs.reference_logps, "reference_logps")?;
        let kl_policy = LossInputs::require(inputs.kl_policy_logps, "kl_policy_logps")?;
        let kl_reference = LossInputs::require(inputs.kl_reference_logps, "kl_reference_logps")?;
        let kl_mask = LossInputs::require(inputs.kl_mask, "kl_mask")?;

        let policy = row_sums(inputs.policy_logps, inputs.mask)?;
        let r = policy.subtract(row_sums(reference, inputs.mask)?)?;
        let kl = row_sums(kl_policy, kl_mask)?.subtract(row_sums(kl_reference, kl_mask)?)?.mean(None)?;
        let z0 = stop_gradient(&ops::maximum(&kl, Array::from_f32(0.0))?)?;
        let beta = Array::from_f32(self.beta);
        let one = Array::from_f32(1.0);
        let desirable = one.subtract(ops::sigmoid(r.subtract(&z0)?.multiply(&beta)?)?)?.multiply(Array::from_f32(self.desirable_weight))?;
        let undesirable = one.subtract(ops::sigmoid(z0.subtract(&r)?.multiply(&beta)?)?)?.multiply(Array::from_f32(self.undesirable_weight))?;
        let undesired = one.subtract(labels)?;
        let loss = desirable.multiply(labels)?.add(undesirable.multiply(&undesired)?)?.mean(None)?;
        let rewards = r.multiply(&beta)?;
        let chosen = mean_where(&rewards, labels)?;
        let rejected = mean_where(&rewards, &undesired)?;
        let metrics = vec![
            ("rewards/chosen".to_owned(), chosen.clone()),
            ("rewards/rejected".to_owned(), rejected.clone()),
            ("rewards/margins".to_owned(), chosen.subtract(&rejected)?),
            ("kl".to_owned(), z0),
            ("logps/chosen".to_owned(), mean_where(&policy, labels)?),
            ("logps/rejected".to_owned(), mean_where(&policy, &undesired)?),
        ];
        Ok(LossOutput { loss, metrics })
    }
}

register_loss!(Kto);
