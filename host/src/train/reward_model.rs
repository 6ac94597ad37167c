//! `reward_model`: a Hugging Face `*ForSequenceClassification` checkpoint of a supported family scores each
//! prompt + completion, on the same device as the policy. As transformers computes it: the body's final
//! hidden state at the sequence's last token, times the `score` head (no bias), one logit per label; the
//! reward is label `label`'s logit. The text is built as TRL builds it (see [`text_ids`]) and tokenized by the
//! reward model's own tokenizer; sequences longer than `max_length` keep their last
//! `max_length` tokens (the completion's end). The model loads at the first batch, not when a config is checked.

use std::path::PathBuf;

use mlx_rs::{ops, ops::indexing::IndexOp, Array, Dtype};
use sdk::{from_table, register_reward, Plugin, PluginError, Reward, RewardBatch};
use serde::Deserialize;

use crate::{
    model::{self, CausalLm, LoadOptions},
    text::TextTokenizer,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    model: PathBuf,
    #[serde(default = "Config::default_batch")]
    batch_size: usize,
    #[serde(default = "Config::default_max_length")]
    max_length: usize,
    #[serde(default)]
    label: usize,
}

impl Config {
    fn default_batch() -> usize {
        8
    }

    fn default_max_length() -> usize {
        2048
    }
}

struct Loaded {
    body: CausalLm,
    /// `[num_labels, hidden]`, float32.
    score: Array,
    tokenizer: TextTokenizer,
}

pub struct RewardModel {
    config: Config,
    loaded: Option<Loaded>,
}

impl Plugin for RewardModel {
    const NAME: &'static str = "reward_model";
    const SUMMARY: &'static str = "scores prompt + completion with a *ForSequenceClassification checkpoint (`model`, `label`, `batch_size`, `max_length`)";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let c: Config = from_table(config)?;
        let json = c.model.join("config.json");
        let text = std::fs::read_to_string(&json).map_err(|e| PluginError::Config(format!("`model`: {}: {e}", json.display())))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| PluginError::Config(format!("`model`: {}: {e}", json.display())))?;
        let architectures: Vec<&str> = value.get("architectures").and_then(|a| a.as_array()).map(|a| a.iter().filter_map(|s| s.as_str()).collect()).unwrap_or_default();
        if !architectures.iter().any(|a| a.ends_with("ForSequenceClassification")) {
            return Err(PluginError::Config(format!("`model`: {} has architectures {architectures:?}, not a *ForSequenceClassification reward model", c.model.display())));
        }
        let labels = value.get("num_labels").and_then(|n| n.as_u64()).or_else(|| value.get("id2label").and_then(|m| m.as_object()).map(|m| m.len() as u64)).unwrap_or(1);
        if c.label as u64 >= labels {
            return Err(PluginError::Config(format!("`label` {} is out of range: the model has {labels} label(s)", c.label)));
        }
        if c.batch_size == 0 || c.max_length == 0 {
            return Err(PluginError::Config("`batch_size` and `max_length` must be at least 1".into()));
        }
        Ok(RewardModel { config: c, loaded: None })
    }
}

impl RewardModel {
    fn loaded(&mut self) -> Result<&Loaded, PluginError> {
        if self.loaded.is_none() {
            let dir = &self.config.model;
            let (m, score) = model::load_classifier(dir, &LoadOptions::default()).map_err(|e| PluginError::Failed(e.to_string()))?;
            let tokenizer = TextTokenizer::load(dir).map_err(|e| PluginError::Failed(e.to_string()))?;
            if score.shape()[0] as usize <= self.config.label {
                return Err(PluginError::Failed(format!("{}: `score.weight` has {} rows; `label` is {}", dir.display(), score.shape()[0], self.config.label)));
            }
            self.loaded = Some(Loaded { body: m.model, score, tokenizer });
        }
        self.loaded.as_ref().ok_or_else(|| PluginError::Failed("reward model not loaded".into()))
    }

    /// The label's logit for each of these texts' token ids.
    fn score_ids(loaded: &Loaded, label: usize, rows: &[Vec<u32>]) -> Result<Vec<f64>, PluginError> {
        let width = rows.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut ids = vec![0i32; rows.len() * width];
        let mut last = Vec::with_capacity(rows.len());
        for (r, row) in rows.iter().enumerate() {
            for (j, &t) in row.iter().enumerate() {
                ids[r * width + j] = t as i32;
            }
            // Right padding: causal attention keeps every real position's state independent of the pads.
            last.push((r * width + row.len().max(1) - 1) as i32);
        }
        let hidden = loaded.body.model.forward(&Array::from_slice(&ids, &[rows.len() as i32, width as i32]), None)?;
        let h = hidden.shape()[2];
        let picked = hidden.reshape(&[-1, h])?.take_axis(Array::from_slice(&last, &[last.len() as i32]), 0)?.as_dtype(Dtype::Float32)?;
        let w = loaded.score.index((label as i32..label as i32 + 1, ..));
        let logits = ops::matmul(&picked, w.t())?.reshape(&[-1])?;
        logits.eval()?;
        Ok(logits.as_slice::<f32>().iter().map(|&v| f64::from(v)).collect())
    }
}

impl Reward for RewardModel {
    fn score(&mut self, batch: &RewardBatch<'_>) -> Result<Vec<Option<f64>>, PluginError> {
        let (label, max_length, size) = (self.config.label, self.config.max_length, self.config.batch_size);
        let loaded = self.loaded()?;
        let mut tokens = Vec::with_capacity(batch.len());
        for ((prompt, completion), row) in batch.prompts.iter().zip(batch.completions).zip(batch.rows) {
            let mut ids = text_ids(&loaded.tokenizer, prompt, completion, row)?;
            if ids.len() > max_length {
                ids.drain(..ids.len() - max_length);
            }
            tokens.push(ids);
        }
        let mut out = Vec::with_capacity(tokens.len());
        for chunk in tokens.chunks(size) {
            out.extend(Self::score_ids(loaded, label, chunk)?.into_iter().map(Some));
        }
        Ok(out)
    }
}

/// The reward model's tokens for one completion, as TRL builds them: a plain-text `prompt` column followed by
/// the completion; chat messages with the completion as the assistant's turn, through the reward model's own
/// chat template; without a `prompt` column, the prompt as the policy saw it. No special tokens are added.
fn text_ids(tokenizer: &TextTokenizer, rendered: &str, completion: &str, row: &str) -> Result<Vec<u32>, PluginError> {
    let row: serde_json::Value = serde_json::from_str(row).map_err(|e| PluginError::Invalid(format!("a data row is not JSON: {e}")))?;
    match row.get("prompt") {
        Some(serde_json::Value::String(p)) => tokenizer.encode(&format!("{p}{completion}"), false).map_err(PluginError::Failed),
        Some(serde_json::Value::Array(messages)) => {
            let mut all = messages.clone();
            all.push(serde_json::json!({"role": "assistant", "content": completion}));
            tokenizer.encode_chat(&all, None, false).map_err(|e| PluginError::Failed(format!("the reward model's chat template: {e}")))
        }
        _ => tokenizer.encode(&format!("{rendered}{completion}"), false).map_err(PluginError::Failed),
    }
}

register_reward!(RewardModel);

/// Called from `Registry::builtin`: a reference into this module, so the linker keeps its registration
/// (inventory collects only what is linked, and nothing else names this file).
#[inline(never)]
pub fn keep_linked() {
    std::hint::black_box(RewardModel::NAME);
}
