//! Rewards for GRPO: a batch of completions in, one score (or "not applicable") per completion out.

use crate::PluginError;

/// One rollout batch. All slices have the same length; row i is prompt i's completion i.
pub struct RewardBatch<'a> {
    /// The prompts as rendered for the model.
    pub prompts: &'a [&'a str],
    /// The decoded completions.
    pub completions: &'a [&'a str],
    /// The sampled token ids of each completion (never re-tokenized).
    pub completion_ids: &'a [&'a [u32]],
    /// Each row of the dataset as a JSON object, so rewards can read columns such as `answer`.
    pub rows: &'a [&'a str],
}

impl RewardBatch<'_> {
    pub fn len(&self) -> usize {
        self.completions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.completions.is_empty()
    }
}

/// A reward function. `None` marks a completion the function does not apply to; the host leaves it out of
/// this function's mean and of the weighted sum (TRL's NaN semantics).
pub trait Reward {
    fn score(&mut self, batch: &RewardBatch<'_>) -> Result<Vec<Option<f64>>, PluginError>;
}
