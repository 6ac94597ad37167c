//! The sections of a run configuration. Each is a struct with `deny_unknown_fields`, defaults defined once
//! here; pluggable sections carry `kind` and leave every other key to the plugin.

use std::path::PathBuf;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// When activations are recomputed in the backward pass instead of kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checkpointing {
    On,
    Off,
    /// On when the estimated activations of a step exceed the memory budget.
    Auto,
}

/// Which implementation trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// This program; an unsupported model is an error.
    Native,
    /// This program, or `mlx_lm.lora` for model families not implemented here (when installed).
    Auto,
    /// Always `mlx_lm.lora`.
    MlxLm,
}

/// `[train]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps in the run (mlx-lm's `iters`; default 1000).
    #[serde(default = "TrainConfig::default_steps")]
    pub steps: u64,
    /// Seeds adapters, dropout and the data order.
    #[serde(default)]
    pub seed: u64,
    /// Micro-batches per optimizer step, weighted by their supervised tokens.
    #[serde(default = "TrainConfig::one")]
    pub grad_accumulation_steps: u64,
    /// Clip the global gradient norm to this (default: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Evaluate on `[data] valid` every this many steps (and at the end).
    pub eval_every: Option<u64>,
    /// Validation batches per evaluation (default: all).
    pub eval_batches: Option<usize>,
    /// Write a checkpoint every this many steps (default 100; the end of the run always writes one).
    #[serde(default = "TrainConfig::default_save_every")]
    pub save_every: u64,
    /// Checkpoints kept (older ones are removed; `best/` is separate).
    #[serde(default = "TrainConfig::default_keep")]
    pub keep_checkpoints: usize,
    /// Stop after this many evaluations without a new best validation loss.
    pub early_stopping_patience: Option<usize>,
    #[serde(default = "TrainConfig::default_checkpointing")]
    pub gradient_checkpointing: Checkpointing,
    /// With `gradient_checkpointing = "on"`: checkpoint only this many layers, from the first adapted one
    /// (default all). `auto` picks the count itself.
    pub checkpoint_layers: Option<usize>,
    /// Budget for activations under `gradient_checkpointing = "auto"` (default: half the device's memory).
    pub memory_budget_gb: Option<f64>,
    #[serde(default = "TrainConfig::default_backend")]
    pub backend: Backend,
    /// Compile the training step (default on).
    #[serde(default = "TrainConfig::default_true")]
    pub compile: bool,
    /// What trains: LoRA/DoRA adapters (`[lora]`), or the weights themselves.
    #[serde(default)]
    pub mode: TrainMode,
    /// Evaluate the output head a chunk of positions at a time, in separate evaluations, so at most one
    /// chunk's logits exist (costs one more forward through the body): `auto` does it for micro-batches whose
    /// float32 logits would exceed 1 GiB.
    #[serde(default)]
    pub split_head: SplitHead,
    /// With `mode = "full"`: train only the last N transformer layers (mlx-lm's `num_layers`); unset trains
    /// every weight, embeddings, norms and output head included.
    pub last_n_layers: Option<usize>,
    /// Weight of the routers' load-balancing loss added to a mixture-of-experts model's training loss
    /// (Switch Transformer's, as transformers' `load_balancing_loss_func` computes it over the real tokens);
    /// 0 leaves it out. The checkpoint's own `router_aux_loss_coef` is not applied (transformers applies it
    /// only with `output_router_logits`), so training a MoE model is the same with or without it.
    #[serde(default)]
    pub router_aux_loss_coef: f64,
    /// Data parallelism's summation order: micro-batch j of a step belongs to shard j mod D, each shard's
    /// gradient is summed on its own and the shards are added last, as D ranks do (one shard each). Default:
    /// the number of ranks. A 1-process run with `dp_shards = 2` reproduces a 2-rank run bit for bit.
    pub dp_shards: Option<usize>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitHead {
    #[default]
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainMode {
    /// Low-rank adapters on a frozen base, configured by `[lora]`.
    #[default]
    Lora,
    /// Full fine-tuning: every weight of the chosen layers trains.
    Full,
}

impl TrainConfig {
    fn default_steps() -> u64 {
        1000
    }

    fn one() -> u64 {
        1
    }

    fn default_save_every() -> u64 {
        100
    }

    fn default_keep() -> usize {
        3
    }

    fn default_checkpointing() -> Checkpointing {
        Checkpointing::Auto
    }

    fn default_backend() -> Backend {
        Backend::Native
    }

    fn default_true() -> bool {
        true
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: Self::default_steps(),
            seed: 0,
            grad_accumulation_steps: 1,
            max_grad_norm: None,
            eval_every: None,
            eval_batches: None,
            save_every: Self::default_save_every(),
            keep_checkpoints: Self::default_keep(),
            early_stopping_patience: None,
            gradient_checkpointing: Self::default_checkpointing(),
            checkpoint_layers: None,
            memory_budget_gb: None,
            backend: Self::default_backend(),
            compile: true,
            mode: TrainMode::Lora,
            split_head: SplitHead::Auto,
            last_n_layers: None,
            router_aux_loss_coef: 0.0,
            dp_shards: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adamw,
    Adam,
    Sgd,
    Adafactor,
}

/// `[optimizer]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    #[serde(default = "OptimizerConfig::default_kind")]
    pub kind: OptimizerKind,
    /// The peak learning rate; schedules scale from it.
    pub lr: f64,
    /// adamw (default 0.01) and sgd (default 0).
    pub weight_decay: Option<f64>,
    /// adam, adamw (default [0.9, 0.999]).
    pub betas: Option<[f64; 2]>,
    /// adam, adamw (default 1e-8).
    pub eps: Option<f64>,
    /// sgd (default 0).
    pub momentum: Option<f64>,
}

impl OptimizerConfig {
    fn default_kind() -> OptimizerKind {
        OptimizerKind::Adamw
    }

    /// Settings given to an optimizer that has no use for them: `(key, kind)` pairs.
    pub fn inapplicable(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let k = self.kind;
        if self.weight_decay.is_some() && !matches!(k, OptimizerKind::Adamw | OptimizerKind::Sgd) {
            out.push("weight_decay");
        }
        if self.betas.is_some() && !matches!(k, OptimizerKind::Adamw | OptimizerKind::Adam) {
            out.push("betas");
        }
        if self.eps.is_some() && !matches!(k, OptimizerKind::Adamw | OptimizerKind::Adam) {
            out.push("eps");
        }
        if self.momentum.is_some() && k != OptimizerKind::Sgd {
            out.push("momentum");
        }
        out
    }
}

/// `[model]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A model directory, or a Hugging Face repo id found in the local HF cache.
    pub path: String,
    /// float32, bfloat16 or float16 (default: float32 on the CPU, bfloat16 on a GPU).
    pub dtype: Option<String>,
    /// Quantize a float model on load.
    pub quantize: Option<QuantizeConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizeConfig {
    /// affine (default), mxfp4, nvfp4 or mxfp8.
    #[serde(default)]
    pub mode: crate::nn::QuantMode,
    /// Default: the mode's (affine 4 bits in groups of 64; each microscaling mode has one width and group).
    pub bits: Option<i32>,
    pub group_size: Option<i32>,
}

impl QuantizeConfig {
    pub fn quant(&self) -> Result<crate::nn::Quant, String> {
        crate::nn::Quant::with_defaults(self.mode, self.bits, self.group_size, "quantize")
    }
}

/// `[lora]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Which modules get adapters (a LoraTargetMapper plugin; default all_linear).
    #[serde(default = "LoraConfig::default_mapper")]
    pub mapper: PluginTable,
    #[serde(default = "LoraConfig::default_rank")]
    pub rank: i32,
    /// Multiplier of the low-rank update (mlx-lm's `scale`, default 20).
    #[serde(default = "LoraConfig::default_scale")]
    pub scale: f32,
    #[serde(default)]
    pub dropout: f32,
    /// DoRA instead of LoRA.
    #[serde(default)]
    pub dora: bool,
    /// Only the last N transformer layers (mlx-lm's `num_layers`).
    pub last_n_layers: Option<usize>,
}

impl LoraConfig {
    fn default_mapper() -> PluginTable {
        PluginTable::named("all_linear")
    }

    fn default_rank() -> i32 {
        8
    }

    fn default_scale() -> f32 {
        20.0
    }
}

/// `[data]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub train: PathBuf,
    pub valid: Option<PathBuf>,
    /// none, prompt or assistant (default none, as mlx-lm; preference and labelled rows: prompt, the only
    /// choice there).
    #[serde(default)]
    pub mask: Option<crate::data::Masking>,
    #[serde(default = "DataConfig::default_max_seq_length")]
    pub max_seq_length: usize,
    #[serde(default)]
    pub skip_bad_rows: bool,
    /// A DataCachePolicy plugin (default disk).
    #[serde(default = "DataConfig::default_cache")]
    pub cache: PluginTable,
    /// Rows per batch (at most, with `max_batch_tokens`).
    #[serde(default = "DataConfig::default_batch_size")]
    pub batch_size: usize,
    /// Also cap rows × the batch's longest row at this many tokens: batches of short rows take more rows.
    pub max_batch_tokens: Option<usize>,
    /// Batches are padded to a multiple of this many tokens (fewer shapes for the compiled step).
    #[serde(default = "DataConfig::default_pad_multiple")]
    pub pad_multiple: usize,
    /// Padding-free batches: rows packed side by side into `batch_size` sequences of `max_seq_length` tokens
    /// (rounded up to `pad_multiple`), attention confined to each row.
    #[serde(default)]
    pub packing: bool,
}

impl DataConfig {
    /// The masking rows of `shape` get.
    pub fn masking(&self, shape: crate::data::RowShape) -> crate::data::Masking {
        match (self.mask, shape) {
            (Some(m), _) => m,
            (None, crate::data::RowShape::Single) => crate::data::Masking::None,
            (None, _) => crate::data::Masking::Prompt,
        }
    }

    fn default_max_seq_length() -> usize {
        2048
    }

    fn default_cache() -> PluginTable {
        PluginTable::named("disk")
    }

    fn default_batch_size() -> usize {
        4
    }

    fn default_pad_multiple() -> usize {
        32
    }
}

/// `[reference]`: where a loss's reference log-probs come from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceConfig {
    #[serde(default)]
    pub mode: ReferenceMode,
    /// A separate reference model (a directory or a repo id in the local HF cache): needed by mode = "model";
    /// with "precomputed", the model the log-probs are computed with (default: the base model).
    pub model: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceMode {
    /// The policy with its adapters switched off, each step: the base model, with no second copy of it.
    #[default]
    AdaptersOff,
    /// Computed once before training and kept through the data cache policy.
    Precomputed,
    /// A second model, each step.
    Model,
}

impl ReferenceMode {
    pub fn name(self) -> &'static str {
        match self {
            ReferenceMode::AdaptersOff => "adapters_off",
            ReferenceMode::Precomputed => "precomputed",
            ReferenceMode::Model => "model",
        }
    }
}

/// `[plugins]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// cdylib plugin files to load, relative to the working directory.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
}

/// `[output]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Where a run writes its outputs (default `runs/<config file name>`).
    pub dir: Option<PathBuf>,
    /// Loggers besides metrics.jsonl and the plots (unset: `["tensorboard"]` on the native backend; `[]`
    /// for none).
    pub report_to: Option<Vec<ReportTo>>,
    /// GRPO: write the sampled completions to TensorBoard as text every this many steps (0: never; 10).
    #[serde(default = "default_log_completions_every")]
    pub log_completions_every: u64,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig { dir: None, report_to: None, log_completions_every: default_log_completions_every() }
    }
}

impl OutputConfig {
    /// Whether the native trainers write TensorBoard event files.
    pub fn tensorboard(&self) -> bool {
        self.report_to.as_ref().is_none_or(|r| r.contains(&ReportTo::Tensorboard))
    }
}

fn default_log_completions_every() -> u64 {
    10
}

/// `[output] report_to` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportTo {
    /// Event files in `<dir>/tensorboard/`.
    Tensorboard,
}

/// A pluggable section: `kind` names the plugin, the other keys are its own configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginTable {
    pub kind: String,
    pub config: toml::Table,
}

impl PluginTable {
    pub fn named(kind: &str) -> Self {
        PluginTable { kind: kind.to_owned(), config: toml::Table::new() }
    }

    pub(super) fn from_table<E: de::Error>(mut table: toml::Table) -> Result<Self, E> {
        match table.remove("kind") {
            Some(toml::Value::String(kind)) => Ok(PluginTable { kind, config: table }),
            Some(other) => Err(E::custom(format!("`kind` must be a string naming a plugin, got {}", other.type_str()))),
            None => Err(E::custom("missing `kind`: which plugin to use")),
        }
    }

    pub(super) fn to_table(&self) -> toml::Table {
        let mut table = self.config.clone();
        table.insert("kind".to_owned(), toml::Value::String(self.kind.clone()));
        table
    }
}

impl<'de> Deserialize<'de> for PluginTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PluginTable::from_table(toml::Table::deserialize(d)?)
    }
}

impl Serialize for PluginTable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_table().serialize(s)
    }
}

/// `[schedule]`: an LR schedule plugin plus the linear warmup the host puts in front of any schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSection {
    pub plugin: PluginTable,
    /// Steps of linear warmup before the schedule starts (default 0).
    pub warmup_steps: u64,
    /// The rate warmup starts from (default 0).
    pub warmup_init: f64,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        ScheduleSection { plugin: PluginTable::named("constant"), warmup_steps: 0, warmup_init: 0.0 }
    }
}

impl<'de> Deserialize<'de> for ScheduleSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(d)?;
        let warmup_steps = match table.remove("warmup_steps") {
            None => 0,
            Some(toml::Value::Integer(n)) if n >= 0 => n as u64,
            Some(v) => return Err(de::Error::custom(format!("`warmup_steps` must be a non-negative integer, got {v}"))),
        };
        let warmup_init = match table.remove("warmup_init") {
            None => 0.0,
            Some(toml::Value::Float(x)) => x,
            Some(toml::Value::Integer(n)) => n as f64,
            Some(v) => return Err(de::Error::custom(format!("`warmup_init` must be a number, got {v}"))),
        };
        Ok(ScheduleSection { plugin: PluginTable::from_table(table)?, warmup_steps, warmup_init })
    }
}

impl Serialize for ScheduleSection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut table = self.plugin.to_table();
        table.insert("warmup_steps".to_owned(), toml::Value::Integer(self.warmup_steps as i64));
        table.insert("warmup_init".to_owned(), toml::Value::Float(self.warmup_init));
        table.serialize(s)
    }
}
