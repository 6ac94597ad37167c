//! Supervised fine-tuning: the mean negative log-likelihood of the supervised target tokens,
//! L = −Σ m·log p / Σ m (mlx-lm's `default_loss` with a strict mask: padding is never a target).
//! Option `dft` weights each token's −log p by its stop-gradient probability (mlx-lm-lora's and TRL's DFT).

use serde::Deserialize;
use sdk::{
    from_table,
    mlx_rs::{ops, stop_gradient, Array},
    register_loss, Loss, LossInputs, LossOutput, Plugin, PluginError, Requirements,
};

use crate::masked_sum;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sft {
    #[serde(default)]
    dft: bool,
}

impl Plugin for Sft {
    const NAME: &'static str = "sft";
    const SUMMARY: &'static str = "mean cross-entropy over supervised tokens (dft = true: probability-weighted)";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        from_table(config)
    }
}

impl Loss for Sft {
    fn requirements(&self) -> Requirements {
        Requirements::default()
    }

    fn forward(&self, inputs: &LossInputs<'_>) -> Result<LossOutput, PluginError> {
        let tokens = ops::maximum(inputs.mask.sum(None)?, Array::from_f32(1.0))?;
        let nll = inputs.policy_logps.negative()?;
        let weighted = if self.dft { nll.multiply(stop_gradient(&inputs.policy_logps.exp()?)?)? } else { nll.clone() };
        let loss = masked_sum(&weighted, inputs.mask)?.divide(&tokens)?;
        let mean_nll = masked_sum(&nll, inputs.mask)?.divide(&tokens)?;
        Ok(LossOutput { loss, metrics: vec![("nll".to_owned(), mean_nll)] })
    }
}

register_loss!(Sft);

#[cfg(test)]
mod tests {
    use sdk::mlx_rs::{transforms::value_and_grad, Array};

    use super::*;

    fn inputs() -> (Array, Array) {
        (Array::from_slice(&[-1.0f32, -2.0, -0.5, -3.0], &[2, 2]), Array::from_slice(&[1.0f32, 0.0, 1.0, 1.0], &[2, 2]))
    }

    #[test]
    fn mean_nll_over_supervised_tokens() {
        let (logps, mask) = inputs();
        let out = Sft { dft: false }.forward(&LossInputs::new(&logps, &mask)).unwrap();
        // (1 + 0.5 + 3) / 3
        assert!((out.loss.item_exact::<f32>() - 1.5).abs() < 1e-6);
        let dft = Sft { dft: true }.forward(&LossInputs::new(&logps, &mask)).unwrap();
        let expected = (1.0 * (-1f32).exp() + 0.5 * (-0.5f32).exp() + 3.0 * (-3f32).exp()) / 3.0;
        assert!((dft.loss.item_exact::<f32>() - expected).abs() < 1e-6);
    }

    #[test]
    fn gradient_is_minus_mask_over_count() {
        let (logps, mask) = inputs();
        let mut vg = value_and_grad(|x: &[Array]| -> Result<Vec<Array>, sdk::mlx_rs::error::Exception> {
            let out = Sft { dft: false }.forward(&LossInputs::new(&x[0], &mask)).map_err(|e| sdk::mlx_rs::error::Exception::custom(e.to_string()))?;
            Ok(vec![out.loss])
        });
        let (_, g) = vg(&[logps]).unwrap();
        let third = -1.0f32 / 3.0;
        assert_eq!(g[0].as_slice::<f32>(), &[third, 0.0, third, third]);
    }
}
