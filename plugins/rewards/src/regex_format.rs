//! `regex_format`: `matched` (default 1) when the completion matches `pattern`, else `unmatched` (default 0).
//! `full = true` requires the whole completion (trimmed) to match.

use regex::Regex;
use serde::Deserialize;
use sdk::{from_table, register_reward, Plugin, PluginError, Reward, RewardBatch};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    pattern: String,
    #[serde(default)]
    full: bool,
    #[serde(default = "Config::one")]
    matched: f64,
    #[serde(default)]
    unmatched: f64,
}

impl Config {
    fn one() -> f64 {
        1.0
    }
}

pub struct RegexFormat {
    re: Regex,
    matched: f64,
    unmatched: f64,
}

impl Plugin for RegexFormat {
    const NAME: &'static str = "regex_format";
    const SUMMARY: &'static str = "matched (1) when the completion matches `pattern` (full = true: all of it), else unmatched (0)";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let c: Config = from_table(config)?;
        let source = if c.full { format!(r"\A(?:{})\z", c.pattern) } else { c.pattern.clone() };
        let re = Regex::new(&source).map_err(|e| PluginError::Config(format!("`pattern` is not a valid regex: {e}")))?;
        Ok(RegexFormat { re, matched: c.matched, unmatched: c.unmatched })
    }
}

impl Reward for RegexFormat {
    fn score(&mut self, batch: &RewardBatch<'_>) -> Result<Vec<Option<f64>>, PluginError> {
        Ok(batch.completions.iter().map(|c| Some(if self.re.is_match(c.trim()) { self.matched } else { self.unmatched })).collect())
    }
}

register_reward!(RegexFormat);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_and_full_matches() {
        let completions = ["The answer is 7.", "7", " The answer is 7. "];
        let prompts = vec![""; 3];
        let rows = vec!["{}"; 3];
        let ids: Vec<&[u32]> = vec![&[]; 3];
        let batch = RewardBatch { prompts: &prompts, completions: &completions, completion_ids: &ids, rows: &rows };
        let mut partial = RegexFormat::from_config(&r#"pattern = 'answer is \d+'"#.parse().unwrap()).unwrap();
        assert_eq!(partial.score(&batch).unwrap(), vec![Some(1.0), Some(0.0), Some(1.0)]);
        let mut full = RegexFormat::from_config(&"pattern = 'The answer is \\d+\\.'\nfull = true\nunmatched = -0.5".parse().unwrap()).unwrap();
        assert_eq!(full.score(&batch).unwrap(), vec![Some(1.0), Some(-0.5), Some(1.0)]);
        assert!(RegexFormat::from_config(&"pattern = '('".parse().unwrap()).is_err());
    }
}
