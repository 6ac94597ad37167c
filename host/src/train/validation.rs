//! GRPO's validation rollouts (`[eval]`): completions of held-out prompts with the adapters as they are,
//! scored by the run's reward functions, summarized under `eval_` names. The same prompts and seeds every
//! time, so evaluations differ only by what training changed (and, at temperature 0, not at all for the same
//! weights).

use serde_json::{json, Map, Value};

use super::{
    rollout::{std, Rollouts, Scored},
    TrainError,
};
use crate::{
    config::EvalConfig,
    data::{PromptRow, SplitMix},
    lora,
    model::CausalLm,
};

/// Samples and scores every evaluation prompt; the `eval_*` metrics of one evaluation.
pub fn evaluate(rollouts: &mut Rollouts<'_>, model: &mut CausalLm, prompts: &[PromptRow], cfg: &EvalConfig, batch_size: usize, seed: u64) -> Result<Map<String, Value>, TrainError> {
    let take = cfg.max_prompts.unwrap_or(prompts.len()).min(prompts.len());
    let batch = cfg.batch_size.unwrap_or(batch_size).max(1);
    // The evaluation's sampling, in place of training's for the duration of the call.
    let saved = (rollouts.sampler.clone(), rollouts.group, rollouts.max_tokens);
    rollouts.sampler.temperature = cfg.temperature;
    rollouts.group = cfg.num_generations;
    rollouts.max_tokens = cfg.max_tokens.unwrap_or(saved.2);
    lora::set_dropout_key(model, None)?;
    lora::set_sampling(model, true)?;
    let mut results: Vec<Scored<'_>> = Vec::new();
    let mut outcome = Ok(());
    for (i, chunk) in prompts[..take].chunks(batch).enumerate() {
        let rows: Vec<&PromptRow> = chunk.iter().collect();
        match rollouts.sample(model, &rows, SplitMix::new(seed ^ (i as u64).wrapping_mul(0x8ebc_6af0_9c88_c6e3)).next()) {
            Ok(s) => results.push(s),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    lora::set_sampling(model, false)?;
    (rollouts.sampler, rollouts.group, rollouts.max_tokens) = saved;
    outcome?;
    Ok(summarize(&results))
}

/// `eval_reward` (mean over all completions) and `eval_reward_std`, `eval_rewards/<fn>/mean` (over the
/// completions a function applies to), `eval_completions/mean_length` and `eval_completions/clipped_ratio`.
fn summarize(results: &[Scored<'_>]) -> Map<String, Value> {
    let rewards: Vec<f64> = results.iter().flat_map(|s| s.rewards.iter().copied()).collect();
    let n = rewards.len().max(1) as f64;
    let mut out = Map::new();
    out.insert("eval_reward".into(), json!(rewards.iter().sum::<f64>() / n));
    out.insert("eval_reward_std".into(), json!(std(&rewards)));
    if let Some(first) = results.first() {
        for (k, (name, _)) in first.per_function.iter().enumerate() {
            let applicable: Vec<f64> = results.iter().flat_map(|s| s.per_function[k].1.iter().flatten().copied()).collect();
            if !applicable.is_empty() {
                out.insert(format!("eval_rewards/{name}/mean"), json!(applicable.iter().sum::<f64>() / applicable.len() as f64));
            }
        }
    }
    let lengths: Vec<usize> = results.iter().flat_map(|s| s.completions.iter().map(|c| c.tokens.len())).collect();
    let clipped = results.iter().flat_map(|s| &s.completions).filter(|c| c.finish != crate::generate::FinishReason::Eos).count();
    out.insert("eval_completions/mean_length".into(), json!(lengths.iter().sum::<usize>() as f64 / n));
    out.insert("eval_completions/clipped_ratio".into(), json!(clipped as f64 / n));
    out.insert("eval_prompts".into(), json!(results.iter().map(|s| s.prompts.len()).sum::<usize>()));
    out
}
