//! ORPO: L = NLL(y_w) + λ·mean[−log σ(log-odds(y_w) − log-odds(y_l))], with p̄ = ℓ̄_θ(y|x) the per-token mean
//! log-prob of a completion and log-odds(y) = p̄ − log(1 − e^{p̄}) (a stable log1mexp). NLL is the token mean
//! over the chosen completions; λ = `beta`. No reference model.

use serde::Deserialize;
use sdk::{
    from_table,
    mlx_rs::{error::Exception, nn::log_sigmoid, ops, Array},
    register_loss, Loss, LossInputs, LossOutput, Plugin, PluginError, Requirements,
};

use crate::scores::{chosen_nll, halves, mean, pair_metrics, pairs, row_counts, row_sums};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Orpo {
    #[serde(default = "Orpo::default_beta")]
    beta: f32,
}

impl Orpo {
    fn default_beta() -> f32 {
        0.1
    }

    pub fn new(beta: f32) -> Result<Self, PluginError> {
        Orpo { beta }.checked()
    }

    fn checked(self) -> Result<Self, PluginError> {
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return Err(PluginError::Config(format!("`beta` (λ) must be a non-negative number, got {}", self.beta)));
        }
        Ok(self)
    }
}

/// log(1 − eˣ) for x < 0 without cancellation: log(−expm1 x) near 0, log1p(−eˣ) below −ln 2.
fn log1mexp(x: &Array) -> Result<Array, Exception> {
    let near = ops::expm1(x)?.negative()?.log()?;
    let far = ops::log1p(x.exp()?.negative()?)?;
    ops::select(&x.gt(Array::from_f32(-std::f32::consts::LN_2))?, &near, &far)
}

impl Plugin for Orpo {
    const NAME: &'static str = "orpo";
    const SUMMARY: &'static str = "ORPO: chosen NLL + beta · odds-ratio loss on preference pairs, no reference";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        from_table::<Orpo>(config)?.checked()
    }
}

impl Loss for Orpo {
    fn requirements(&self) -> Requirements {
        Requirements { pairs: true, ..Requirements::default() }
    }

    fn forward(&self, inputs: &LossInputs<'_>) -> Result<LossOutput, PluginError> {
        let p = pairs(inputs, "orpo")?;
        // A completion of probability 1 has infinite odds; one ulp below keeps the loss finite.
        let mean_logps = ops::minimum(row_sums(inputs.policy_logps, inputs.mask)?.divide(row_counts(inputs.mask)?)?, Array::from_f32(-1e-6))?;
        let log_odds = mean_logps.subtract(log1mexp(&mean_logps)?)?;
        let (ow, ol) = halves(&log_odds, p);
        let ratio = ow.subtract(&ol)?;
        let odds_loss = mean(&log_sigmoid(&ratio)?.negative()?)?;
        let nll = chosen_nll(inputs, p)?;
        let loss = nll.add(odds_loss.multiply(Array::from_f32(self.beta))?)?;
        let (pw, pl) = halves(&mean_logps, p);
        let beta = Array::from_f32(self.beta);
        let mut metrics = pair_metrics(&pw.multiply(&beta)?, &pl.multiply(&beta)?, &pw, &pl)?;
        // TRL's names: `log_odds_chosen` is the mean log-odds difference, `log_odds_ratio` the mean log σ of it.
        metrics.push(("nll_loss".to_owned(), nll));
        metrics.push(("log_odds_ratio".to_owned(), mean(&log_sigmoid(&ratio)?)?));
        metrics.push(("log_odds_chosen".to_owned(), mean(&ratio)?));
        Ok(LossOutput { loss, metrics })
    }
}

register_loss!(Orpo);
