//! GRPO's rollouts: G completions per prompt from one shared prompt prefill, scored by the reward plugins,
//! turned into group-relative advantages, and laid out as training rows (prompt + sampled completion, the
//! sampled token ids as they came, never re-tokenized).

use mlx_rs::Array;
use sdk::{KvCachePolicy, Reward, RewardBatch};

use super::TrainError;
use crate::{
    cache,
    config::ScaleRewards,
    data::{collate, Batch, Example, PromptRow},
    generate::{generate_groups, Completion, Control, GenerateOptions, GenerationStats, Sampler, SamplerConfig},
    model::CausalLm,
    text::TextTokenizer,
};

/// Numerical floor under the standard deviation (TRL's 1e-4).
const STD_EPS: f64 = 1e-4;

/// Group-relative advantages: rows come in groups of `group` (a prompt's completions, consecutive);
/// A = r − mean(group), divided by (std + 1e-4) of the group or of the whole batch unless `scale` is none.
/// The standard deviation is Bessel-corrected, as TRL's (torch.std).
pub fn advantages(rewards: &[f64], group: usize, scale: ScaleRewards) -> Vec<f64> {
    let group = group.max(1);
    let batch_std = std(rewards);
    rewards
        .chunks(group)
        .flat_map(|g| {
            let mean = g.iter().sum::<f64>() / g.len() as f64;
            let divide = match scale {
                ScaleRewards::Group => std(g) + STD_EPS,
                ScaleRewards::Batch => batch_std + STD_EPS,
                ScaleRewards::None => 1.0,
            };
            g.iter().map(move |r| (r - mean) / divide)
        })
        .collect()
}

/// Sample standard deviation (n − 1); 0 for fewer than two values.
pub fn std(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
}

/// Σ_k w_k r_k over the functions that apply to each completion; a completion none applies to scores 0
/// (TRL's nansum).
pub fn combine(scores: &[&[Option<f64>]], weights: &[f64]) -> Vec<f64> {
    let rows = scores.first().map_or(0, |s| s.len());
    (0..rows)
        .map(|i| scores.iter().zip(weights).filter_map(|(s, w)| s[i].map(|v| v * w)).sum())
        .collect()
}

/// A named, weighted reward plugin.
pub struct RewardFn {
    pub name: String,
    pub weight: f64,
    pub plugin: Box<dyn Reward>,
}

/// What rollouts need besides the model: sampling, caches, rewards.
pub struct Rollouts<'a> {
    pub tokenizer: &'a TextTokenizer,
    pub cache_policy: &'a dyn KvCachePolicy,
    pub sampler: SamplerConfig,
    pub group: usize,
    pub max_tokens: usize,
    pub scale: ScaleRewards,
    pub rewards: &'a mut [RewardFn],
    pub pad_multiple: usize,
}

/// One micro-batch of scored completions, ready for the step.
pub struct RolloutBatch {
    /// `[B, T]` prompt + completion without its last token, right-padded.
    pub inputs: Array,
    pub targets: Array,
    /// `[B, T]` 1 on completion targets.
    pub mask: Array,
    /// `[B, T]` 1 at non-padding inputs.
    pub real: Array,
    /// `[B]` combined rewards, advantages (float32) and group ids (int32).
    pub rewards: Array,
    pub advantages: Array,
    pub group_ids: Array,
    /// Filled in by the trainer: reference log-probs (β > 0) and the rollout policy's log-probs (μ > 1).
    pub reference: Option<Array>,
    pub old_logps: Option<Array>,
    pub report: RolloutReport,
}

/// Host-side numbers about a rollout batch, for metrics and the completions log.
#[derive(Debug, Clone, Default)]
pub struct RolloutReport {
    pub rewards: Vec<f64>,
    pub advantages: Vec<f64>,
    /// Per reward function, its scores (None: not applicable).
    pub per_function: Vec<(String, Vec<Option<f64>>)>,
    pub completion_lengths: Vec<usize>,
    /// Per completion, whether it ended with EOS (else it hit `max_tokens`).
    pub ended_with_eos: Vec<bool>,
    pub texts: Vec<String>,
    /// Each row's prompt as the model saw it (rendered template).
    pub prompts: Vec<String>,
    /// Source line of each row's prompt.
    pub prompt_lines: Vec<usize>,
    pub stats: GenerationStats,
    /// Tokens in the rows (prompt + completion), and the padded batch size.
    pub real_tokens: usize,
    pub padded_tokens: usize,
}

impl RolloutBatch {
    pub fn rows(&self) -> usize {
        self.report.rewards.len()
    }

    /// Completion tokens, the supervised targets.
    pub fn completion_tokens(&self) -> usize {
        self.report.completion_lengths.iter().sum()
    }
}

impl Rollouts<'_> {
    /// Samples `group` completions for each prompt with the model as it is (adapters on, no dropout), scores
    /// them and builds the training rows.
    pub fn run(&mut self, model: &CausalLm, prompts: &[&PromptRow], seed: u64) -> Result<RolloutBatch, TrainError> {
        let mut caches = cache::for_layers(self.cache_policy, &model.attention_windows()).map_err(|e| TrainError::Config(format!("[rollout] cache: {e}")))?;
        let mut sampler = Sampler::new(self.sampler.clone(), seed)?;
        let options = GenerateOptions { max_tokens: self.max_tokens, eos_ids: self.tokenizer.eos_ids.clone(), ..Default::default() };
        let tokens: Vec<Vec<u32>> = prompts.iter().map(|p| p.tokens.clone()).collect();
        let mut sink = |_: usize, _: u32| Control::Continue;
        let (completions, stats) = generate_groups(model, &tokens, self.group, &mut caches, &mut sampler, &options, &mut sink)?;
        drop(caches);
        let g = self.group;
        let rows = completions.len();
        let texts = completions
            .iter()
            .map(|c| self.tokenizer.decode(&c.tokens, true).map_err(|e| TrainError::Mlx(format!("decoding a completion: {e}"))))
            .collect::<Result<Vec<String>, TrainError>>()?;
        let prompt_texts: Vec<&str> = (0..rows).map(|i| prompts[i / g].text.as_str()).collect();
        let row_texts: Vec<&str> = (0..rows).map(|i| prompts[i / g].row.as_str()).collect();
        let completion_texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let ids: Vec<&[u32]> = completions.iter().map(|c| c.tokens.as_slice()).collect();
        let batch = RewardBatch { prompts: &prompt_texts, completions: &completion_texts, completion_ids: &ids, rows: &row_texts };
        let mut per_function = Vec::with_capacity(self.rewards.len());
        for r in self.rewards.iter_mut() {
            let scores = r.plugin.score(&batch).map_err(|e| TrainError::Reward(format!("reward `{}`: {e}", r.name)))?;
            if scores.len() != rows {
                return Err(TrainError::Reward(format!("reward `{}` returned {} scores for {rows} completions", r.name, scores.len())));
            }
            if let Some(bad) = scores.iter().flatten().find(|v| !v.is_finite()) {
                return Err(TrainError::Reward(format!("reward `{}` returned {bad}; return None for \"not applicable\"", r.name)));
            }
            per_function.push((r.name.clone(), scores));
        }
        let weights: Vec<f64> = self.rewards.iter().map(|r| r.weight).collect();
        let scores: Vec<&[Option<f64>]> = per_function.iter().map(|(_, s)| s.as_slice()).collect();
        let rewards = combine(&scores, &weights);
        let advantages = advantages(&rewards, g, self.scale);
        let rows_batch = sequences(prompts, g, &completions, self.pad_multiple);
        let report = RolloutReport {
            completion_lengths: completions.iter().map(|c| c.tokens.len()).collect(),
            ended_with_eos: completions.iter().map(|c| c.finish == crate::generate::FinishReason::Eos).collect(),
            prompt_lines: (0..rows).map(|i| prompts[i / g].line).collect(),
            prompts: prompt_texts.iter().map(|t| (*t).to_owned()).collect(),
            rewards,
            advantages,
            per_function,
            texts,
            stats,
            real_tokens: rows_batch.real_tokens,
            padded_tokens: rows_batch.padded_tokens,
        };
        let f32s = |v: &[f64]| Array::from_slice(&v.iter().map(|&x| x as f32).collect::<Vec<f32>>(), &[v.len() as i32]);
        let group_ids: Vec<i32> = (0..rows).map(|i| (i / g) as i32).collect();
        Ok(RolloutBatch {
            inputs: rows_batch.inputs,
            targets: rows_batch.targets,
            mask: rows_batch.mask,
            real: rows_batch.real,
            rewards: f32s(&report.rewards),
            advantages: f32s(&report.advantages),
            group_ids: Array::from_slice(&group_ids, &[rows as i32]),
            reference: None,
            old_logps: None,
            report,
        })
    }
}

/// Rows of prompt + completion (row i continues prompt i / group), collated like training data: shifted into
/// inputs and targets, right-padded to a multiple of `pad_multiple`, the mask on the completion's targets (its
/// EOS included).
pub fn sequences(prompts: &[&PromptRow], group: usize, completions: &[Completion], pad_multiple: usize) -> Batch {
    let group = group.max(1);
    let examples: Vec<Example> = completions
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let prompt = &prompts[i / group].tokens;
            Example {
                tokens: prompt.iter().chain(&c.tokens).copied().collect(),
                supervised: prompt.iter().map(|_| false).chain(c.tokens.iter().map(|_| true)).collect(),
                truncated: false,
            }
        })
        .collect();
    collate(&examples.iter().collect::<Vec<_>>(), pad_multiple, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::FinishReason;

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-9, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn advantages_centre_and_scale_by_hand() {
        let r = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5];
        // Group 1: mean 0.5, Bessel std √(4 · 0.25 / 3) = 0.577350…; group 2 has no spread.
        let g = 0.5 / ((1.0f64 / 3.0).sqrt() + 1e-4);
        close(&advantages(&r, 4, ScaleRewards::Group), &[g, -g, -g, g, 0.0, 0.0, 0.0, 0.0]);
        close(&advantages(&r, 4, ScaleRewards::None), &[0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]);
        // Batch: std of all eight rewards, √(1 / 7).
        let b = 0.5 / ((1.0f64 / 7.0).sqrt() + 1e-4);
        close(&advantages(&r, 4, ScaleRewards::Batch), &[b, -b, -b, b, 0.0, 0.0, 0.0, 0.0]);
        close(&advantages(&[3.0, 1.0], 2, ScaleRewards::Group), &[1.0 / (2f64.sqrt() + 1e-4), -1.0 / (2f64.sqrt() + 1e-4)]);
    }

    #[test]
    fn rewards_sum_with_weights_over_the_functions_that_apply() {
        let scores: [&[Option<f64>]; 2] = [&[Some(1.0), None, Some(0.0)], &[Some(0.1), Some(0.1), None]];
        close(&combine(&scores, &[1.0, 2.0]), &[1.2, 0.2, 0.0]);
    }

    #[test]
    fn rows_continue_their_prompt_and_mask_only_the_completion() {
        let p = |tokens: Vec<u32>| PromptRow { line: 1, text: String::new(), tokens, row: "{}".into() };
        let (a, b) = (p(vec![5, 6, 7]), p(vec![8, 9]));
        let c = |tokens: Vec<u32>| Completion { logprobs: vec![0.0; tokens.len()], tokens, finish: FinishReason::Length };
        let completions = [c(vec![1, 2]), c(vec![3]), c(vec![4, 4, 4]), c(vec![2])];
        let batch = sequences(&[&a, &b], 2, &completions, 4);
        assert_eq!(batch.inputs.shape(), &[4, 4]);
        assert_eq!(batch.inputs.as_slice::<i32>(), &[5, 6, 7, 1, 5, 6, 7, 0, 8, 9, 4, 4, 8, 9, 0, 0]);
        assert_eq!(batch.targets.as_slice::<i32>(), &[6, 7, 1, 2, 6, 7, 3, 0, 9, 4, 4, 4, 9, 2, 0, 0]);
        assert_eq!(batch.mask.as_slice::<f32>(), &[0., 0., 1., 1., 0., 0., 1., 0., 0., 1., 1., 1., 0., 1., 0., 0.]);
        assert_eq!((batch.real_tokens, batch.padded_tokens), (4 + 3 + 4 + 2, 16));
    }
}
