//! The GRPO trainer: each step samples `num_generations` completions for `batch_size` prompts per
//! micro-batch (the prompt's KV cache shared by its group), scores them with the `[[reward]]` plugins,
//! normalizes rewards into advantages within each group, and takes the loss plugin's step on those rows.
//! One batch of rollouts serves `num_iterations` optimizer steps; after the first, the ratio compares the
//! policy with the one that sampled (its log-probs kept from right after sampling).

use std::{
    io::Write,
    rc::Rc,
    sync::atomic::Ordering,
    time::Instant,
};

use mlx_rs::Array;
use sdk::Loss;
use serde_json::json;

use super::{
    io, lora, metrics, reference::ReferenceSource, reference_source, rollout::{self, RewardFn, RolloutBatch, Rollouts},
    session, step, stepper::Stepper, validation, Resume, RunOutcome, StepCallback, StopReason, TrainError, INTERRUPTED,
};
use super::inputs::Needs;
use crate::{
    environment::Episodes,
    config::{RolloutConfig, RunConfig},
    data::{plan_epoch, BatchSize, PromptRow, PromptSet, SplitMix},
    plugins::Registry,
};

/// Prompt batches in epochs, shuffled by the run's seed (resumable by epoch and position).
struct PromptFeeder<'a> {
    set: &'a PromptSet,
    rows: usize,
    seed: u64,
    epoch: u64,
    position: usize,
    plan: Vec<Vec<usize>>,
}

impl<'a> PromptFeeder<'a> {
    fn new(set: &'a PromptSet, rows: usize, seed: u64, epoch: u64, position: usize) -> Self {
        let plan = plan_epoch(&set.lengths(), BatchSize::rows(rows), seed, epoch);
        PromptFeeder { set, rows, seed, epoch, position, plan }
    }

    fn next_batch(&mut self) -> Vec<&'a PromptRow> {
        if self.position >= self.plan.len() {
            self.epoch += 1;
            self.position = 0;
            self.plan = plan_epoch(&self.set.lengths(), BatchSize::rows(self.rows), self.seed, self.epoch);
        }
        self.position += 1;
        self.plan[self.position - 1].iter().map(|&i| &self.set.rows[i]).collect()
    }
}

/// A reproducible sampling seed for micro-batch `micro` of step `step`.
fn rollout_seed(seed: u64, step: u64, micro: usize) -> u64 {
    SplitMix::new(seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (micro as u64).wrapping_mul(0xd6e8_feb8_6659_fd93)).next()
}

pub fn run(
    config: &RunConfig,
    registry: &Registry,
    loss: Rc<dyn Loss>,
    needs: Needs,
    resume: Option<&Resume>,
    callback: &mut dyn StepCallback,
) -> Result<RunOutcome, TrainError> {
    if crate::dist::world().size() > 1 {
        return Err(TrainError::Config(
            "data-parallel GRPO (each rank sampling its own groups) is not implemented yet: run GRPO as one process (without --nproc)".into(),
        ));
    }
    let data_cfg = config.data.as_ref().ok_or_else(|| session::missing("data"))?;
    let train_cfg = &config.train;
    let rollout_cfg = config.rollout.clone().unwrap_or_default();
    if config.reward.is_empty() && config.environment.is_none() {
        return Err(TrainError::Config(format!("loss `{}` learns from rewards: add at least one [[reward]] or an [environment]", config.loss.kind)));
    }
    let out = config.output_dir();

    let session::Policy { dir, load_options, tokenizer, mut model, tuning } = session::load_policy(config, registry)?;
    let source: Option<ReferenceSource> = if needs.reference {
        let reference = config.reference.clone().unwrap_or_default();
        reference_source(&dir, reference.model.as_deref(), &load_options)?.0
    } else {
        None
    };
    let mut episodes = match &config.environment {
        Some(e) => {
            let env = registry.environment(&e.plugin.kind, &e.plugin.config)?;
            Some(Episodes::new(env, e, &model.config.model_type, rollout_cfg.max_tokens)?)
        }
        None => None,
    };
    // What one completion (or episode) may add to its prompt.
    let (completion_budget, budget) = match &episodes {
        Some(e) => (e.limits.max_tokens, format!("[data] max_seq_length {} minus the episode's {} tokens ([environment])", data_cfg.max_seq_length, e.limits.max_tokens)),
        None => (rollout_cfg.max_tokens, format!("[data] max_seq_length {} minus [rollout] max_tokens {}", data_cfg.max_seq_length, rollout_cfg.max_tokens)),
    };
    let tools = episodes.as_ref().map(|e| e.tools().to_vec());
    let prompt_budget = data_cfg.max_seq_length.saturating_sub(completion_budget).max(1);
    let prompts = PromptSet::load(&data_cfg.train, &tokenizer, prompt_budget, &budget, data_cfg.skip_bad_rows, tools.as_deref())?;
    let eval_prompts = match &config.eval {
        Some(e) => {
            let (max_tokens, budget) = match &episodes {
                Some(_) => (completion_budget, budget.clone()),
                None => {
                    let m = e.max_tokens.unwrap_or(rollout_cfg.max_tokens);
                    (m, format!("[data] max_seq_length {} minus [eval] max_tokens {m}", data_cfg.max_seq_length))
                }
            };
            Some(PromptSet::load(&e.prompts, &tokenizer, data_cfg.max_seq_length.saturating_sub(max_tokens).max(1), &budget, data_cfg.skip_bad_rows, tools.as_deref())?)
        }
        None => None,
    };
    let longest_prompt = prompts.lengths().into_iter().max().unwrap_or(0);
    match &episodes {
        Some(e) => eprintln!(
            "prompts: {} rows ({} skipped), longest {longest_prompt} tokens; {} episodes each of up to {} turns of {} tokens, {} tokens in all",
            prompts.rows.len(),
            prompts.bad_rows.len(),
            rollout_cfg.num_generations,
            e.limits.max_turns,
            rollout_cfg.max_tokens,
            e.limits.max_tokens
        ),
        None => eprintln!(
            "prompts: {} rows ({} skipped), longest {longest_prompt} tokens; {} completions of up to {} tokens each",
            prompts.rows.len(),
            prompts.bad_rows.len(),
            rollout_cfg.num_generations,
            rollout_cfg.max_tokens
        ),
    }
    let rows_per_micro = data_cfg.batch_size * rollout_cfg.num_generations;
    session::set_checkpointing(config, &mut model, &tuning, rows_per_micro, longest_prompt + completion_budget);

    let cache_policy = registry.kv_cache_policy(&rollout_cfg.cache.kind, &rollout_cfg.cache.config)?;
    let mut names = reward_names(config);
    if let Some(e) = &episodes {
        names.push(e.name.clone());
    }
    let mut rewards = config
        .reward
        .iter()
        .zip(&names)
        .map(|(r, name)| Ok(RewardFn { name: name.clone(), weight: r.weight, plugin: registry.reward(&r.plugin.kind, &r.plugin.config)? }))
        .collect::<Result<Vec<RewardFn>, TrainError>>()?;

    let (schedule, schedule_ctx) = config.build_schedule(registry)?;
    let (optimizer, rng, mut state) = session::start_state(config, &mut model, &tuning, resume)?;
    let mut stepper = Stepper::new(config, model, optimizer, rng, loss, needs, true)?;

    let adapter_extra = session::adapter_extra(
        config,
        &[
            ("batch_size", json!(data_cfg.batch_size)),
            ("num_generations", json!(rollout_cfg.num_generations)),
            ("max_completion_length", json!(rollout_cfg.max_tokens)),
            ("max_seq_length", json!(data_cfg.max_seq_length)),
        ],
    );
    let mut log = metrics::MetricsLog::open(&out, resume.map(|_| state.step), &config.output)?;
    let completions_path = out.join("completions.jsonl");
    let (_, mut completions_log) = metrics::open_jsonl(&completions_path, resume.map(|_| state.step))?;
    let bar = metrics::progress_bar(train_cfg.steps, state.step);
    let mut feeder = PromptFeeder::new(&prompts, data_cfg.batch_size, train_cfg.seed, state.epoch, state.batch_in_epoch);
    let mut rollouts = Rollouts {
        tokenizer: &tokenizer,
        cache_policy: &*cache_policy,
        sampler: rollout_cfg.sampler(),
        group: rollout_cfg.num_generations,
        max_tokens: rollout_cfg.max_tokens,
        scale: rollout_cfg.scale_rewards,
        rewards: &mut rewards,
        pad_multiple: data_cfg.pad_multiple,
        mask_truncated: rollout_cfg.mask_truncated_completions,
        environment: episodes.as_mut(),
    };
    let started = Instant::now();
    let _ = mlx_rs::memory::reset_peak_memory();
    let (mut real_total, mut padded_total) = (0usize, 0usize);
    let mut last_loss = f64::NAN;
    let mut stopped = StopReason::Completed;
    INTERRUPTED.store(false, Ordering::SeqCst);

    // The rollouts in use and how many steps have used them.
    let mut batches: Vec<RolloutBatch> = Vec::new();
    let mut uses = 0u64;
    while state.step < train_cfg.steps {
        let step_started = Instant::now();
        let fresh = batches.is_empty() || uses == rollout_cfg.num_iterations;
        let mut times = RolloutTimes::default();
        if fresh {
            let produced = produce(&mut rollouts, &mut stepper.ts.0, &mut feeder, &rollout_cfg, train_cfg.grad_accumulation_steps as usize, source.as_ref(), train_cfg.seed, state.step);
            (batches, times) = match produced {
                // A failed reward (a crashed child, a wrong answer) stops the run with the last finished step
                // saved, so fixing the reward and resuming loses nothing.
                Err(TrainError::Reward(message)) => {
                    bar.abandon();
                    let checkpoint = session::save_checkpoint(config, &tuning, &mut stepper.ts, &state, &adapter_extra)?;
                    return Err(TrainError::RewardFailed { step: state.step + 1, message, checkpoint });
                }
                other => other?,
            };
            uses = 0;
            for b in &batches {
                write_completions(&mut completions_log, &completions_path, state.step + 1, b)?;
            }
        }
        // The completions this step trains on, fresh or reused (num_iterations > 1), so every N-th step has its
        // table whatever the rollout cadence.
        let every = config.output.log_completions_every;
        if every > 0 && (state.step + 1) % every == 0 {
            log.text(state.step + 1, "completions", &completions_markdown(&batches))?;
        }
        let first_pass = uses == 0;
        let lr = schedule.lr(state.step, &schedule_ctx).map_err(|e| TrainError::Config(format!("schedule: {e}")))?;
        stepper.set_lr(lr);
        let total_rows: usize = batches.iter().map(RolloutBatch::rows).sum();
        let total_tokens: usize = batches.iter().map(RolloutBatch::completion_tokens).sum();
        let trained_tokens: usize = batches.iter().map(RolloutBatch::trained_tokens).sum();
        let (mut real, mut padded) = (0, 0);
        stepper.begin(state.step, batches.len());
        for (j, b) in batches.iter().enumerate() {
            // Rows when the loss averages per completion (grpo, or dr_grpo's fixed length), else completion tokens.
            let weight = needs.share(b.rows(), total_rows, b.trained_tokens(), trained_tokens);
            stepper.micro(j, step_args(b, needs, first_pass)?, &b.real, None, weight)?;
            real += b.report.real_tokens;
            padded += b.report.padded_tokens;
        }
        let result = stepper.finish(config, &tuning, &state, &adapter_extra).inspect_err(|_| bar.abandon())?;
        let loss_value = result.loss;
        uses += 1;
        state.step += 1;
        state.epoch = feeder.epoch;
        state.batch_in_epoch = feeder.position;
        last_loss = loss_value;
        real_total += real;
        padded_total += padded;
        let seconds = step_started.elapsed().as_secs_f64();

        let mut record = session::step_record(&state, &result, &stepper.metric_names.borrow(), lr, real, padded);
        record["completion_tokens"] = json!(total_tokens);
        if rollout_cfg.mask_truncated_completions {
            record["completions/masked_tokens"] = json!(total_tokens - trained_tokens);
        }
        record["step_seconds"] = json!(seconds);
        record["fresh_rollouts"] = json!(fresh);
        let summary = summarize(&batches, &names, rollout_cfg.num_generations);
        for (k, v) in &summary {
            record[k] = json!(v);
        }
        if fresh && config.environment.is_some() {
            let mut total = crate::environment::EpisodeStats::default();
            for b in &batches {
                if let Some(e) = &b.report.episodes {
                    total.add(e);
                }
            }
            for (k, v) in total.metrics() {
                record[k.as_str()] = json!(v);
            }
        }
        if fresh && rollout_cfg.dynamic_sampling {
            let sum = |f: fn(&rollout::Topped) -> usize| batches.iter().map(|b| f(&b.report.topped)).sum::<usize>();
            record["dynamic_sampling/rounds"] = json!(sum(|t| t.rounds));
            record["dynamic_sampling/dropped_groups"] = json!(sum(|t| t.dropped));
            record["dynamic_sampling/filled_groups"] = json!(sum(|t| t.filled));
        }
        if fresh {
            let generated: usize = batches.iter().map(|b| b.report.stats.generated_tokens).sum();
            record["rollout_seconds"] = json!(times.sampling);
            record["rollout_tokens_per_second"] = json!(generated as f64 / times.sampling.max(1e-9));
            record["rollout_forward_seconds"] = json!(times.forwards);
        }
        log.write(record.clone())?;
        if let (Some(e), Some(set)) = (&config.eval, &eval_prompts) {
            let last = state.step == train_cfg.steps;
            if last || e.every.is_some_and(|n| state.step % n == 0) {
                let metrics = match validation::evaluate(&mut rollouts, &mut stepper.ts.0, &set.rows, e, data_cfg.batch_size, train_cfg.seed) {
                    Ok(m) => m,
                    // As in training: the finished step is kept, so the run resumes after it.
                    Err(TrainError::Reward(message)) => {
                        bar.abandon();
                        let checkpoint = session::save_checkpoint(config, &tuning, &mut stepper.ts, &state, &adapter_extra)?;
                        return Err(TrainError::RewardFailed { step: state.step, message: format!("[eval]: {message}"), checkpoint });
                    }
                    Err(other) => return Err(other),
                };
                let mut eval_record = json!({"step": state.step});
                eval_record.as_object_mut().map(|o| o.extend(metrics.clone()));
                log.write(eval_record)?;
                bar.println(format!("step {}: eval reward {:.3} over {} prompts", state.step, metrics["eval_reward"].as_f64().unwrap_or(f64::NAN), metrics["eval_prompts"]));
            }
        }
        bar.set_position(state.step);
        let get = |k: &str| record.get(k).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
        let kl = if needs.reference { format!(" kl {:.4}", get("kl")) } else { String::new() };
        bar.set_message(format!(
            "reward {:.3} ±{:.3} len {:.1} clip {:.3}{kl} H {:.3} lr {lr:.2e} {seconds:.1} s/step",
            get("reward"),
            get("reward_std"),
            get("completions/mean_length"),
            get("clip_ratio/region_mean"),
            get("entropy"),
        ));

        if session::end_step(config, &tuning, callback, &mut stepper.ts, &state, loss_value, &mut stopped, &adapter_extra)? {
            break;
        }
    }
    bar.finish_and_clear();
    tuning.save(&mut stepper.ts.0, &out, &adapter_extra)?;
    session::plot_series(&log, &out.join("loss.png"), "GRPO loss", "loss", &[("train loss", "loss", [31, 119, 180])])?;
    let colors = [[44, 160, 44], [255, 127, 14], [148, 103, 189], [214, 39, 40], [140, 86, 75], [227, 119, 194]];
    let keys: Vec<(String, String)> = std::iter::once(("mean reward".to_owned(), "reward".to_owned()))
        .chain(config.eval.as_ref().map(|_| ("eval reward".to_owned(), "eval_reward".to_owned())))
        .chain(if names.len() > 1 { names.iter().map(|n| (n.clone(), format!("rewards/{n}/mean"))).collect() } else { Vec::new() })
        .chain(std::iter::once(("reward std within groups".to_owned(), "group_reward_std".to_owned())))
        .collect();
    let series: Vec<(&str, &str, [u8; 3])> = keys.iter().zip(colors.iter().cycle()).map(|((n, k), c)| (n.as_str(), k.as_str(), *c)).collect();
    session::plot_series(&log, &out.join("reward.png"), "Rewards of the sampled completions", "reward", &series)?;
    session::plot_series(
        &log,
        &out.join("completions.png"),
        "Completion lengths",
        "tokens",
        &[
            ("mean", "completions/mean_length", [31, 119, 180]),
            ("longest", "completions/max_length", [214, 39, 40]),
            ("mean of those ending with EOS", "completions/mean_terminated_length", [44, 160, 44]),
        ],
    )?;
    session::plot_series(
        &log,
        &out.join("policy.png"),
        "Policy statistics",
        "value",
        &[
            ("entropy", "entropy", [31, 119, 180]),
            ("KL to the reference", "kl", [214, 39, 40]),
            ("clipped share of tokens", "clip_ratio/region_mean", [255, 127, 14]),
            ("share of groups with equal rewards", "frac_reward_zero_std", [148, 103, 189]),
        ],
    )?;
    let rewards = log.series("reward");
    let mut notes = Vec::new();
    if !rewards.is_empty() {
        let n = (rewards.len() / 4).clamp(1, 10);
        let mean = |s: &[(f64, f64)]| s.iter().map(|(_, v)| v).sum::<f64>() / s.len() as f64;
        notes.push(format!(
            "mean reward {:.3} over the first {n} steps, {:.3} over the last {n}",
            mean(&rewards[..n]),
            mean(&rewards[rewards.len() - n..])
        ));
    }
    notes.push(format!("completions.jsonl, reward.png, completions.png and policy.png in {}", out.display()));
    Ok(RunOutcome {
        notes,
        steps: state.step,
        last_loss,
        best_eval: None,
        stopped,
        output: out,
        real_tokens: real_total,
        padded_tokens: padded_total,
        seconds: started.elapsed().as_secs_f64(),
        peak_memory_bytes: mlx_rs::memory::peak_memory().unwrap_or(0),
        native: true,
    })
}

/// Metric keys of the reward functions: their plugin names, numbered when one is used twice.
fn reward_names(config: &RunConfig) -> Vec<String> {
    let kinds: Vec<&str> = config.reward.iter().map(|r| r.plugin.kind.as_str()).collect();
    config
        .reward
        .iter()
        .zip(&kinds)
        .enumerate()
        .map(|(i, (r, k))| match &r.name {
            Some(name) => name.clone(),
            None if kinds.iter().filter(|o| *o == k).count() > 1 => format!("{k}_{i}"),
            None => (*k).to_owned(),
        })
        .collect()
}

/// Seconds a step's rollouts took: sampling and scoring, then the extra forwards (reference log-probs,
/// sampling-policy log-probs).
#[derive(Debug, Default, Clone, Copy)]
struct RolloutTimes {
    sampling: f64,
    forwards: f64,
}

/// One step's rollouts: `micro_batches` batches of prompts, each sampled, scored, and given its reference
/// log-probs (β > 0) and, when they will be reused, the sampling policy's log-probs.
#[allow(clippy::too_many_arguments)]
fn produce(
    rollouts: &mut Rollouts<'_>,
    model: &mut crate::model::CausalLm,
    feeder: &mut PromptFeeder<'_>,
    cfg: &RolloutConfig,
    micro_batches: usize,
    source: Option<&ReferenceSource>,
    seed: u64,
    step: u64,
) -> Result<(Vec<RolloutBatch>, RolloutTimes), TrainError> {
    lora::set_dropout_key(model, None)?;
    let mut times = RolloutTimes::default();
    let t = Instant::now();
    // Every micro-batch is sampled with the adapters in their sampling form, switched on once; the log-prob
    // forwards after it must compute exactly what the training step computes, so they run in the training form.
    lora::set_sampling(model, true)?;
    let sampled: Result<Vec<RolloutBatch>, TrainError> = (0..micro_batches)
        .map(|micro| {
            let prompts = feeder.next_batch();
            let micro_seed = rollout_seed(seed, step, micro);
            if !cfg.dynamic_sampling {
                return rollouts.run(model, &prompts, micro_seed);
            }
            let first = rollouts.sample(model, &prompts, micro_seed)?;
            let group = rollouts.group;
            let (scored, topped) = rollout::top_up(first, prompts.len(), group, cfg.max_sampling_rounds, |round| {
                let more = feeder.next_batch();
                rollouts.sample(model, &more, SplitMix::new(micro_seed ^ (round as u64).wrapping_mul(0xa076_1d64_78bd_642f)).next())
            })?;
            let mut batch = rollouts.build(scored);
            batch.report.topped = topped;
            Ok(batch)
        })
        .collect();
    lora::set_sampling(model, false)?;
    let mut out = sampled?;
    times.sampling = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for b in &mut out {
        if let Some(source) = source {
            let r = source.logps(model, &b.inputs, &b.targets, None)?;
            r.eval()?;
            b.reference = Some(r);
        }
        if cfg.num_iterations > 1 {
            let old = step::token_logps(model, &b.inputs, &b.targets, None)?;
            old.eval()?;
            b.old_logps = Some(old);
        }
    }
    times.forwards = t.elapsed().as_secs_f64();
    Ok((out, times))
}

/// The micro step's arguments: inputs, targets, mask, then as the loss asks: reference log-probs,
/// (old log-probs, use-current flag), advantages, rewards, group ids.
fn step_args(b: &RolloutBatch, needs: Needs, first_pass: bool) -> Result<Vec<Array>, TrainError> {
    let mut args = vec![b.inputs.clone(), b.targets.clone(), b.mask.clone()];
    if needs.reference {
        args.push(b.reference.clone().ok_or_else(|| TrainError::Config("the rollouts have no reference log-probs".into()))?);
    }
    if needs.old_policy {
        // On the first pass the policy is the sampling policy: the step uses its own log-probs (ratio 1).
        let stored = match &b.old_logps {
            Some(old) => old.clone(),
            None if first_pass => mlx_rs::ops::zeros_like(&b.mask)?,
            None => return Err(TrainError::Config("reused rollouts have no sampling-policy log-probs".into())),
        };
        args.push(stored);
        args.push(Array::from_f32(if first_pass { 1.0 } else { 0.0 }));
    }
    if needs.advantages {
        args.push(b.advantages.clone());
    }
    if needs.rewards {
        args.push(b.rewards.clone());
    }
    if needs.group_ids {
        args.push(b.group_ids.clone());
    }
    Ok(args)
}

/// Reward and completion statistics over a step's rollouts, named and defined as TRL's GRPOTrainer logs them:
/// `reward` and `reward_std` (mean and Bessel std over all completions), `rewards/<fn>/mean` and `/std` (over
/// the completions a function applies to), `frac_reward_zero_std` (groups without spread), and
/// `completions/*` lengths (all, and those that ended with EOS) with `clipped_ratio`, the share that did not.
/// Ours, where TRL has none: `group_reward_std`, the mean within-group std that the advantages divide by.
pub fn summarize(batches: &[RolloutBatch], names: &[String], group: usize) -> Vec<(String, f64)> {
    let rewards: Vec<f64> = batches.iter().flat_map(|b| b.report.rewards.iter().copied()).collect();
    let mean = |v: &[f64]| if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
    let groups: Vec<f64> = rewards.chunks(group.max(1)).map(rollout::std).collect();
    let lengths: Vec<f64> = batches.iter().flat_map(|b| b.report.completion_lengths.iter().map(|&n| n as f64)).collect();
    let terminated: Vec<f64> = batches
        .iter()
        .flat_map(|b| b.report.completion_lengths.iter().zip(&b.report.ended_with_eos).filter(|(_, &eos)| eos).map(|(&n, _)| n as f64))
        .collect();
    // TRL reports 0 for the terminated lengths when no completion terminated.
    let or_zero = |v: &[f64]| if v.is_empty() { vec![0.0] } else { v.to_vec() };
    let (lengths_or_zero, terminated_or_zero) = (or_zero(&lengths), or_zero(&terminated));
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut out = vec![
        ("reward".to_owned(), mean(&rewards)),
        ("reward_std".to_owned(), rollout::std(&rewards)),
        ("frac_reward_zero_std".to_owned(), groups.iter().filter(|&&s| s < 1e-9).count() as f64 / groups.len().max(1) as f64),
        ("group_reward_std".to_owned(), mean(&groups)),
        ("completions/mean_length".to_owned(), mean(&lengths_or_zero)),
        ("completions/min_length".to_owned(), min(&lengths_or_zero)),
        ("completions/max_length".to_owned(), max(&lengths_or_zero)),
        ("completions/clipped_ratio".to_owned(), 1.0 - terminated.len() as f64 / lengths.len().max(1) as f64),
        ("completions/mean_terminated_length".to_owned(), mean(&terminated_or_zero)),
        ("completions/min_terminated_length".to_owned(), min(&terminated_or_zero)),
        ("completions/max_terminated_length".to_owned(), max(&terminated_or_zero)),
    ];
    for (k, name) in names.iter().enumerate() {
        let applicable: Vec<f64> = batches.iter().flat_map(|b| b.report.per_function.get(k).map(|(_, s)| s.iter().flatten().copied().collect::<Vec<_>>()).unwrap_or_default()).collect();
        if !applicable.is_empty() {
            out.push((format!("rewards/{name}/mean"), mean(&applicable)));
            out.push((format!("rewards/{name}/std"), rollout::std(&applicable)));
        }
    }
    out
}

/// A step's completions as a markdown table for TensorBoard's text plugin: prompt, completion, each reward
/// function's score, the combined reward and the advantage.
fn completions_markdown(batches: &[RolloutBatch]) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', "<br>");
    let names: Vec<&str> = batches.first().map(|b| b.report.per_function.iter().map(|(n, _)| n.as_str()).collect()).unwrap_or_default();
    let mut text = format!("| prompt | completion | {} | reward | advantage |\n|{}\n", names.join(" | "), "---|".repeat(names.len() + 4));
    for b in batches {
        let r = &b.report;
        for i in 0..b.rows() {
            let scores: Vec<String> = r.per_function.iter().map(|(_, s)| s[i].map_or("–".to_owned(), |v| format!("{v:.3}"))).collect();
            text.push_str(&format!("| {} | {} | {} | {:.3} | {:.3} |\n", cell(&r.prompts[i]), cell(&r.texts[i]), scores.join(" | "), r.rewards[i], r.advantages[i]));
        }
    }
    text
}

/// Appends each completion of a rollout batch to `completions.jsonl`: what the model wrote and how it scored.
fn write_completions(file: &mut std::fs::File, path: &std::path::Path, step: u64, b: &RolloutBatch) -> Result<(), TrainError> {
    let mut text = String::new();
    for i in 0..b.rows() {
        let scores: serde_json::Map<String, serde_json::Value> =
            b.report.per_function.iter().map(|(name, s)| (name.clone(), s[i].map_or(serde_json::Value::Null, |v| json!(v)))).collect();
        let line = json!({
            "step": step, "prompt_line": b.report.prompt_lines[i], "completion": b.report.texts[i],
            "reward": b.report.rewards[i], "advantage": b.report.advantages[i], "rewards": scores,
            "tokens": b.report.completion_lengths[i],
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    file.write_all(text.as_bytes()).map_err(io(path))
}
