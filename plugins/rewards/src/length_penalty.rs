//! `length_penalty`: −`per_token` × the completion tokens beyond `free_tokens` (default 0: every token),
//! counted on the sampled ids. With `target`, instead −`per_token` × |length − target|.

use serde::Deserialize;
use sdk::{from_table, register_reward, Plugin, PluginError, Reward, RewardBatch};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LengthPenalty {
    #[serde(default = "LengthPenalty::default_per_token")]
    per_token: f64,
    #[serde(default)]
    free_tokens: usize,
    target: Option<usize>,
}

impl LengthPenalty {
    fn default_per_token() -> f64 {
        0.01
    }
}

impl Plugin for LengthPenalty {
    const NAME: &'static str = "length_penalty";
    const SUMMARY: &'static str = "−per_token × tokens beyond free_tokens (or × |length − target|)";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let p: LengthPenalty = from_table(config)?;
        if !(p.per_token.is_finite() && p.per_token >= 0.0) {
            return Err(PluginError::Config(format!("`per_token` must be non-negative, got {}", p.per_token)));
        }
        if p.target.is_some() && p.free_tokens > 0 {
            return Err(PluginError::Config("`free_tokens` and `target` are alternatives; give one".into()));
        }
        Ok(p)
    }
}

impl Reward for LengthPenalty {
    fn score(&mut self, batch: &RewardBatch<'_>) -> Result<Vec<Option<f64>>, PluginError> {
        Ok(batch
            .completion_ids
            .iter()
            .map(|ids| {
                let n = ids.len();
                let excess = match self.target {
                    Some(t) => n.abs_diff(t),
                    None => n.saturating_sub(self.free_tokens),
                };
                Some(-self.per_token * excess as f64)
            })
            .collect())
    }
}

register_reward!(LengthPenalty);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalizes_tokens_past_the_allowance_or_away_from_the_target() {
        let ids: [&[u32]; 3] = [&[1, 2], &[1, 2, 3, 4, 5], &[]];
        let prompts = vec![""; 3];
        let completions = vec![""; 3];
        let rows = vec!["{}"; 3];
        let batch = RewardBatch { prompts: &prompts, completions: &completions, completion_ids: &ids, rows: &rows };
        let mut free = LengthPenalty::from_config(&"per_token = 0.5\nfree_tokens = 3".parse().unwrap()).unwrap();
        assert_eq!(free.score(&batch).unwrap(), vec![Some(0.0), Some(-1.0), Some(0.0)]);
        let mut target = LengthPenalty::from_config(&"per_token = 0.25\ntarget = 2".parse().unwrap()).unwrap();
        assert_eq!(target.score(&batch).unwrap(), vec![Some(0.0), Some(-0.75), Some(-0.5)]);
    }
}
