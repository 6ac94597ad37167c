//! What every trainer sets up and tears down the same way: the policy (model, tokenizer, adapters), the
//! optimizer and PRNG state (fresh or from a checkpoint), checkpoints, adapter files and plots.

use std::path::{Path, PathBuf};

use mlx_rs::{module::ModuleParameters, random::RandomState};
use serde_json::json;

use super::{checkpoint, io, tuning::{FullTuning, Tuning}, stepper::StepResult, memory, metrics::MetricsLog, StepCallback, StopReason, INTERRUPTED, plot, Resume, TrainError, TrainOptimizer, TrainState, TrainerState};
use crate::{
    config::{RunConfig, TrainMode},
    lora::{self, LoraSettings},
    model::{self, hub, CausalLm, LoadOptions},
    plugins::Registry,
    text::TextTokenizer,
};

/// The policy a run trains: the model with fresh adapters, and where it came from.
pub struct Policy {
    pub dir: PathBuf,
    pub load_options: LoadOptions,
    pub tokenizer: TextTokenizer,
    pub model: CausalLm,
    pub tuning: Tuning,
}

/// The error for a section a trainer cannot run without.
pub fn missing(section: &str) -> TrainError {
    TrainError::Config(format!("training needs a [{section}] section"))
}

/// Loads `[model]` and makes what `[train] mode` trains trainable: fresh `[lora]` adapters, or the weights.
pub fn load_policy(config: &RunConfig, registry: &Registry) -> Result<Policy, TrainError> {
    let model_cfg = config.model.as_ref().ok_or_else(|| missing("model"))?;
    let dir = hub::resolve(&model_cfg.path)?;
    let dtype = model_cfg.dtype.as_deref().and_then(model::parse_dtype);
    let quantize = model_cfg.quantize.map(|q| q.quant()).transpose().map_err(TrainError::Config)?;
    let load_options = LoadOptions { dtype, quantize };
    let mut loaded = model::load(&dir, &load_options)?;
    let tokenizer = TextTokenizer::load(&dir)?;
    let tuning = match config.train.mode {
        TrainMode::Full => Tuning::Full(FullTuning::apply(&mut loaded, config.train.last_n_layers)?),
        TrainMode::Lora => {
            let lora_cfg = config.lora.as_ref().ok_or_else(|| missing("lora"))?;
            let mapper = registry.lora_target_mapper(&lora_cfg.mapper.kind, &lora_cfg.mapper.config)?;
            let settings = LoraSettings { rank: lora_cfg.rank, scale: lora_cfg.scale, dropout: lora_cfg.dropout, dora: lora_cfg.dora, last_n_layers: lora_cfg.last_n_layers };
            Tuning::Lora(lora::apply(&mut loaded.model, &*mapper, &settings, config.train.seed)?)
        }
    };
    eprintln!("{}", tuning.describe());
    Ok(Policy { dir, load_options, tokenizer, model: loaded.model, tuning })
}

/// The optimizer, PRNG and progress a run starts from: fresh, or restored from a checkpoint (adapters
/// included). Also writes the resolved configuration and gives the optimizer its full state up front.
pub fn start_state(config: &RunConfig, model: &mut CausalLm, tuning: &Tuning, resume: Option<&Resume>) -> Result<(TrainOptimizer, RandomState, TrainerState), TrainError> {
    let out = config.output_dir();
    let mut optimizer = TrainOptimizer::build(&config.optimizer)?;
    let mut rng = RandomState::with_seed(config.train.seed)?;
    let mut state = TrainerState::default();
    if let Some(resume) = resume {
        let from = match resume {
            Resume::Latest => checkpoint::latest(&out.join("checkpoints"))?,
            Resume::From(p) => p.clone(),
        };
        let restored = checkpoint::restore(&from, model, tuning)?;
        optimizer.load_state(restored.optimizer).map_err(TrainError::Config)?;
        rng = RandomState::from_key(restored.rng_key);
        state = restored.state;
        eprintln!("resumed from {} at step {}", from.display(), state.step);
    }
    if crate::dist::world().is_main() {
        config.write_resolved(&out).map_err(io(&out))?;
    }
    optimizer.init_state(model)?;
    Ok((optimizer, rng, state))
}

/// `adapter_config.json` fields beyond the adapter's own: what trained it (mlx-lm writes its arguments there).
pub fn adapter_extra(config: &RunConfig, fields: &[(&str, serde_json::Value)]) -> serde_json::Map<String, serde_json::Value> {
    let mut extra = serde_json::Map::new();
    let model = config.model.as_ref().map(|m| m.path.clone()).unwrap_or_default();
    let data = config.data.as_ref().map(|d| d.train.display().to_string()).unwrap_or_default();
    for (k, v) in [
        ("model", json!(model)),
        ("loss", json!(config.loss.kind)),
        ("data", json!(data)),
        ("optimizer", json!(config.optimizer.kind)),
        ("learning_rate", json!(config.optimizer.lr)),
        ("iters", json!(config.train.steps)),
        ("seed", json!(config.train.seed)),
    ] {
        extra.insert(k.to_owned(), v);
    }
    for (k, v) in fields {
        extra.insert((*k).to_owned(), v.clone());
    }
    extra
}

/// Writes a checkpoint (adapters, optimizer state, PRNG key, progress) and prunes old ones.
pub fn save_checkpoint(config: &RunConfig, tuning: &Tuning, ts: &mut TrainState, state: &TrainerState, extra: &serde_json::Map<String, serde_json::Value>) -> Result<PathBuf, TrainError> {
    let checkpoints = config.output_dir().join("checkpoints");
    let world = crate::dist::world();
    if world.size() > 1 {
        same_parameters_everywhere(&mut ts.0, state.step)?;
    }
    let state = &TrainerState { world_size: world.size(), ..state.clone() };
    // Rank 0 writes (every rank holds the same state); the others wait until it has.
    let dir = if world.is_main() {
        let optimizer_state = ts.1 .0.state_arrays()?;
        let key = ts.1 .1 .1 .1.as_array().clone();
        let dir = checkpoint::save(&checkpoints, tuning, &mut ts.0, optimizer_state, &key, state, extra)?;
        checkpoint::prune(&checkpoints, config.train.keep_checkpoints)?;
        dir
    } else {
        checkpoints.join(checkpoint::step_dir_name(state.step))
    };
    world.barrier()?;
    Ok(dir)
}

/// Stops the run when the ranks' trainable parameters are no longer bit for bit the same (they are by
/// construction; a difference means a rank computed something else, and training on would hide it).
fn same_parameters_everywhere(model: &mut CausalLm, step: u64) -> Result<(), TrainError> {
    let params = model.trainable_parameters().flatten();
    let mut names: Vec<_> = params.keys().cloned().collect();
    names.sort();
    let mut parts: Vec<Vec<u8>> = Vec::with_capacity(names.len());
    for name in &names {
        let a = params[name].as_dtype(mlx_rs::Dtype::Float32)?;
        a.eval()?;
        parts.push(a.as_slice::<f32>().iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let digest = u64::from_str_radix(&crate::data::cache_key(&refs)[..16], 16).unwrap_or(0);
    let all = crate::dist::world().gather_u64(digest)?;
    match all.iter().position(|&d| d != all[0]) {
        Some(r) => Err(TrainError::Config(format!("step {step}: rank {r}'s parameters differ from rank 0's; stopped (the ranks no longer train one model)"))),
        None => Ok(()),
    }
}

/// The metrics line every trainer writes for a step it just finished (`state` already advanced to it); the
/// trainer adds its own keys.
pub fn step_record(state: &TrainerState, result: &StepResult, metric_names: &[String], lr: f64, real: usize, padded: usize) -> serde_json::Value {
    let mut record = json!({
        "step": state.step, "loss": result.loss, "learning_rate": lr, "grad_norm": result.grad_norm,
        "tokens": real, "padded_tokens": padded, "epoch": state.epoch,
        "wait_seconds": result.waited.as_secs_f64(),
    });
    for (name, v) in metric_names.iter().zip(&result.metrics) {
        record[name] = json!(v);
    }
    record
}

/// A line chart titled `title` of the logged series that exist, `(legend, metric key, colour)`, against the
/// step; nothing if none has points.
pub fn plot_series(log: &MetricsLog, path: &Path, title: &str, y_label: &str, series: &[(&str, &str, [u8; 3])]) -> Result<(), TrainError> {
    if !crate::dist::world().is_main() {
        return Ok(());
    }
    let series: Vec<plot::Series> = series
        .iter()
        .map(|(name, key, color)| plot::Series { name: (*name).into(), color: *color, points: log.series(key) })
        .filter(|s| !s.points.is_empty())
        .collect();
    if series.is_empty() {
        return Ok(());
    }
    plot::write_png(path, &plot::Figure { title, y_label, series }).map_err(io(path))
}

/// Decides how many layers recompute their activations (`[train] gradient_checkpointing`,
/// `checkpoint_layers`, memory budget) for steps of `rows` × `longest` tokens, and says why. The budget also
/// holds the training state of the trainable parameters (gradients and optimizer moments): small for
/// adapters, several times the model for full fine-tuning.
pub fn set_checkpointing(config: &RunConfig, model: &mut CausalLm, tuning: &Tuning, rows: usize, longest: usize) {
    let train = &config.train;
    let layers = model.num_layers() - tuning.first_trained_layer();
    let dtype_bytes = if model.dtype() == mlx_rs::Dtype::Float32 { 4 } else { 2 };
    let param_bytes: u64 = model.trainable_parameters().flatten().values().map(|a| a.nbytes() as u64).sum();
    let state = param_bytes * memory::state_copies(&config.optimizer);
    let mut estimate = memory::estimate(&model.config, rows, longest, layers, dtype_bytes).with_state(state);
    // The split head holds one chunk's logits (and their softmax and gradient) at a time.
    if super::stepper::splits(train.split_head, rows * longest * model.config.vocab_size.max(1) as usize) {
        estimate.logits = estimate.logits.min((super::stepper::SPLIT_CHUNK_ELEMENTS * 4 * 3) as u64);
    }
    let budget = memory::budget_bytes(train.memory_budget_gb);
    let (checkpointing, why) = memory::decide(train.gradient_checkpointing, train.checkpoint_layers, &estimate, budget);
    model.model.checkpoint_layers = checkpointing;
    eprintln!("{why}");
}

/// What every trainer does after a step: stop on Ctrl-C or when the callback asks, and checkpoint every
/// `save_every` steps, after the last one and when stopping. Returns true when the run stops here.
#[allow(clippy::too_many_arguments)]
pub fn end_step(
    config: &RunConfig,
    tuning: &Tuning,
    callback: &mut dyn StepCallback,
    ts: &mut TrainState,
    state: &TrainerState,
    loss: f64,
    stopped: &mut StopReason,
    extra: &serde_json::Map<String, serde_json::Value>,
) -> Result<bool, TrainError> {
    let asked = INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) || callback.after_step(state.step, loss) == crate::generate::Control::Stop;
    // Decided together: a Ctrl-C reaching one rank stops every rank after the same step.
    let interrupted = crate::dist::world().any(asked)?;
    if interrupted {
        *stopped = StopReason::Interrupted;
    }
    let train = &config.train;
    if state.step % train.save_every == 0 || state.step == train.steps || *stopped != StopReason::Completed {
        save_checkpoint(config, tuning, ts, state, extra)?;
    }
    Ok(*stopped != StopReason::Completed)
}
