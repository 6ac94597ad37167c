//! Training runs with LoRA/DoRA/QLoRA driven by a run configuration: supervised fine-tuning and the
//! preference losses (pairs, labelled rows, reference log-probs), whatever loss plugin the configuration names.

pub mod checkpoint;
pub mod grpo;
pub mod inputs;
pub mod memory;
mod metrics;
pub mod mlx_lm;
mod optimizer;
#[cfg(test)]
mod packing_tests;
pub mod plot;
pub mod reference;
pub mod reward_model;
pub mod rollout;
mod session;
mod split_head;
mod step;
pub use step::{logps_from_hidden, LOGIT_CHUNK_ELEMENTS};
mod stepper;
pub mod tuning;
mod validation;

use std::{
    path::{Path, PathBuf},
    rc::Rc,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use mlx_rs::Array;
use serde_json::json;
use sdk::Loss;
use thiserror::Error;

pub use checkpoint::TrainerState;
pub use optimizer::TrainOptimizer;
pub use step::{token_logps, GradBuffer, TrainState};

use inputs::{batch_arrays, loss_inputs, Needs};
use reference::{partner, ReferenceSource, ReferenceTable};

use crate::{
    config::{Backend, ReferenceMode, RunConfig},
    data::{assemble, plan_epoch, plan_packed_epoch, Batch, BatchSize, DataError, DataOptions, Dataset, Item, PackInto},
    lora::{self, LoraError},
    model::{self, hub, LoadOptions, ModelError},
    plugins::{Registry, RegistryError},
    text::TextTokenizer,
};

#[derive(Debug, Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("MLX: {0}")]
    Mlx(String),
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("{0}")]
    Config(String),
    #[error("step {step}: the {what} is {value}; stopped without applying the update, checkpoint at {}", checkpoint.display())]
    NonFinite { step: u64, what: &'static str, value: f64, checkpoint: PathBuf },
    /// A reward function failed (crashed, timed out, returned the wrong shape); the message names it.
    #[error("{0}")]
    Reward(String),
    #[error("step {step}: {message}; stopped, checkpoint of the last finished step at {}", checkpoint.display())]
    RewardFailed { step: u64, message: String, checkpoint: PathBuf },
}

impl From<mlx_rs::error::Exception> for TrainError {
    fn from(e: mlx_rs::error::Exception) -> Self {
        // Some MLX messages dump whole state layouts; a screenful says what went wrong.
        const LIMIT: usize = 2000;
        let what = e.what();
        if what.len() <= LIMIT {
            return TrainError::Mlx(what.to_owned());
        }
        let mut cut = LIMIT;
        while !what.is_char_boundary(cut) {
            cut -= 1;
        }
        TrainError::Mlx(format!("{} … ({} more characters)", &what[..cut], what.len() - cut))
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Asks a running training loop to stop after the current step, with a checkpoint (the Ctrl-C handler).
pub fn request_stop() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// The checkpoint `<output>/checkpoints/latest` names.
    Latest,
    From(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Completed,
    EarlyStopped,
    Interrupted,
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub steps: u64,
    pub last_loss: f64,
    pub best_eval: Option<(f64, u64)>,
    pub stopped: StopReason,
    pub output: PathBuf,
    pub real_tokens: usize,
    pub padded_tokens: usize,
    pub seconds: f64,
    pub peak_memory_bytes: usize,
    /// False when mlx_lm.lora did the training (token counts and memory are then not measured here).
    pub native: bool,
    /// What the trainer adds to the summary (GRPO: how the mean reward moved).
    pub notes: Vec<String>,
}

/// One optimizer step's worth of micro-batches.
struct StepBatches {
    batches: Vec<Batch>,
    supervised: usize,
    units: usize,
}

impl StepBatches {
    /// A micro-batch's share of the step: of its pairs or rows for per-row losses, else of its supervised tokens.
    fn weight(&self, b: &Batch, needs: Needs) -> f32 {
        needs.share(b.units(), self.units, b.supervised, self.supervised)
    }
}

/// How batches are put together for a run.
#[derive(Clone, Copy)]
struct Batching<'t> {
    pad_multiple: usize,
    max_len: usize,
    kl_pairs: bool,
    table: Option<&'t ReferenceTable>,
    /// With `[data] packing`: what each batch is packed into, and how many rows an item has (2 for pairs).
    pack: Option<(PackInto, usize)>,
}

impl Batching<'_> {
    /// One epoch's batches of dataset entries.
    fn plan(&self, lengths: &[usize], size: BatchSize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
        match self.pack {
            Some((into, rows_per_item)) => plan_packed_epoch(lengths, rows_per_item, into, seed, epoch),
            None => plan_epoch(lengths, size, seed, epoch),
        }
    }
}

/// The batch of these dataset entries, with precomputed reference log-probs when there is a table; `None`
/// for no entries.
fn build_batch(dataset: &mut Dataset, t: &TextTokenizer, indices: &[usize], how: Batching<'_>) -> Result<Option<Batch>, TrainError> {
    let mut present: Vec<(usize, Item)> = Vec::new();
    let mut partners = Vec::new();
    for &i in indices {
        let item = dataset.item(i, t)?;
        if how.kl_pairs {
            partners.push(partner(dataset, i, t)?);
        }
        present.push((i, item));
    }
    if present.is_empty() {
        return Ok(None);
    }
    let items: Vec<&Item> = present.iter().map(|(_, item)| item).collect();
    let partner_refs: Vec<&Item> = partners.iter().collect();
    let mut batch = assemble(&items, how.kl_pairs.then_some(&partner_refs[..]), how.pad_multiple, how.max_len, how.pack.map(|(into, _)| into));
    if let Some(table) = how.table {
        let indices: Vec<usize> = present.iter().map(|(i, _)| *i).collect();
        let missing = || TrainError::Config(format!("{}: a row has no precomputed reference log-probs", dataset.path().display()));
        let (rows, kl) = table.rows(&indices, items[0].examples.len()).ok_or_else(missing)?;
        batch.set_reference(&rows);
        if let Some(kl_batch) = batch.kl.as_deref_mut() {
            kl_batch.set_reference(&kl.ok_or_else(missing)?);
        }
    }
    Ok(Some(batch))
}

/// Walks the epochs' batch plans from a saved position, tokenizing on demand.
struct Feeder<'a> {
    dataset: &'a mut Dataset,
    tokenizer: &'a TextTokenizer,
    batch_size: BatchSize,
    how: Batching<'a>,
    seed: u64,
    epoch: u64,
    position: usize,
    plan: Vec<Vec<usize>>,
}

impl<'a> Feeder<'a> {
    fn new(dataset: &'a mut Dataset, tokenizer: &'a TextTokenizer, batch_size: BatchSize, how: Batching<'a>, seed: u64, epoch: u64, position: usize) -> Self {
        let plan = how.plan(dataset.lengths(), batch_size, seed, epoch);
        Feeder { dataset, tokenizer, batch_size, how, seed, epoch, position, plan }
    }

    fn next_batch(&mut self) -> Result<Batch, TrainError> {
        loop {
            if self.position >= self.plan.len() {
                self.epoch += 1;
                self.position = 0;
                self.plan = self.how.plan(self.dataset.lengths(), self.batch_size, self.seed, self.epoch);
            }
            let indices = self.plan[self.position].clone();
            self.position += 1;
            if let Some(batch) = build_batch(self.dataset, self.tokenizer, &indices, self.how)? {
                return Ok(batch);
            }
        }
    }
}

/// Rank 0's validation loss and metrics on every rank: the decisions taken from them (the best checkpoint,
/// early stopping) must be the same everywhere, and ranks on different machines may round differently.
fn rank_zeros_values(eval: f64, metrics: Vec<(String, f64)>) -> Result<(f64, Vec<(String, f64)>), TrainError> {
    let world = crate::dist::world();
    if world.size() == 1 {
        return Ok((eval, metrics));
    }
    let mine: Vec<f64> = std::iter::once(eval).chain(metrics.iter().map(|(_, v)| *v)).map(|v| if world.is_main() { v } else { 0.0 }).collect();
    let all = world.merge_slots(&mine)?;
    Ok((all[0], metrics.into_iter().zip(&all[1..]).map(|((n, _), v)| (n, *v)).collect()))
}

/// Refuses to start when the ranks were given different configurations (they would issue different
/// collectives and hang, or silently train different things).
fn same_config_everywhere(config: &RunConfig) -> Result<(), TrainError> {
    let world = crate::dist::world();
    if world.size() == 1 {
        return Ok(());
    }
    let text = toml::to_string(config).map_err(|e| TrainError::Config(format!("configuration: {e}")))?;
    let digest = u64::from_str_radix(&crate::data::cache_key(&[text.as_bytes()])[..16], 16).unwrap_or(0);
    let all = world.gather_u64(digest)?;
    match all.iter().position(|&d| d != all[0]) {
        Some(r) => Err(TrainError::Config(format!("rank {r} was started with a different configuration from rank 0's (compare their resolved settings)"))),
        None => Ok(()),
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Io { path: path.to_owned(), message: e.to_string() }
}

/// A scalar result, evaluating it: an MLX failure here (an out-of-memory, a backend error) is an error of
/// the step, not a panic.
fn scalar(a: &Array) -> Result<f64, TrainError> {
    a.eval()?;
    a.try_item_exact::<f32>().map(f64::from).map_err(|e| TrainError::Mlx(e.to_string()))
}

/// The validation loss and metrics, adapters as they are, no dropout: each batch weighted as in training
/// (by supervised tokens, or by pairs or rows for per-row losses).
fn evaluate(model: &mut crate::model::CausalLm, loss: &dyn Loss, needs: Needs, source: Option<&ReferenceSource>, batches: &[Batch]) -> Result<(f64, Vec<(String, f64)>), TrainError> {
    let (mut total, mut weight) = (0.0, 0.0);
    let mut metrics: Vec<(String, f64)> = Vec::new();
    let key = mlx_rs::random::key(0)?;
    for b in batches {
        let args = batch_arrays(b, needs, model, source)?;
        let logps = token_logps(model, &args[0], &args[1], b.packed.as_ref())?;
        let mut old = None;
        let inputs = loss_inputs(needs, &args, &logps, needs.rng.then_some(&key), &mut old)?;
        let out = loss.forward(&inputs).map_err(|e| TrainError::Mlx(e.to_string()))?;
        let w = if needs.per_row() { b.units() } else { b.supervised } as f64;
        total += scalar(&out.loss)? * w;
        weight += w;
        if metrics.is_empty() {
            metrics = out.metrics.iter().map(|(n, _)| (n.clone(), 0.0)).collect();
        }
        for ((_, sum), (_, v)) in metrics.iter_mut().zip(&out.metrics) {
            *sum += scalar(v)? * w;
        }
    }
    let weight = weight.max(1.0);
    Ok((total / weight, metrics.into_iter().map(|(n, v)| (n, v / weight)).collect()))
}

/// Told about every optimizer step; may stop the run (with a checkpoint), as Ctrl-C does.
pub trait StepCallback {
    fn after_step(&mut self, step: u64, loss: f64) -> crate::generate::Control;
}

struct NoCallback;

impl StepCallback for NoCallback {
    fn after_step(&mut self, _step: u64, _loss: f64) -> crate::generate::Control {
        crate::generate::Control::Continue
    }
}

/// Runs the training a configuration describes.
pub fn run(config: &RunConfig, registry: &Registry, resume: Option<&Resume>) -> Result<RunOutcome, TrainError> {
    run_with(config, registry, resume, &mut NoCallback)
}

/// [`run`] with a callback after every step.
pub fn run_with(config: &RunConfig, registry: &Registry, resume: Option<&Resume>, callback: &mut dyn StepCallback) -> Result<RunOutcome, TrainError> {
    if let Some(command) = mlx_lm_command(config, resume)? {
        if crate::dist::world().size() > 1 {
            return Err(TrainError::Config("[train] backend: mlx_lm.lora runs as one process here; data parallelism needs the native trainer".into()));
        }
        return run_mlx_lm(config, &command);
    }
    same_config_everywhere(config)?;
    let data_cfg = config.data.as_ref().ok_or_else(|| session::missing("data"))?;
    let train_cfg = &config.train;
    let out = config.output_dir();
    std::fs::create_dir_all(&out).map_err(io(&out))?;

    let loss: Rc<dyn Loss> = Rc::from(registry.loss(&config.loss.kind, &config.loss.config)?);
    let needs = Needs::of(&config.loss.kind, loss.requirements())?;
    if needs.rollout() {
        return grpo::run(config, registry, loss, needs, resume, callback);
    }

    let session::Policy { dir, load_options, tokenizer, mut model, tuning } = session::load_policy(config, registry)?;
    let reference_cfg = config.reference.clone().unwrap_or_default();
    let (source, source_identity) = if needs.reference {
        reference_source(&dir, reference_cfg.model.as_deref(), &load_options)?
    } else {
        (None, Vec::new())
    };

    let data_options = DataOptions {
        masking: data_cfg.masking(needs.shape()),
        max_seq_length: data_cfg.max_seq_length,
        skip_bad_rows: data_cfg.skip_bad_rows,
        shape: needs.shape(),
    };
    let mut policy = registry.data_cache_policy(&data_cfg.cache.kind, &data_cfg.cache.config)?;
    let tokenizer_file = dir.join("tokenizer.json");
    let mut train_set = Dataset::load(&data_cfg.train, &tokenizer, data_options, &mut *policy, &tokenizer_file)?;
    eprintln!("train data: {}{}", train_set.stats.describe(), if train_set.cache_hit { " (tokens from the data cache)" } else { "" });
    let mut valid_set = match &data_cfg.valid {
        Some(path) => {
            let valid = Dataset::load(path, &tokenizer, data_options, &mut *policy, &tokenizer_file)?;
            eprintln!("valid data: {}", valid.stats.describe());
            Some(valid)
        }
        None => None,
    };

    // Precomputed reference log-probs: one pass over each dataset now, then the reference model is dropped.
    let precomputed = needs.reference && reference_cfg.mode == ReferenceMode::Precomputed;
    let (mut train_table, mut valid_table) = (None, None);
    let source = match source {
        Some(source) if precomputed => {
            let started = Instant::now();
            let build = |set: &mut Dataset, model: &mut crate::model::CausalLm, policy: &mut dyn sdk::DataCachePolicy| {
                ReferenceTable::build(set, &tokenizer, &source, model, &source_identity, needs.kl_pairs, data_cfg.batch_size, data_cfg.max_seq_length, policy)
            };
            let table = build(&mut train_set, &mut model, &mut *policy)?;
            let hit = table.cache_hit;
            train_table = Some(table);
            if let Some(valid) = &mut valid_set {
                valid_table = Some(build(valid, &mut model, &mut *policy)?);
            }
            eprintln!(
                "reference log-probs {} ({:.1} s)",
                if hit { "from the data cache" } else { "precomputed" },
                started.elapsed().as_secs_f64()
            );
            None
        }
        other => other,
    };
    let batch_size = BatchSize { rows: data_cfg.batch_size, max_tokens: data_cfg.max_batch_tokens };
    // Packed sequences hold a longest row: `max_seq_length` tokens, rounded up for the fused kernels' shapes.
    let pack = data_cfg.packing.then(|| {
        let width = data_cfg.max_seq_length.div_ceil(data_cfg.pad_multiple.max(1)) * data_cfg.pad_multiple.max(1);
        (PackInto { bins: data_cfg.batch_size, width }, if needs.pairs { 2 } else { 1 })
    });
    let batching = |table| Batching { pad_multiple: data_cfg.pad_multiple, max_len: data_cfg.max_seq_length, kl_pairs: needs.kl_pairs, table, pack };
    let valid_batches: Vec<Batch> = match &mut valid_set {
        Some(valid) => {
            let mut plan = batching(None).plan(valid.lengths(), batch_size, train_cfg.seed, 0);
            if let Some(n) = train_cfg.eval_batches {
                plan.truncate(n);
            }
            let mut batches = Vec::with_capacity(plan.len());
            for indices in plan {
                batches.extend(build_batch(valid, &tokenizer, &indices, batching(valid_table.as_ref()))?);
            }
            batches
        }
        None => Vec::new(),
    };

    // Checkpointing: the longest batch of the data bounds what a step keeps.
    let longest = train_set.lengths().iter().copied().max().unwrap_or(0).min(data_cfg.max_seq_length);
    let batch_rows = match data_cfg.max_batch_tokens {
        Some(budget) => data_cfg.batch_size.min((budget / longest.max(1)).max(1)),
        None => data_cfg.batch_size,
    };
    match pack {
        Some((into, _)) => session::set_checkpointing(config, &mut model, &tuning, into.bins, into.width),
        None => session::set_checkpointing(config, &mut model, &tuning, batch_rows * if needs.pairs { 2 } else { 1 }, longest),
    }

    let (schedule, schedule_ctx) = config.build_schedule(registry)?;
    let (optimizer, rng, mut state) = session::start_state(config, &mut model, &tuning, resume)?;

    let mut stepper = stepper::Stepper::new(config, model, optimizer, rng, loss.clone(), needs, false)?;

    let adapter_extra = session::adapter_extra(
        config,
        &[
            ("batch_size", json!(data_cfg.batch_size)),
            ("max_seq_length", json!(data_cfg.max_seq_length)),
            ("mask_prompt", json!(data_options.masking != crate::data::Masking::None)),
        ],
    );

    let mut log = metrics::MetricsLog::open(&out, resume.map(|_| state.step), &config.output)?;
    let bar = metrics::progress_bar(train_cfg.steps, state.step);
    let mut feeder = Feeder::new(&mut train_set, &tokenizer, batch_size, batching(train_table.as_ref()), train_cfg.seed, state.epoch, state.batch_in_epoch);
    let started = Instant::now();
    let _ = mlx_rs::memory::reset_peak_memory();
    let (mut real_total, mut padded_total) = (0usize, 0usize);
    let mut last_loss = f64::NAN;
    let mut stopped = StopReason::Completed;
    INTERRUPTED.store(false, Ordering::SeqCst);


    while state.step < train_cfg.steps {
        let step_started = Instant::now();
        let mut micro_batches = StepBatches { batches: Vec::new(), supervised: 0, units: 0 };
        for _ in 0..train_cfg.grad_accumulation_steps {
            let b = feeder.next_batch()?;
            micro_batches.supervised += b.supervised;
            micro_batches.units += b.units();
            micro_batches.batches.push(b);
        }
        let lr = schedule.lr(state.step, &schedule_ctx).map_err(|e| TrainError::Config(format!("schedule: {e}")))?;
        stepper.set_lr(lr);
        let (mut real, mut padded) = (0, 0);
        stepper.begin(state.step, micro_batches.batches.len());
        // Every rank walks every micro-batch (their weights are shares of the whole step) and computes its own.
        for (j, b) in micro_batches.batches.iter().enumerate() {
            real += b.real_tokens;
            padded += b.padded_tokens;
            if !stepper.owns(j) {
                continue;
            }
            let weight = micro_batches.weight(b, needs);
            let args = batch_arrays(b, needs, &mut stepper.ts.0, source.as_ref())?;
            stepper.micro(j, args, &b.real, b.packed.as_ref(), weight)?;
        }
        let result = stepper.finish(config, &tuning, &state, &adapter_extra).inspect_err(|_| bar.abandon())?;
        let loss_value = result.loss;
        state.step += 1;
        state.epoch = feeder.epoch;
        state.batch_in_epoch = feeder.position;
        last_loss = loss_value;
        real_total += real;
        padded_total += padded;
        let seconds = step_started.elapsed().as_secs_f64();
        let names = stepper.metric_names.borrow().clone();
        let mut record = session::step_record(&state, &result, &names, lr, real, padded);
        record["supervised_tokens"] = json!(micro_batches.supervised);
        record["tokens_per_second"] = json!(real as f64 / seconds.max(1e-9));
        record["step_seconds"] = json!(seconds);
        log.write(record)?;
        bar.set_position(state.step);
        let preference = preference_summary(&names, &result.metrics);
        bar.set_message(format!("loss {loss_value:.4}{preference} lr {lr:.2e} {:.0} tok/s", real as f64 / seconds.max(1e-9)));

        if let Some(every) = train_cfg.eval_every {
            if state.step % every == 0 || state.step == train_cfg.steps {
                let (eval, eval_metrics) = evaluate(&mut stepper.ts.0, &*loss, needs, source.as_ref(), &valid_batches)?;
                let (eval, eval_metrics) = rank_zeros_values(eval, eval_metrics)?;
                let mut record = json!({"step": state.step, "eval_loss": eval});
                for (name, v) in &eval_metrics {
                    record[format!("eval_{name}")] = json!(v);
                }
                log.write(record)?;
                let (names, values): (Vec<String>, Vec<f64>) = eval_metrics.into_iter().unzip();
                bar.println(format!("step {}: eval loss {eval:.4}{}", state.step, preference_summary(&names, &values)));
                if state.best_eval.is_none_or(|(best, _)| eval < best) {
                    state.best_eval = Some((eval, state.step));
                    state.evals_since_best = 0;
                    let mut extra = adapter_extra.clone();
                    extra.insert("best_eval_loss".into(), json!(eval));
                    extra.insert("best_step".into(), json!(state.step));
                    if crate::dist::world().is_main() {
                        tuning.save(&mut stepper.ts.0, &out.join("best"), &extra)?;
                    }
                } else {
                    state.evals_since_best += 1;
                    if train_cfg.early_stopping_patience.is_some_and(|p| state.evals_since_best >= p) {
                        stopped = StopReason::EarlyStopped;
                    }
                }
            }
        }
        if session::end_step(config, &tuning, callback, &mut stepper.ts, &state, loss_value, &mut stopped, &adapter_extra)? {
            break;
        }
    }
    bar.finish_and_clear();
    if crate::dist::world().is_main() {
        tuning.save(&mut stepper.ts.0, &out, &adapter_extra)?;
    }
    session::plot_series(&log, &out.join("loss.png"), "Training loss", "loss", &[("train loss", "loss", [31, 119, 180]), ("eval loss", "eval_loss", [214, 39, 40])])?;
    session::plot_series(
        &log,
        &out.join("rewards.png"),
        "Implicit rewards of the preference loss",
        "reward",
        &[
            ("reward margin", "rewards/margins", [44, 160, 44]),
            ("preference accuracy", "rewards/accuracies", [255, 127, 14]),
            ("chosen reward", "rewards/chosen", [31, 119, 180]),
            ("rejected reward", "rewards/rejected", [214, 39, 40]),
        ],
    )?;
    Ok(RunOutcome {
        steps: state.step,
        last_loss,
        best_eval: state.best_eval,
        stopped,
        output: out,
        real_tokens: real_total,
        padded_tokens: padded_total,
        seconds: started.elapsed().as_secs_f64(),
        peak_memory_bytes: mlx_rs::memory::peak_memory().unwrap_or(0),
        native: true,
        notes: Vec::new(),
    })
}

/// " acc 0.75 margin 0.123" when the loss reports preference metrics.
fn preference_summary(names: &[String], values: &[f64]) -> String {
    let find = |n: &str| names.iter().position(|x| x == n).and_then(|i| values.get(i).copied());
    let mut s = String::new();
    if let Some(acc) = find("rewards/accuracies") {
        s.push_str(&format!(" acc {acc:.2}"));
    }
    if let Some(margin) = find("rewards/margins") {
        s.push_str(&format!(" margin {margin:.3}"));
    }
    s
}

/// The reference a loss compares with: a separate model when `[reference] model` names one (same tokenizer
/// required), else the policy with adapters off. Also the bytes that identify it for precomputed tables.
fn reference_source(base: &Path, model: Option<&str>, options: &LoadOptions) -> Result<(Option<ReferenceSource>, Vec<u8>), TrainError> {
    let mut identity = format!("{:?} {:?}", options.dtype, options.quantize.map(|q| (q.bits, q.group_size))).into_bytes();
    match model {
        None => {
            identity.extend_from_slice(b"adapters_off");
            identity.extend(model::fingerprint(base)?);
            Ok((Some(ReferenceSource::AdaptersOff), identity))
        }
        Some(path) => {
            let dir = hub::resolve(path)?;
            let (ours, theirs) = (base.join("tokenizer.json"), dir.join("tokenizer.json"));
            let read = |p: &Path| std::fs::read(p).map_err(io(p));
            if read(&ours)? != read(&theirs)? {
                return Err(TrainError::Config(format!(
                    "[reference] model: {} has another tokenizer than the policy's {}; log-probs would not be comparable",
                    theirs.display(),
                    ours.display()
                )));
            }
            let loaded = model::load(&dir, options)?;
            eprintln!("reference model: {}", dir.display());
            identity.extend_from_slice(b"model");
            identity.extend(model::fingerprint(&dir)?);
            Ok((Some(ReferenceSource::Model(Box::new(loaded.model))), identity))
        }
    }
}

/// Hands the run to mlx_lm.lora.
fn run_mlx_lm(config: &RunConfig, command: &[String]) -> Result<RunOutcome, TrainError> {
    let started = Instant::now();
    let out = config.output_dir();
    std::fs::create_dir_all(&out).map_err(io(&out))?;
    mlx_lm::run(config, command)?;
    Ok(RunOutcome {
        steps: config.train.steps,
        // mlx-lm reports its losses on its own output.
        last_loss: f64::NAN,
        best_eval: None,
        stopped: StopReason::Completed,
        output: out,
        real_tokens: 0,
        padded_tokens: 0,
        seconds: started.elapsed().as_secs_f64(),
        peak_memory_bytes: 0,
        native: false,
        notes: Vec::new(),
    })
}

/// The backend a configuration gets: mlx_lm.lora when asked for, or (`auto`) when the model's family is not
/// implemented here and mlx-lm is installed; otherwise the native trainer.
fn mlx_lm_command(config: &RunConfig, resume: Option<&Resume>) -> Result<Option<Vec<String>>, TrainError> {
    let backend = config.train.backend;
    // mlx_lm.lora trains adapters only here: full fine-tuning is native (configuration checks refuse
    // backend = "mlx_lm" with it).
    if backend == Backend::Native || config.train.mode == crate::config::TrainMode::Full {
        return Ok(None);
    }
    let native_ok = match (&config.model, backend) {
        (Some(m), Backend::Auto) => {
            let dir = hub::resolve(&m.path)?;
            let path = dir.join("config.json");
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let model_type = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("model_type").and_then(|t| t.as_str()).map(str::to_owned))
                .unwrap_or_default();
            if model::supported_model_types().contains(&model_type) {
                true
            } else {
                eprintln!("model_type `{model_type}` is not implemented natively; trying mlx_lm.lora (backend = \"auto\")");
                false
            }
        }
        _ => false,
    };
    if native_ok {
        return Ok(None);
    }
    if resume.is_some() {
        return Err(TrainError::Config("--resume applies to native runs only".into()));
    }
    match mlx_lm::locate() {
        Some(command) => {
            eprintln!("training with mlx_lm.lora ({})", command.join(" "));
            Ok(Some(command))
        }
        None => Err(TrainError::Config(
            "mlx_lm.lora is not installed (pip install mlx-lm, or set MLX_LM_PYTHON to a Python that has it)".into(),
        )),
    }
}
