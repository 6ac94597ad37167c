//! Example third-party plugins: an LR schedule, a loss, a reward and an environment, exported from a cdylib.

use sdk::{
    from_table,
    mlx_rs::{ops, Array},
    serde_json, EnvReply, EnvTurn, Environment, Loss, LossInputs, LossOutput, LrSchedule, Plugin, PluginError, Requirements, Reward,
    RewardBatch, ScheduleContext,
};
use serde::Deserialize;

/// lr / √(1 + step / timescale).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InverseSqrt {
    #[serde(default = "InverseSqrt::default_timescale")]
    timescale: f64,
}

impl InverseSqrt {
    fn default_timescale() -> f64 {
        10.0
    }
}

impl Plugin for InverseSqrt {
    const NAME: &'static str = "inverse_sqrt";
    const SUMMARY: &'static str = "lr / sqrt(1 + step / timescale)";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let s: InverseSqrt = from_table(config)?;
        if !(s.timescale.is_finite() && s.timescale > 0.0) {
            return Err(PluginError::Config(format!("`timescale` must be positive, got {}", s.timescale)));
        }
        Ok(s)
    }
}

impl LrSchedule for InverseSqrt {
    fn lr(&self, step: u64, ctx: &ScheduleContext) -> Result<f64, PluginError> {
        Ok(ctx.base_lr / (1.0 + step as f64 / self.timescale).sqrt())
    }
}

/// Reference-free pairwise logistic loss on length-normalized completion log-probs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairLogSigmoid {
    #[serde(default = "PairLogSigmoid::default_beta")]
    beta: f32,
}

impl PairLogSigmoid {
    fn default_beta() -> f32 {
        1.0
    }
}

impl Plugin for PairLogSigmoid {
    const NAME: &'static str = "pair_logsigmoid";
    const SUMMARY: &'static str = "-log sigmoid(beta * (mean logp chosen - mean logp rejected)), no reference";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        from_table(config)
    }
}

impl Loss for PairLogSigmoid {
    fn requirements(&self) -> Requirements {
        Requirements { pairs: true, ..Requirements::default() }
    }

    fn forward(&self, inputs: &LossInputs<'_>) -> Result<LossOutput, PluginError> {
        let pairs = inputs.num_pairs as i32;
        if pairs == 0 {
            return Err(PluginError::Invalid("pair_logsigmoid needs preference pairs".to_owned()));
        }
        // Per-row mean log-prob over completion tokens; rows [0, P) chosen, [P, 2P) rejected.
        let summed = inputs.policy_logps.multiply(inputs.mask)?.sum_axis(-1, None)?;
        let counts = ops::maximum(inputs.mask.sum_axis(-1, None)?, Array::from_f32(1.0))?;
        let mean = summed.divide(&counts)?;
        let chosen = mean.index(..pairs);
        let rejected = mean.index(pairs..);
        let margin = chosen.subtract(&rejected)?;
        let logits = margin.multiply(Array::from_f32(self.beta))?;
        let loss = sdk::mlx_rs::nn::log_sigmoid(&logits)?.mean(None)?.negative()?;
        let accuracy = margin.gt(Array::from_f32(0.0))?.as_dtype(sdk::mlx_rs::Dtype::Float32)?.mean(None)?;
        Ok(LossOutput {
            loss,
            metrics: vec![("margin".to_owned(), margin.mean(None)?), ("accuracy".to_owned(), accuracy)],
        })
    }
}

use sdk::mlx_rs::ops::indexing::IndexOp;

/// `ends_with`: `score` when the completion, trimmed, ends with `suffix`, else 0; not applicable to an empty
/// completion.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndsWith {
    suffix: String,
    #[serde(default = "EndsWith::one")]
    score: f64,
}

impl EndsWith {
    fn one() -> f64 {
        1.0
    }
}

impl Plugin for EndsWith {
    const NAME: &'static str = "ends_with";
    const SUMMARY: &'static str = "score (1) when the trimmed completion ends with `suffix`; empty completions not applicable";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let r: EndsWith = from_table(config)?;
        if r.suffix.is_empty() {
            return Err(PluginError::Config("`suffix` must not be empty".into()));
        }
        Ok(r)
    }
}

impl Reward for EndsWith {
    fn score(&mut self, batch: &RewardBatch<'_>) -> Result<Vec<Option<f64>>, PluginError> {
        Ok(batch
            .completions
            .iter()
            .map(|c| {
                let c = c.trim();
                (!c.is_empty()).then(|| if c.ends_with(self.suffix.as_str()) { self.score } else { 0.0 })
            })
            .collect())
    }
}

/// `retry`: an environment without tools. A wrong answer (its last number differs from the row's `column`) is
/// answered "Wrong, try again." as the user, so the model gets another turn; a right one ends the episode with
/// reward 1 / turn (the sooner the better); an episode out of turns ends with 0.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    #[serde(default = "Retry::column")]
    column: String,
}

impl Retry {
    fn column() -> String {
        "answer".into()
    }
}

impl Plugin for Retry {
    const NAME: &'static str = "retry";
    const SUMMARY: &'static str = "asks again after a wrong answer; rewards 1 / turn for a right one";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        from_table(config)
    }
}

fn last_number(text: &str) -> Option<f64> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .filter_map(|w| w.trim_end_matches('.').parse::<f64>().ok())
        .last()
}

impl Environment for Retry {
    fn tools(&mut self) -> Result<Vec<serde_json::Value>, PluginError> {
        Ok(Vec::new())
    }

    fn step(&mut self, turns: &[EnvTurn]) -> Result<Vec<EnvReply>, PluginError> {
        turns
            .iter()
            .map(|t| {
                let want = match t.row.get(&self.column) {
                    Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
                    Some(v) => v.as_f64(),
                    None => None,
                }
                .ok_or_else(|| PluginError::Invalid(format!("the row has no number in column `{}`", self.column)))?;
                let said = t.messages.last().and_then(|m| m.get("content")).and_then(|c| c.as_str()).and_then(last_number);
                Ok(match said {
                    Some(x) if x == want => EnvReply::Done(Some(1.0 / f64::from(t.turn))),
                    _ if t.last => EnvReply::Done(Some(0.0)),
                    _ => EnvReply::Observe(vec!["Wrong, try again.".into()]),
                })
            })
            .collect()
    }
}

sdk::export_plugins!(schedule InverseSqrt, loss PairLogSigmoid, reward EndsWith, environment Retry);
