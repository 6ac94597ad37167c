//! `overlong`: DAPO's soft overlong punishment, counted on the sampled ids. With L the completion's length,
//! L_max = `max_length` and L_c = `buffer`: 0 while L ≤ L_max − L_c, then falling linearly to −`penalty` at
//! L = L_max: −penalty · (L − (L_max − L_c)) / L_c; −penalty beyond L_max. Set `max_length` to `[rollout]
//! max_tokens` for DAPO's rule (completions never exceed it).

use serde::Deserialize;
use sdk::{from_table, register_reward, Plugin, PluginError, Reward, RewardBatch};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlong {
    max_length: usize,
    buffer: usize,
    #[serde(default = "Overlong::default_penalty")]
    penalty: f64,
}

impl Overlong {
    fn default_penalty() -> f64 {
        1.0
    }

    fn of_length(&self, n: usize) -> f64 {
        let free = self.max_length - self.buffer;
        if n <= free {
            0.0
        } else if n <= self.max_length {
            -self.penalty * (n - free) as f64 / self.buffer as f64
        } else {
            -self.penalty
        }
    }
}

impl Plugin for Overlong {
    const NAME: &'static str = "overlong";
    const SUMMARY: &'static str = "DAPO's soft overlong punishment: 0 up to max_length − buffer, then linearly down to −penalty at max_length";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let p: Overlong = from_table(config)?;
        if p.buffer == 0 || p.buffer > p.max_length {
            return Err(PluginError::Config(format!("`buffer` must be between 1 and `max_length` ({}), got {}", p.max_length, p.buffer)));
        }
        if !(p.penalty.is_finite() && p.penalty >= 0.0) {
            return Err(PluginError::Config(format!("`penalty` must be non-negative, got {}", p.penalty)));
        }
        Ok(p)
    }
}

impl Reward for Overlong {
    fn score(&mut self, batch: &RewardBatch<'_>) -> Result<Vec<Option<f64>>, PluginError> {
        Ok(batch.completion_ids.iter().map(|ids| Some(self.of_length(ids.len()))).collect())
    }
}

register_reward!(Overlong);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_then_linear_over_the_buffer_then_the_full_penalty() {
        let p = Overlong::from_config(&"max_length = 20\nbuffer = 4\npenalty = 0.5".parse().unwrap()).unwrap();
        // Free up to 16 tokens; 17..20 cost 0.5 × (1..4)/4; beyond 20 the whole 0.5.
        let got: Vec<f64> = [0, 16, 17, 18, 20, 25].iter().map(|&n| p.of_length(n)).collect();
        assert_eq!(got, vec![0.0, 0.0, -0.125, -0.25, -0.5, -0.5]);
        assert!(Overlong::from_config(&"max_length = 20\nbuffer = 0".parse().unwrap()).is_err());
        assert!(Overlong::from_config(&"max_length = 20\nbuffer = 21".parse().unwrap()).is_err());
        assert!(Overlong::from_config(&"buffer = 2".parse().unwrap()).unwrap_err().to_string().contains("max_length"));
    }
}
