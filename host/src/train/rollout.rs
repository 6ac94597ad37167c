//! GRPO's rollouts: G completions per prompt from one shared prompt prefill, scored by the reward plugins,
//! turned into group-relative advantages, and laid out as training rows (prompt + sampled completion, the
//! sampled token ids as they came, never re-tokenized).

use mlx_rs::Array;
use sdk::{KvCachePolicy, Reward, RewardBatch};

use super::TrainError;
use crate::{
    environment::{EpisodeStats, Episodes},
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
        // + 0.0: an empty float sum is −0.0, which would be logged as such.
        .map(|i| scores.iter().zip(weights).filter_map(|(s, w)| s[i].map(|v| v * w)).sum::<f64>() + 0.0)
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
    /// Train on no token of a completion that hit `max_tokens` (DAPO's overlong filtering).
    pub mask_truncated: bool,
    /// Multi-turn episodes with an environment instead of single completions.
    pub environment: Option<&'a mut Episodes>,
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
    /// Completion tokens the step trains on (all, unless truncated completions are masked).
    pub trained_tokens: usize,
    /// What dynamic sampling did (all zero without it).
    pub topped: Topped,
    /// What the episodes did (multi-turn rollouts).
    pub episodes: Option<EpisodeStats>,
}

impl RolloutBatch {
    pub fn rows(&self) -> usize {
        self.report.rewards.len()
    }

    /// Completion tokens sampled.
    pub fn completion_tokens(&self) -> usize {
        self.report.completion_lengths.iter().sum()
    }

    /// Completion tokens the step trains on (the mask's ones).
    pub fn trained_tokens(&self) -> usize {
        self.report.trained_tokens
    }
}

/// Sampled and scored completions of some prompts, in groups of `Rollouts::group` (a prompt's completions,
/// consecutive), before advantages: what dynamic sampling filters and tops up.
pub struct Scored<'p> {
    pub prompts: Vec<&'p PromptRow>,
    pub completions: Vec<Completion>,
    pub texts: Vec<String>,
    /// Per reward function, its scores (None: not applicable).
    pub per_function: Vec<(String, Vec<Option<f64>>)>,
    /// The weighted sum per completion.
    pub rewards: Vec<f64>,
    pub stats: GenerationStats,
    /// Multi-turn rollouts: what the episodes did.
    pub episodes: Option<EpisodeStats>,
}

impl<'p> Scored<'p> {
    /// Whether prompt `g`'s completions got different rewards (a group without spread has zero advantages).
    pub fn has_spread(&self, g: usize, group: usize) -> bool {
        let r = &self.rewards[g * group..(g + 1) * group];
        r.iter().any(|x| (x - r[0]).abs() > 1e-12)
    }

    /// Moves prompt `g`'s group (its prompt, completions and scores) to the end of `into`.
    fn move_group(&self, g: usize, group: usize, into: &mut Scored<'p>) {
        let rows = g * group..(g + 1) * group;
        into.prompts.push(self.prompts[g]);
        into.completions.extend(self.completions[rows.clone()].iter().cloned());
        into.texts.extend(self.texts[rows.clone()].iter().cloned());
        into.rewards.extend(&self.rewards[rows.clone()]);
        if into.per_function.is_empty() {
            into.per_function = self.per_function.iter().map(|(n, _)| (n.clone(), Vec::new())).collect();
        }
        for ((_, to), (_, from)) in into.per_function.iter_mut().zip(&self.per_function) {
            to.extend(&from[rows.clone()]);
        }
    }

    fn empty() -> Self {
        Scored { prompts: Vec::new(), completions: Vec::new(), texts: Vec::new(), per_function: Vec::new(), rewards: Vec::new(), stats: GenerationStats::default(), episodes: None }
    }
}

/// What dynamic sampling did for one micro-batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Topped {
    /// Sampling rounds (1: no top-up was needed).
    pub rounds: usize,
    /// Groups without spread left out.
    pub dropped: usize,
    /// Groups without spread kept anyway because `max_sampling_rounds` ran out.
    pub filled: usize,
}

/// DAPO's dynamic sampling for one micro-batch of `wanted` prompts: groups whose rewards have no spread are set
/// aside and `next` supplies more scored prompts until `wanted` groups with spread are gathered or `rounds`
/// rounds have been sampled; then set-aside groups fill what is missing (their advantages are 0), so the
/// micro-batch always has `wanted` groups.
pub fn top_up<'p>(
    first: Scored<'p>,
    wanted: usize,
    group: usize,
    rounds: usize,
    mut next: impl FnMut(usize) -> Result<Scored<'p>, TrainError>,
) -> Result<(Scored<'p>, Topped), TrainError> {
    let mut kept = Scored::empty();
    let mut spare = Scored::empty();
    let mut report = Topped::default();
    let mut round = first;
    loop {
        report.rounds += 1;
        for g in 0..round.prompts.len() {
            if kept.prompts.len() < wanted && round.has_spread(g, group) {
                round.move_group(g, group, &mut kept);
            } else if !round.has_spread(g, group) {
                report.dropped += 1;
                round.move_group(g, group, &mut spare);
            }
        }
        add_stats(&mut kept.stats, &round.stats);
        if let Some(e) = &round.episodes {
            kept.episodes.get_or_insert_with(EpisodeStats::default).add(e);
        }
        if kept.prompts.len() >= wanted || report.rounds >= rounds.max(1) {
            break;
        }
        round = next(report.rounds)?;
    }
    let missing = wanted.saturating_sub(kept.prompts.len()).min(spare.prompts.len());
    for g in 0..missing {
        spare.move_group(g, group, &mut kept);
    }
    report.filled = missing;
    report.dropped -= missing;
    Ok((kept, report))
}

fn add_stats(into: &mut GenerationStats, s: &GenerationStats) {
    into.rows += s.rows;
    into.prompt_tokens += s.prompt_tokens;
    into.prompt_seconds += s.prompt_seconds;
    into.generated_tokens += s.generated_tokens;
    into.decode_seconds += s.decode_seconds;
    into.peak_memory_bytes = into.peak_memory_bytes.max(s.peak_memory_bytes);
}

impl Rollouts<'_> {
    /// Samples `group` completions for each prompt with the model as it is (adapters on, no dropout), scores
    /// them and builds the training rows.
    pub fn run(&mut self, model: &CausalLm, prompts: &[&PromptRow], seed: u64) -> Result<RolloutBatch, TrainError> {
        let scored = self.sample(model, prompts, seed)?;
        Ok(self.build(scored))
    }

    /// Samples `group` completions for each prompt and scores them.
    pub fn sample<'p>(&mut self, model: &CausalLm, prompts: &[&'p PromptRow], seed: u64) -> Result<Scored<'p>, TrainError> {
        let mut sampler = Sampler::new(self.sampler.clone(), seed)?;
        let options = GenerateOptions { max_tokens: self.max_tokens, eos_ids: self.tokenizer.eos_ids.clone(), ..Default::default() };
        let tokens: Vec<Vec<u32>> = prompts.iter().map(|p| p.tokens.clone()).collect();
        let windows = model.attention_windows();
        let cache_error = |e: sdk::PluginError| TrainError::Config(format!("[rollout] cache: {e}"));
        // Texts for the logs, the texts rewards score, and the environment's rewards.
        let (completions, stats, texts, answers, env_scores, episodes) = match self.environment.as_deref_mut() {
            Some(env) => {
                let mut caches = cache::for_episodes(self.cache_policy, &windows).map_err(cache_error)?;
                let b = env.run(self.tokenizer, model, prompts, self.group, &mut caches, &mut sampler, &options)?;
                (b.completions, b.stats, b.transcripts, b.answers, Some((env.name.clone(), b.rewards)), Some(b.episodes))
            }
            None => {
                let mut caches = cache::for_layers(self.cache_policy, &windows).map_err(cache_error)?;
                let mut sink = |_: usize, _: u32| Control::Continue;
                let (completions, stats) = generate_groups(model, &tokens, self.group, &mut caches, &mut sampler, &options, &mut sink)?;
                let texts = completions
                    .iter()
                    .map(|c| self.tokenizer.decode(&c.tokens, true).map_err(|e| TrainError::Mlx(format!("decoding a completion: {e}"))))
                    .collect::<Result<Vec<String>, TrainError>>()?;
                (completions, stats, texts.clone(), texts, None, None)
            }
        };
        let g = self.group;
        let rows = completions.len();
        let prompt_texts: Vec<&str> = (0..rows).map(|i| prompts[i / g].text.as_str()).collect();
        let row_texts: Vec<&str> = (0..rows).map(|i| prompts[i / g].row.as_str()).collect();
        let completion_texts: Vec<&str> = answers.iter().map(String::as_str).collect();
        let ids: Vec<&[u32]> = completions.iter().map(|c| c.tokens.as_slice()).collect();
        let batch = RewardBatch { prompts: &prompt_texts, completions: &completion_texts, completion_ids: &ids, rows: &row_texts };
        let mut per_function = Vec::with_capacity(self.rewards.len() + 1);
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
        let mut weights: Vec<f64> = self.rewards.iter().map(|r| r.weight).collect();
        if let (Some(scores), Some(env)) = (env_scores, self.environment.as_deref()) {
            per_function.push(scores);
            weights.push(env.weight);
        }
        let scores: Vec<&[Option<f64>]> = per_function.iter().map(|(_, s)| s.as_slice()).collect();
        let rewards = combine(&scores, &weights);
        Ok(Scored { prompts: prompts.to_vec(), completions, texts, per_function, rewards, stats, episodes })
    }

    /// Advantages and training rows of scored completions. With `mask_truncated`, completions that hit
    /// `max_tokens` without EOS keep their rewards (and their share of the group's statistics) but train on none
    /// of their tokens.
    pub fn build(&self, scored: Scored<'_>) -> RolloutBatch {
        let Scored { prompts, completions, texts, per_function, rewards, stats, episodes } = scored;
        let g = self.group;
        let rows = completions.len();
        let advantages = advantages(&rewards, g, self.scale);
        let mut rows_batch = sequences(&prompts, g, &completions, self.pad_multiple);
        let ended_with_eos: Vec<bool> = completions.iter().map(|c| c.finish == crate::generate::FinishReason::Eos).collect();
        let completion_lengths: Vec<usize> = completions.iter().map(|c| c.tokens.len()).collect();
        let trained: Vec<bool> = ended_with_eos.iter().map(|&eos| eos || !self.mask_truncated).collect();
        if trained.iter().any(|t| !t) {
            let width = rows_batch.mask.shape()[1] as usize;
            let keep: Vec<f32> = trained.iter().flat_map(|&t| std::iter::repeat_n(if t { 1.0 } else { 0.0 }, width)).collect();
            rows_batch.mask = rows_batch.mask.multiply(Array::from_slice(&keep, &[rows as i32, width as i32])).unwrap_or(rows_batch.mask);
        }
        let observed = |c: &Completion| c.observations.iter().map(|r| r.len()).sum::<usize>();
        let trained_tokens = completions.iter().zip(&trained).filter(|(_, t)| **t).map(|(c, _)| c.tokens.len() - observed(c)).sum();
        let report = RolloutReport {
            completion_lengths,
            ended_with_eos,
            prompt_lines: (0..rows).map(|i| prompts[i / g].line).collect(),
            prompts: (0..rows).map(|i| prompts[i / g].text.clone()).collect(),
            rewards,
            advantages,
            per_function,
            texts,
            stats,
            real_tokens: rows_batch.real_tokens,
            padded_tokens: rows_batch.padded_tokens,
            trained_tokens,
            topped: Topped::default(),
            episodes,
        };
        let f32s = |v: &[f64]| Array::from_slice(&v.iter().map(|&x| x as f32).collect::<Vec<f32>>(), &[v.len() as i32]);
        let group_ids: Vec<i32> = (0..rows).map(|i| (i / g) as i32).collect();
        RolloutBatch {
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
        }
    }
}

/// Rows of prompt + completion (row i continues prompt i / group), collated like training data: shifted into
/// inputs and targets, right-padded to a multiple of `pad_multiple`, the mask on the completion's targets (its
/// EOS included) except an environment's observation tokens.
pub fn sequences(prompts: &[&PromptRow], group: usize, completions: &[Completion], pad_multiple: usize) -> Batch {
    let group = group.max(1);
    let examples: Vec<Example> = completions
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let prompt = &prompts[i / group].tokens;
            let mut supervised: Vec<bool> = prompt.iter().map(|_| false).chain(c.tokens.iter().map(|_| true)).collect();
            // An environment's observations are context, never targets.
            for r in &c.observations {
                supervised[prompt.len() + r.start..prompt.len() + r.end].fill(false);
            }
            Example { tokens: prompt.iter().chain(&c.tokens).copied().collect(), supervised, truncated: false }
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

    /// Scored groups of two completions with the given rewards; prompt i's line is `base + i`.
    fn scored<'p>(prompts: &'p [PromptRow], rewards: &[f64]) -> Scored<'p> {
        let c = Completion { tokens: vec![1], logprobs: vec![0.0], finish: FinishReason::Eos, observations: vec![] };
        Scored {
            prompts: prompts.iter().collect(),
            completions: vec![c; rewards.len()],
            texts: rewards.iter().map(|r| r.to_string()).collect(),
            per_function: vec![("r".into(), rewards.iter().map(|&r| Some(r)).collect())],
            rewards: rewards.to_vec(),
            stats: GenerationStats { generated_tokens: rewards.len(), ..Default::default() },
            episodes: None,
        }
    }

    #[test]
    fn dynamic_sampling_keeps_groups_with_spread_and_tops_up_from_more_prompts() {
        let p = |line: usize| PromptRow { line, text: format!("p{line}"), tokens: vec![5], row: "{}".into(), messages: vec![] };
        let first: Vec<PromptRow> = (1..=3).map(p).collect();
        let second: Vec<PromptRow> = (11..=13).map(p).collect();
        // Round 1: only prompt 2 has spread. Round 2: prompts 11 and 13 do.
        let (kept, report) = top_up(scored(&first, &[1., 1., 0., 1., 0., 0.]), 3, 2, 4, |round| {
            assert_eq!(round, 1);
            Ok(scored(&second, &[1., 0., 2., 2., 0., 3.]))
        })
        .unwrap();
        let lines: Vec<usize> = kept.prompts.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![2, 11, 13]);
        assert_eq!(kept.rewards, vec![0., 1., 1., 0., 0., 3.]);
        assert_eq!(kept.per_function[0].1.len(), 6);
        assert_eq!(kept.texts, vec!["0", "1", "1", "0", "0", "3"]);
        assert_eq!((report.rounds, report.dropped, report.filled), (2, 3, 0));
        assert_eq!(kept.stats.generated_tokens, 12, "both rounds' sampling counted");

        // With one round allowed, groups without spread fill the micro-batch (their advantages are 0).
        let (kept, report) = top_up(scored(&first, &[1., 1., 0., 1., 0., 0.]), 3, 2, 1, |_| unreachable!()).unwrap();
        let lines: Vec<usize> = kept.prompts.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![2, 1, 3]);
        assert_eq!((report.rounds, report.dropped, report.filled), (1, 0, 2));
    }

    #[test]
    fn rows_continue_their_prompt_and_mask_only_the_completion() {
        let p = |tokens: Vec<u32>| PromptRow { line: 1, text: String::new(), tokens, row: "{}".into(), messages: vec![] };
        let (a, b) = (p(vec![5, 6, 7]), p(vec![8, 9]));
        let c = |tokens: Vec<u32>| Completion { logprobs: vec![0.0; tokens.len()], tokens, finish: FinishReason::Length, observations: vec![] };
        let completions = [c(vec![1, 2]), c(vec![3]), c(vec![4, 4, 4]), c(vec![2])];
        let batch = sequences(&[&a, &b], 2, &completions, 4);
        assert_eq!(batch.inputs.shape(), &[4, 4]);
        assert_eq!(batch.inputs.as_slice::<i32>(), &[5, 6, 7, 1, 5, 6, 7, 0, 8, 9, 4, 4, 8, 9, 0, 0]);
        assert_eq!(batch.targets.as_slice::<i32>(), &[6, 7, 1, 2, 6, 7, 3, 0, 9, 4, 4, 4, 9, 2, 0, 0]);
        assert_eq!(batch.mask.as_slice::<f32>(), &[0., 0., 1., 1., 0., 0., 1., 0., 0., 1., 1., 1., 0., 1., 0., 0.]);
        assert_eq!((batch.real_tokens, batch.padded_tokens), (4 + 3 + 4 + 2, 16));
    }
}
