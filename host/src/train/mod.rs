//! Training runs: supervised fine-tuning with LoRA/DoRA/QLoRA, driven by a run configuration.

pub mod checkpoint;
pub mod memory;
mod metrics;
pub mod mlx_lm;
mod optimizer;
pub mod plot;
mod step;

use std::{
    cell::RefCell,
    path::{Path, PathBuf},
    rc::Rc,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use mlx_rs::{random::RandomState, transforms::compile::compile_with_state, Array};
use serde_json::json;
use sdk::{Loss, LossInputs};
use thiserror::Error;

pub use checkpoint::TrainerState;
pub use optimizer::TrainOptimizer;
pub use step::{token_logps, GradBuffer, TrainState};

use crate::{
    config::{Backend, RunConfig},
    data::{collate, plan_epoch, Batch, DataError, DataOptions, Dataset},
    lora::{self, LoraError, LoraSettings},
    model::{self, hub, LoadOptions, ModelError},
    nn::Quant,
    optim::LearningRate,
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
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("{0}")]
    Config(String),
    #[error("step {step}: the loss is {value}; stopped without applying it, checkpoint at {}", checkpoint.display())]
    NonFinite { step: u64, value: f64, checkpoint: PathBuf },
}

impl From<mlx_rs::error::Exception> for TrainError {
    fn from(e: mlx_rs::error::Exception) -> Self {
        TrainError::Mlx(e.what().to_owned())
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
}

/// One optimizer step's worth of micro-batches.
struct StepBatches {
    batches: Vec<Batch>,
    supervised: usize,
}

/// Walks the epochs' batch plans from a saved position, tokenizing on demand.
struct Feeder<'a> {
    dataset: &'a mut Dataset,
    tokenizer: &'a TextTokenizer,
    batch_size: usize,
    pad_multiple: usize,
    seed: u64,
    epoch: u64,
    position: usize,
    plan: Vec<Vec<usize>>,
}

impl<'a> Feeder<'a> {
    fn new(dataset: &'a mut Dataset, tokenizer: &'a TextTokenizer, batch_size: usize, pad_multiple: usize, seed: u64, epoch: u64, position: usize) -> Self {
        let plan = plan_epoch(dataset.lengths(), batch_size, seed, epoch);
        Feeder { dataset, tokenizer, batch_size, pad_multiple, seed, epoch, position, plan }
    }

    fn next_batch(&mut self) -> Result<Batch, TrainError> {
        loop {
            if self.position >= self.plan.len() {
                self.epoch += 1;
                self.position = 0;
                self.plan = plan_epoch(self.dataset.lengths(), self.batch_size, self.seed, self.epoch);
            }
            let indices = self.plan[self.position].clone();
            self.position += 1;
            let mut examples = Vec::with_capacity(indices.len());
            for i in indices {
                if let Some(e) = self.dataset.example(i, self.tokenizer)? {
                    examples.push(e);
                }
            }
            if !examples.is_empty() {
                let refs: Vec<&crate::data::Example> = examples.iter().collect();
                return Ok(collate(&refs, self.pad_multiple, 0));
            }
        }
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Io { path: path.to_owned(), message: e.to_string() }
}

fn scalar(a: &Array) -> f64 {
    f64::from(a.item_exact::<f32>())
}

/// Token-weighted mean loss of the validation batches, adapters as they are, no dropout.
fn evaluate(model: &crate::model::CausalLm, loss: &dyn Loss, batches: &[Batch]) -> Result<f64, TrainError> {
    let (mut total, mut tokens) = (0.0, 0usize);
    for b in batches {
        let logps = token_logps(model, &b.inputs, &b.targets)?;
        let out = loss.forward(&LossInputs::new(&logps, &b.mask)).map_err(|e| TrainError::Mlx(e.to_string()))?;
        total += scalar(&out.loss) * b.supervised as f64;
        tokens += b.supervised;
    }
    Ok(total / tokens.max(1) as f64)
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
        return run_mlx_lm(config, &command);
    }
    let missing = |s: &str| TrainError::Config(format!("training needs a [{s}] section"));
    let model_cfg = config.model.as_ref().ok_or_else(|| missing("model"))?;
    let lora_cfg = config.lora.as_ref().ok_or_else(|| missing("lora"))?;
    let data_cfg = config.data.as_ref().ok_or_else(|| missing("data"))?;
    let train_cfg = &config.train;
    let out = config.output_dir();
    std::fs::create_dir_all(&out).map_err(io(&out))?;

    let loss: Rc<dyn Loss> = Rc::from(registry.loss(&config.loss.kind, &config.loss.config)?);
    let needs = loss.requirements();
    if needs != sdk::Requirements::default() {
        return Err(TrainError::Config(format!(
            "loss `{}` needs {:?}, which the supervised trainer does not compute",
            config.loss.kind, needs
        )));
    }

    let dir = hub::resolve(&model_cfg.path)?;
    let dtype = model_cfg.dtype.as_deref().and_then(model::parse_dtype);
    let quantize = model_cfg.quantize.map(|q| Quant { bits: q.bits, group_size: q.group_size });
    let loaded = model::load(&dir, &LoadOptions { dtype, quantize })?;
    let tokenizer = TextTokenizer::load(&dir)?;
    let mut model = loaded.model;
    let mapper = registry.lora_target_mapper(&lora_cfg.mapper.kind, &lora_cfg.mapper.config)?;
    let settings = LoraSettings { rank: lora_cfg.rank, scale: lora_cfg.scale, dropout: lora_cfg.dropout, dora: lora_cfg.dora, last_n_layers: lora_cfg.last_n_layers };
    let summary = lora::apply(&mut model, &*mapper, &settings, train_cfg.seed)?;
    eprintln!("{}", summary.describe());

    let data_options = DataOptions { masking: data_cfg.mask, max_seq_length: data_cfg.max_seq_length, skip_bad_rows: data_cfg.skip_bad_rows };
    let mut policy = registry.data_cache_policy(&data_cfg.cache.kind, &data_cfg.cache.config)?;
    let tokenizer_file = dir.join("tokenizer.json");
    let mut train_set = Dataset::load(&data_cfg.train, &tokenizer, data_options, &mut *policy, &tokenizer_file)?;
    eprintln!("train data: {}{}", train_set.stats.describe(), if train_set.cache_hit { " (tokens from the data cache)" } else { "" });
    let valid_batches: Vec<Batch> = match &data_cfg.valid {
        Some(path) => {
            let mut valid = Dataset::load(path, &tokenizer, data_options, &mut *policy, &tokenizer_file)?;
            eprintln!("valid data: {}", valid.stats.describe());
            let mut plan = plan_epoch(valid.lengths(), data_cfg.batch_size, train_cfg.seed, 0);
            if let Some(n) = train_cfg.eval_batches {
                plan.truncate(n);
            }
            let mut batches = Vec::with_capacity(plan.len());
            for indices in plan {
                let mut examples = Vec::new();
                for i in indices {
                    if let Some(e) = valid.example(i, &tokenizer)? {
                        examples.push(e);
                    }
                }
                if !examples.is_empty() {
                    batches.push(collate(&examples.iter().collect::<Vec<_>>(), data_cfg.pad_multiple, 0));
                }
            }
            batches
        }
        None => Vec::new(),
    };

    // Checkpointing: the longest batch of the data bounds what a step keeps.
    let first_adapted = summary.targets.iter().filter_map(|p| lora::layer_index(p)).min().unwrap_or(0);
    let layers = model.num_layers() - first_adapted;
    let longest = train_set.lengths().iter().copied().max().unwrap_or(0).min(data_cfg.max_seq_length);
    let dtype_bytes = if model.dtype() == mlx_rs::Dtype::Float32 { 4 } else { 2 };
    let estimate = memory::activation_bytes(&model.config, data_cfg.batch_size, longest, layers, dtype_bytes);
    let (checkpointing, why) = memory::decide(train_cfg.gradient_checkpointing, estimate, memory::budget_bytes(train_cfg.memory_budget_gb));
    model.model.checkpoint_layers = checkpointing;
    eprintln!("{why}");

    let (schedule, schedule_ctx) = config.build_schedule(registry)?;
    let mut optimizer = TrainOptimizer::build(&config.optimizer)?;
    let mut rng = RandomState::with_seed(train_cfg.seed)?;
    let mut state = TrainerState::default();
    let checkpoints = out.join("checkpoints");
    if let Some(resume) = resume {
        let from = match resume {
            Resume::Latest => checkpoint::latest(&checkpoints)?,
            Resume::From(p) => p.clone(),
        };
        let restored = checkpoint::restore(&from, &mut model)?;
        optimizer.load_state(restored.optimizer).map_err(TrainError::Config)?;
        rng = RandomState::from_key(restored.rng_key);
        state = restored.state;
        eprintln!("resumed from {} at step {}", from.display(), state.step);
    }
    config.write_resolved(&out).map_err(io(&out))?;
    optimizer.init_state(&model)?;

    let grads = GradBuffer::zeros_like(&model)?;
    let mut ts: TrainState = (model, (optimizer, (LearningRate::new(config.optimizer.lr), (grads, rng))));
    let metric_names = Rc::new(RefCell::new(Vec::new()));
    let dropout = lora_cfg.dropout > 0.0;
    let max_norm = train_cfg.max_grad_norm.map(|n| n as f32);
    let compiled = train_cfg.compile && ts.1 .0.compilable();
    let mut micro_eager = step::micro(loss.clone(), dropout, metric_names.clone());
    let mut apply_eager = step::apply(max_norm);
    let mut micro_compiled = compile_with_state(step::micro(loss.clone(), dropout, metric_names.clone()), None);
    let mut apply_compiled = compile_with_state(step::apply(max_norm), None);

    let mut adapter_extra = serde_json::Map::new();
    for (k, v) in [
        ("model", json!(model_cfg.path)),
        ("data", json!(data_cfg.train)),
        ("optimizer", json!(config.optimizer.kind)),
        ("learning_rate", json!(config.optimizer.lr)),
        ("iters", json!(train_cfg.steps)),
        ("batch_size", json!(data_cfg.batch_size)),
        ("max_seq_length", json!(data_cfg.max_seq_length)),
        ("mask_prompt", json!(data_cfg.mask != crate::data::Masking::None)),
        ("seed", json!(train_cfg.seed)),
    ] {
        adapter_extra.insert(k.to_owned(), v);
    }

    let mut log = metrics::MetricsLog::open(&out, resume.map(|_| state.step))?;
    let bar = metrics::progress_bar(train_cfg.steps, state.step);
    let mut feeder = Feeder::new(&mut train_set, &tokenizer, data_cfg.batch_size, data_cfg.pad_multiple, train_cfg.seed, state.epoch, state.batch_in_epoch);
    let started = Instant::now();
    let _ = mlx_rs::memory::reset_peak_memory();
    let (mut real_total, mut padded_total) = (0usize, 0usize);
    let mut last_loss = f64::NAN;
    let mut stopped = StopReason::Completed;
    INTERRUPTED.store(false, Ordering::SeqCst);

    let save = |ts: &mut TrainState, state: &TrainerState| -> Result<PathBuf, TrainError> {
        let optimizer_state = ts.1 .0.state_arrays()?;
        let key = ts.1 .1 .1 .1.as_array().clone();
        let dir = checkpoint::save(&checkpoints, &mut ts.0, optimizer_state, &key, state, &adapter_extra)?;
        checkpoint::prune(&checkpoints, train_cfg.keep_checkpoints)?;
        Ok(dir)
    };

    while state.step < train_cfg.steps {
        let step_started = Instant::now();
        let mut micro_batches = StepBatches { batches: Vec::new(), supervised: 0 };
        for _ in 0..train_cfg.grad_accumulation_steps {
            let b = feeder.next_batch()?;
            micro_batches.supervised += b.supervised;
            micro_batches.batches.push(b);
        }
        let lr = schedule.lr(state.step, &schedule_ctx).map_err(|e| TrainError::Config(format!("schedule: {e}")))?;
        ts.1 .1 .0.set(lr);
        let mut loss_value = 0.0;
        let mut metric_values: Vec<f64> = Vec::new();
        let (mut real, mut padded) = (0, 0);
        for b in &micro_batches.batches {
            let weight = b.supervised as f32 / micro_batches.supervised as f32;
            let args = [b.inputs.clone(), b.targets.clone(), b.mask.clone(), Array::from_f32(weight)];
            let values = if compiled { micro_compiled(&mut ts, &args[..])? } else { micro_eager(&mut ts, &args[..])? };
            loss_value += scalar(&values[0]) * f64::from(weight);
            metric_values.resize(values.len() - 1, 0.0);
            for (m, v) in metric_values.iter_mut().zip(&values[1..]) {
                *m += scalar(v) * f64::from(weight);
            }
            real += b.real_tokens;
            padded += b.padded_tokens;
        }
        if !loss_value.is_finite() {
            // The gradient is not applied; the checkpoint holds the last good state.
            ts.1 .1 .1 .0 = GradBuffer::zeros_like(&ts.0)?;
            let checkpoint = save(&mut ts, &state)?;
            bar.abandon();
            return Err(TrainError::NonFinite { step: state.step + 1, value: loss_value, checkpoint });
        }
        let norm = if compiled { apply_compiled(&mut ts, &[][..])? } else { apply_eager(&mut ts, &[][..])? };
        let grad_norm = scalar(&norm[0]);
        state.step += 1;
        state.epoch = feeder.epoch;
        state.batch_in_epoch = feeder.position;
        last_loss = loss_value;
        real_total += real;
        padded_total += padded;
        let seconds = step_started.elapsed().as_secs_f64();
        let mut record = json!({
            "step": state.step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
            "tokens": real, "padded_tokens": padded, "supervised_tokens": micro_batches.supervised,
            "tokens_per_second": real as f64 / seconds.max(1e-9), "epoch": state.epoch,
        });
        for (name, v) in metric_names.borrow().iter().zip(&metric_values) {
            record[name] = json!(v);
        }
        log.write(record)?;
        bar.set_position(state.step);
        bar.set_message(format!("loss {loss_value:.4} lr {lr:.2e} {:.0} tok/s", real as f64 / seconds.max(1e-9)));

        if let Some(every) = train_cfg.eval_every {
            if state.step % every == 0 || state.step == train_cfg.steps {
                let eval = evaluate(&ts.0, &*loss, &valid_batches)?;
                log.write(json!({"step": state.step, "eval_loss": eval}))?;
                bar.println(format!("step {}: eval loss {eval:.4}", state.step));
                if state.best_eval.is_none_or(|(best, _)| eval < best) {
                    state.best_eval = Some((eval, state.step));
                    state.evals_since_best = 0;
                    let mut extra = adapter_extra.clone();
                    extra.insert("best_eval_loss".into(), json!(eval));
                    extra.insert("best_step".into(), json!(state.step));
                    lora::save_adapters(&mut ts.0, &out.join("best"), &extra)?;
                } else {
                    state.evals_since_best += 1;
                    if train_cfg.early_stopping_patience.is_some_and(|p| state.evals_since_best >= p) {
                        stopped = StopReason::EarlyStopped;
                    }
                }
            }
        }
        let interrupted = INTERRUPTED.load(Ordering::SeqCst) || callback.after_step(state.step, loss_value) == crate::generate::Control::Stop;
        if interrupted {
            stopped = StopReason::Interrupted;
        }
        if state.step % train_cfg.save_every == 0 || state.step == train_cfg.steps || stopped != StopReason::Completed {
            save(&mut ts, &state)?;
        }
        if stopped != StopReason::Completed {
            break;
        }
    }
    bar.finish_and_clear();
    lora::save_adapters(&mut ts.0, &out, &adapter_extra)?;
    let mut series = vec![plot::Series { name: "train loss".into(), color: [31, 119, 180], points: log.series("loss") }];
    let eval = log.series("eval_loss");
    if !eval.is_empty() {
        series.push(plot::Series { name: "eval loss".into(), color: [214, 39, 40], points: eval });
    }
    let png = out.join("loss.png");
    plot::write_png(&png, &series).map_err(io(&png))?;
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
    })
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
    })
}

/// The backend a configuration gets: mlx_lm.lora when asked for, or (`auto`) when the model's family is not
/// implemented here and mlx-lm is installed; otherwise the native trainer.
fn mlx_lm_command(config: &RunConfig, resume: Option<&Resume>) -> Result<Option<Vec<String>>, TrainError> {
    let backend = config.train.backend;
    if backend == Backend::Native {
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
