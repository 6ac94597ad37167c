//! `exact_answer`: extracts the completion's final answer and compares it with the row's answer column.
//! The answer is the first capture group of `pattern` (its last match in the completion; default: the last
//! number), or with `pattern = ""` the whole completion, trimmed. Numbers compare numerically (`7.0` = `7`,
//! `1,000` = `1000`), other answers as trimmed strings (case-insensitive unless `case_sensitive`). A row
//! without the column is not applicable.

use regex::Regex;
use serde::Deserialize;
use sdk::{from_table, register_reward, Plugin, PluginError, Reward, RewardBatch};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "Config::default_column")]
    column: String,
    #[serde(default = "Config::default_pattern")]
    pattern: String,
    #[serde(default = "Config::default_correct")]
    correct: f64,
    #[serde(default)]
    wrong: f64,
    #[serde(default)]
    case_sensitive: bool,
}

impl Config {
    fn default_column() -> String {
        "answer".into()
    }

    fn default_pattern() -> String {
        r"(-?[0-9][0-9,]*(?:\.[0-9]+)?)".into()
    }

    fn default_correct() -> f64 {
        1.0
    }
}

pub struct ExactAnswer {
    column: String,
    pattern: Option<Regex>,
    correct: f64,
    wrong: f64,
    case_sensitive: bool,
}

impl Plugin for ExactAnswer {
    const NAME: &'static str = "exact_answer";
    const SUMMARY: &'static str = "correct (1) when the completion's final answer equals the row's `answer`, else wrong (0)";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let c: Config = from_table(config)?;
        let pattern = if c.pattern.is_empty() {
            None
        } else {
            let re = Regex::new(&c.pattern).map_err(|e| PluginError::Config(format!("`pattern` is not a valid regex: {e}")))?;
            if re.captures_len() < 2 {
                return Err(PluginError::Config("`pattern` needs a capture group around the answer".into()));
            }
            Some(re)
        };
        Ok(ExactAnswer { column: c.column, pattern, correct: c.correct, wrong: c.wrong, case_sensitive: c.case_sensitive })
    }
}

/// The answer text of a completion: the last match's first group, or the trimmed completion.
fn extract<'a>(pattern: Option<&Regex>, completion: &'a str) -> Option<&'a str> {
    match pattern {
        Some(re) => re.captures_iter(completion).last().and_then(|c| c.get(1)).map(|m| m.as_str().trim()),
        None => Some(completion.trim()),
    }
}

fn number(text: &str) -> Option<f64> {
    let cleaned: String = text.chars().filter(|&c| c != ',').collect();
    cleaned.parse::<f64>().ok().filter(|v| v.is_finite())
}

impl ExactAnswer {
    fn same(&self, got: &str, want: &str) -> bool {
        match (number(got), number(want)) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * b.abs().max(1.0),
            _ if self.case_sensitive => got == want,
            _ => got.to_lowercase() == want.to_lowercase(),
        }
    }
}

impl Reward for ExactAnswer {
    fn score(&mut self, batch: &RewardBatch<'_>) -> Result<Vec<Option<f64>>, PluginError> {
        let mut out = Vec::with_capacity(batch.len());
        for (completion, row) in batch.completions.iter().zip(batch.rows) {
            let row: serde_json::Value = serde_json::from_str(row).map_err(|e| PluginError::Invalid(format!("row is not JSON: {e}")))?;
            let want = match row.get(&self.column) {
                Some(serde_json::Value::String(s)) => s.trim().to_owned(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                _ => {
                    out.push(None);
                    continue;
                }
            };
            let right = extract(self.pattern.as_ref(), completion).is_some_and(|got| self.same(got, &want));
            out.push(Some(if right { self.correct } else { self.wrong }));
        }
        Ok(out)
    }
}

register_reward!(ExactAnswer);

#[cfg(test)]
mod tests {
    use super::*;

    fn score(config: &str, completions: &[&str], rows: &[&str]) -> Vec<Option<f64>> {
        let mut r = ExactAnswer::from_config(&config.parse().unwrap()).unwrap();
        let prompts = vec![""; completions.len()];
        let ids: Vec<&[u32]> = vec![&[]; completions.len()];
        r.score(&RewardBatch { prompts: &prompts, completions, completion_ids: &ids, rows }).unwrap()
    }

    #[test]
    fn the_last_number_is_the_answer_and_numbers_compare_numerically() {
        let rows = [r#"{"answer": "12"}"#, r#"{"answer": 12}"#, r#"{"answer": "1000"}"#, r#"{"answer": "12"}"#, r#"{"question": "x"}"#];
        let got = score("", &["3 + 9 = 12", "first 5, so 12.0", "1,000", "12 or 13", "12"], &rows);
        assert_eq!(got, vec![Some(1.0), Some(1.0), Some(1.0), Some(0.0), None]);
    }

    #[test]
    fn a_pattern_selects_the_answer_and_strings_compare_case_insensitively() {
        let rows = [r#"{"label": "Paris"}"#, r#"{"label": "Paris"}"#];
        let got = score(r#"column = "label"
pattern = 'answer: (\w+)'
wrong = -1.0"#, &["answer: paris", "answer: Rome"], &rows);
        assert_eq!(got, vec![Some(1.0), Some(-1.0)]);
        assert!(ExactAnswer::from_config(&"pattern = 'answer'".parse().unwrap()).is_err(), "no capture group");
    }
}
