//! `command`: a reward computed by a long-lived child process (see [`crate::protocol`]). Each batch goes out
//! as one `score` request with the prompts, completions, sampled ids and each row's columns; one score or
//! null per completion comes back. The process starts at the first batch (checking a config starts nothing)
//! and lives until the run ends.

use sdk::{from_table, register_reward, Plugin, PluginError, Reward, RewardBatch};
use serde_json::{json, Value};

use crate::{
    child::{ChildProcess, ChildSettings},
    protocol,
};

pub struct CommandReward {
    settings: ChildSettings,
    child: Option<ChildProcess>,
}

impl Plugin for CommandReward {
    const NAME: &'static str = "command";
    const SUMMARY: &'static str = "scores from a child process in any language (JSON lines; python/host_plugin.py)";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let settings: ChildSettings = from_table(config)?;
        settings.check().map_err(PluginError::Config)?;
        Ok(CommandReward { settings, child: None })
    }
}

impl Reward for CommandReward {
    fn score(&mut self, batch: &RewardBatch<'_>) -> Result<Vec<Option<f64>>, PluginError> {
        let rows = batch
            .rows
            .iter()
            .map(|r| serde_json::from_str::<Value>(r).map_err(|e| PluginError::Invalid(format!("a data row is not JSON: {e}"))))
            .collect::<Result<Vec<Value>, PluginError>>()?;
        let request = json!({
            "type": "score",
            "prompts": batch.prompts,
            "completions": batch.completions,
            "completion_ids": batch.completion_ids,
            "rows": rows,
        });
        let child = match &mut self.child {
            Some(c) => c,
            None => self.child.insert(ChildProcess::start(&self.settings, "reward").map_err(PluginError::Failed)?),
        };
        let answer = match child.request(request, "scores", "scores") {
            Ok(a) => a,
            Err(e) => {
                // The process is in an unknown state: a later call (if any) starts a fresh one.
                self.child = None;
                return Err(PluginError::Failed(e));
            }
        };
        let what = child.what().to_owned();
        parse_scores(&answer, batch.len()).map_err(|e| PluginError::Invalid(format!("{what}: {e}")))
    }
}

/// The `scores` array: one number or null per completion.
fn parse_scores(answer: &Value, expected: usize) -> Result<Vec<Option<f64>>, String> {
    let list = answer.as_array().ok_or_else(|| format!("`scores` is {}, not a list", protocol::short(answer)))?;
    if list.len() != expected {
        return Err(format!("returned {} scores for {expected} completions", list.len()));
    }
    list.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Null => Ok(None),
            Value::Number(n) => n.as_f64().filter(|x| x.is_finite()).map(Some).ok_or_else(|| format!("score {i} ({n}) is not a finite number")),
            other => Err(format!("score {i} is {}, not a number or null (null: not applicable)", protocol::short(other))),
        })
        .collect()
}

register_reward!(CommandReward);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_numbers_or_null_one_per_completion() {
        assert_eq!(parse_scores(&json!([1.5, null, -2]), 3).unwrap(), vec![Some(1.5), None, Some(-2.0)]);
        assert!(parse_scores(&json!([1.0]), 2).unwrap_err().contains("returned 1 scores for 2 completions"));
        assert!(parse_scores(&json!([1.0, "x"]), 2).unwrap_err().contains("score 1 is \"x\""));
        assert!(parse_scores(&json!({"a": 1}), 1).unwrap_err().contains("not a list"));
    }
}
