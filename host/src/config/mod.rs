//! Run configuration: one TOML file, a section per concern, every pluggable section naming its plugin with
//! `kind`. Loading reports every problem at once — unknown sections and keys, wrong types, unknown plugins,
//! plugin config errors, cross-field rules — each with file, line and column (or the `--set` it came from).

mod environment;
mod fields;
mod problem;
mod rollout;
mod sections;
mod source;

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sdk::{LrSchedule, ScheduleContext, Warmup};

pub use problem::{ConfigError, ConfigProblem, Location};
pub use environment::EnvironmentConfig;
pub use rollout::{EvalConfig, RewardEntry, RolloutConfig, ScaleRewards};
pub use sections::{
    Backend, Checkpointing, DataConfig, LoraConfig, ModelConfig, OptimizerConfig, OptimizerKind, OutputConfig, PluginTable, PluginsConfig,
    QuantizeConfig, ReferenceConfig, ReferenceMode, ReportTo, ScheduleSection, SplitHead, TrainConfig, TrainMode,
};
pub use source::Override;

use crate::plugins::{Registry, RegistryError};
use source::Source;

/// A whole run configuration. `[model]`, `[lora]` and `[data]` are needed to train; `host schedule` reads a file
/// without them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: Option<ModelConfig>,
    pub lora: Option<LoraConfig>,
    pub data: Option<DataConfig>,
    #[serde(default)]
    pub train: TrainConfig,
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub schedule: ScheduleSection,
    /// A Loss plugin (default sft).
    #[serde(default = "RunConfig::default_loss")]
    pub loss: PluginTable,
    /// Where reference log-probs come from, for losses that use them (default: adapters off).
    pub reference: Option<ReferenceConfig>,
    /// GRPO's sampling and advantages (losses that take advantages; defaults when absent).
    pub rollout: Option<RolloutConfig>,
    /// GRPO's reward functions, `[[reward]]` tables.
    #[serde(default)]
    pub reward: Vec<RewardEntry>,
    /// GRPO's validation rollouts.
    pub eval: Option<EvalConfig>,
    /// GRPO's multi-turn environment.
    pub environment: Option<EnvironmentConfig>,
    #[serde(default)]
    pub plugins: PluginsConfig,
    #[serde(default)]
    pub output: OutputConfig,
}

/// Reads one section on its own, so that problems in different sections are all reported: first every key
/// the section's struct does not know, then the first type error serde finds. `Ok(None)`: the section is absent.
fn section<T: DeserializeOwned>(source: &Source, name: &str, problems: &mut Vec<ConfigProblem>) -> Result<Option<T>, ()> {
    let Some(value) = source.table.get(name) else { return Ok(None) };
    if let (Some(fields), Some(table)) = (fields::field_names::<T>(), value.as_table()) {
        let unknown: Vec<&String> = table.keys().filter(|k| !fields.contains(&k.as_str())).collect();
        for key in &unknown {
            problems.push(source.problem(&[name, key], format!("unknown key; expected one of: {}", fields.join(", "))));
        }
        if !unknown.is_empty() {
            return Err(());
        }
    }
    serde_path_to_error::deserialize::<_, T>(value.clone()).map(Some).map_err(|e| {
        let inner = e.path().to_string();
        let mut path = vec![name];
        if inner != "." {
            path.extend(inner.split('.'));
        }
        problems.push(source.problem(&path, e.into_inner().message().to_owned()));
    })
}

/// The first `backticked` word of a plugin's message, which by SDK convention names the offending key.
fn key_in_message(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    let key = &message[start..start + len];
    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_').then_some(key)
}

/// Reports a plugin section's creation error at the key it names (or at `kind`).
fn check_plugin(source: &Source, at: &[&str], table: &PluginTable, error: Option<RegistryError>, problems: &mut Vec<ConfigProblem>) {
    let Some(error) = error else { return };
    let message = match &error {
        RegistryError::Create { error, .. } => error.to_string(),
        _ => String::new(),
    };
    let key = match &error {
        RegistryError::Create { .. } => key_in_message(&message).filter(|k| table.config.contains_key(*k)).unwrap_or("kind"),
        _ => "kind",
    };
    let path: Vec<&str> = at.iter().copied().chain([key]).collect();
    problems.push(source.problem(&path, error.to_string()));
}

impl RunConfig {
    fn default_loss() -> PluginTable {
        PluginTable::named("sft")
    }

    /// Reads, overrides, checks and validates a configuration, loading the cdylibs it names into `registry`.
    /// Relative paths are relative to the working directory.
    pub fn load(file: &Path, overrides: &[Override], registry: &mut Registry) -> Result<RunConfig, ConfigError> {
        Self::load_in(file, overrides, registry, Path::new(""))
    }

    /// [`RunConfig::load`] with relative paths taken from `base` (model directories, data files, plugin
    /// libraries, the output directory; a model that is not a directory there is a Hugging Face repo id).
    pub fn load_in(file: &Path, overrides: &[Override], registry: &mut Registry, base: &Path) -> Result<RunConfig, ConfigError> {
        let source = Source::read(file, overrides)?;
        let mut problems = Vec::new();
        let sections = fields::field_names::<RunConfig>().unwrap_or_default();
        for key in source.table.keys().filter(|k| !sections.contains(&k.as_str())) {
            problems.push(source.problem(&[key], format!("unknown section; expected one of: {}", sections.join(", "))));
        }
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let model = section::<ModelConfig>(&source, "model", &mut problems).map(|m| {
            m.map(|mut m| {
                if base.join(&m.path).is_dir() {
                    m.path = base.join(&m.path).to_string_lossy().into_owned();
                }
                m
            })
        });
        let reference = section::<ReferenceConfig>(&source, "reference", &mut problems).map(|r| {
            r.map(|mut r| {
                if let Some(m) = &mut r.model {
                    if base.join(&*m).is_dir() {
                        *m = base.join(&*m).to_string_lossy().into_owned();
                    }
                }
                r
            })
        });
        let rollout = section::<RolloutConfig>(&source, "rollout", &mut problems);
        let rewards = section::<Vec<RewardEntry>>(&source, "reward", &mut problems).map(Option::unwrap_or_default);
        let environment = section::<EnvironmentConfig>(&source, "environment", &mut problems);
        let eval = section::<EvalConfig>(&source, "eval", &mut problems).map(|e| {
            e.map(|mut e| {
                rebase(&mut e.prompts);
                e
            })
        });
        let lora = section::<LoraConfig>(&source, "lora", &mut problems);
        let data = section::<DataConfig>(&source, "data", &mut problems).map(|d| {
            d.map(|mut d| {
                rebase(&mut d.train);
                if let Some(v) = &mut d.valid {
                    rebase(v);
                }
                d
            })
        });
        let train = section::<TrainConfig>(&source, "train", &mut problems).map(Option::unwrap_or_default);
        let optimizer = section::<OptimizerConfig>(&source, "optimizer", &mut problems).and_then(|o| {
            o.ok_or_else(|| problems.push(source.problem(&[], "missing section [optimizer] (at least `lr`)")))
        });
        let schedule = section::<ScheduleSection>(&source, "schedule", &mut problems).map(Option::unwrap_or_default);
        let loss = section::<PluginTable>(&source, "loss", &mut problems).map(|l| l.unwrap_or_else(RunConfig::default_loss));
        let plugins = section::<PluginsConfig>(&source, "plugins", &mut problems).map(|p| {
            let mut p = p.unwrap_or_default();
            p.paths.iter_mut().for_each(rebase);
            p
        });
        let output = section::<OutputConfig>(&source, "output", &mut problems).map(|o| {
            let mut o = o.unwrap_or_default();
            if let Some(d) = &mut o.dir {
                rebase(d);
            }
            o
        });

        // Each rule runs when the sections it reads parsed, so one bad section hides no other problem.
        let mut rule = |ok: bool, path: &[&str], message: String| {
            if !ok {
                problems.push(source.problem(path, message));
            }
        };
        if let Ok(t) = &train {
            rule(t.steps > 0, &["train", "steps"], "must be at least 1".into());
            rule(t.grad_accumulation_steps > 0, &["train", "grad_accumulation_steps"], "must be at least 1".into());
            rule(t.save_every > 0, &["train", "save_every"], "must be at least 1".into());
            rule(t.eval_every != Some(0), &["train", "eval_every"], "must be at least 1".into());
            rule(t.max_grad_norm.is_none_or(|n| n > 0.0), &["train", "max_grad_norm"], "must be positive".into());
            rule(t.memory_budget_gb.is_none_or(|m| m > 0.0), &["train", "memory_budget_gb"], "must be positive".into());
            rule(
                t.router_aux_loss_coef.is_finite() && t.router_aux_loss_coef >= 0.0,
                &["train", "router_aux_loss_coef"],
                "must be 0 (off) or positive".into(),
            );
            rule(
                t.checkpoint_layers.is_none() || t.gradient_checkpointing == Checkpointing::On,
                &["train", "checkpoint_layers"],
                "goes with gradient_checkpointing = \"on\" (\"auto\" chooses the count itself)".into(),
            );
            rule(t.checkpoint_layers != Some(0), &["train", "checkpoint_layers"], "must be at least 1 (or gradient_checkpointing = \"off\")".into());
            rule(
                t.early_stopping_patience.is_none() || t.eval_every.is_some(),
                &["train", "early_stopping_patience"],
                "needs `eval_every`: early stopping watches the validation loss".into(),
            );
        }
        if let Ok(o) = &optimizer {
            rule(o.lr.is_finite() && o.lr > 0.0, &["optimizer", "lr"], format!("must be a positive number, got {}", o.lr));
            for key in o.inapplicable() {
                let kind = serde_json::to_value(o.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
                rule(false, &["optimizer", key], format!("does not apply to {kind}"));
            }
        }
        if let (Ok(train), Ok(schedule)) = (&train, &schedule) {
            rule(
                !(schedule.warmup_steps >= train.steps && train.steps > 0),
                &["schedule", "warmup_steps"],
                format!("{} warmup steps leave none of the run's {} steps to the schedule", schedule.warmup_steps, train.steps),
            );
        }
        if let Ok(Some(m)) = &model {
            if let Some(dtype) = &m.dtype {
                rule(crate::model::parse_dtype(dtype).is_some(), &["model", "dtype"], format!("`{dtype}`: expected float32, bfloat16 or float16"));
            }
            if let Some(q) = &m.quantize {
                if let Err(message) = q.quant() {
                    rule(false, &["model", "quantize"], message);
                }
            }
        }
        if let Ok(Some(l)) = &lora {
            rule(l.rank >= 1, &["lora", "rank"], "must be at least 1".into());
            rule((0.0..1.0).contains(&l.dropout), &["lora", "dropout"], "must be in [0, 1)".into());
            rule(l.scale.is_finite(), &["lora", "scale"], "must be a finite number".into());
            rule(l.last_n_layers != Some(0), &["lora", "last_n_layers"], "must be at least 1".into());
        }
        if let Ok(Some(d)) = &data {
            rule(d.batch_size >= 1, &["data", "batch_size"], "must be at least 1".into());
            rule(d.max_batch_tokens != Some(0), &["data", "max_batch_tokens"], "must be at least 1".into());
            rule(d.max_seq_length >= 2, &["data", "max_seq_length"], "must be at least 2".into());
            rule(d.pad_multiple >= 1, &["data", "pad_multiple"], "must be at least 1".into());
            rule(
                !(d.packing && d.max_batch_tokens.is_some()),
                &["data", "max_batch_tokens"],
                "with `packing` a batch is `batch_size` sequences of `max_seq_length` tokens; `max_batch_tokens` does not apply".into(),
            );
            rule(d.train.is_file(), &["data", "train"], format!("{}: no such file", d.train.display()));
            if let Some(v) = &d.valid {
                rule(v.is_file(), &["data", "valid"], format!("{}: no such file", v.display()));
            }
        }
        if let (Ok(t), Ok(d)) = (&train, &data) {
            rule(
                t.eval_every.is_none() || d.as_ref().is_some_and(|d| d.valid.is_some()),
                &["train", "eval_every"],
                "needs `[data] valid`: evaluation uses the validation set".into(),
            );
        }
        // Libraries load before plugin sections are checked: they may provide the plugins named there.
        if let Ok(plugins) = &plugins {
            for (i, path) in plugins.paths.iter().enumerate() {
                if let Err(e) = registry.load_library(path) {
                    problems.push(source.problem(&["plugins", "paths", &i.to_string()], e.to_string()));
                }
            }
        }
        if let Ok(schedule) = &schedule {
            let p = &schedule.plugin;
            check_plugin(&source, &["schedule"], p, registry.schedule(&p.kind, &p.config).err(), &mut problems);
        }
        let mut needs = None;
        if let Ok(p) = &loss {
            let built = registry.loss(&p.kind, &p.config);
            needs = built.as_ref().ok().map(|l| l.requirements());
            check_plugin(&source, &["loss"], p, built.err(), &mut problems);
        }
        if let (Some(needs), Ok(Some(r))) = (needs, &reference) {
            let kind = loss.as_ref().map(|l| l.kind.clone()).unwrap_or_default();
            if !needs.reference {
                problems.push(source.problem(&["reference"], format!("loss `{kind}` uses no reference policy; remove [reference]")));
            }
            match (r.mode, &r.model) {
                (ReferenceMode::Model, None) => problems.push(source.problem(&["reference", "mode"], "mode = \"model\" needs `model`, the reference model")),
                (ReferenceMode::AdaptersOff, Some(_)) => problems.push(source.problem(
                    &["reference", "model"],
                    "mode = \"adapters_off\" uses the base model; `model` goes with mode = \"model\" or \"precomputed\"",
                )),
                _ => {}
            }
            if needs.rollout() && r.mode == ReferenceMode::Precomputed {
                problems.push(source.problem(
                    &["reference", "mode"],
                    format!("loss `{kind}` scores fresh completions every step; their reference log-probs cannot be precomputed (use \"adapters_off\" or \"model\")"),
                ));
            }
        }
        if let (Ok(t), Ok(lora)) = (&train, &lora) {
            match t.mode {
                TrainMode::Full => {
                    if lora.is_some() {
                        problems.push(source.problem(&["lora"], "[train] mode = \"full\" trains the weights themselves, not adapters: remove [lora] (or set mode = \"lora\")"));
                    }
                    if t.last_n_layers == Some(0) {
                        problems.push(source.problem(&["train", "last_n_layers"], "must be at least 1 (leave it out to train every weight)"));
                    }
                    if let Ok(Some(m)) = &model {
                        if m.quantize.is_some() {
                            problems.push(source.problem(&["model", "quantize"], "full fine-tuning trains float weights; a quantized base cannot be trained (QLoRA is mode = \"lora\")"));
                        }
                    }
                    if t.backend == Backend::MlxLm {
                        problems.push(source.problem(&["train", "backend"], "mode = \"full\" runs natively; mlx_lm.lora is used for LoRA runs only"));
                    }
                    if let Some(needs) = needs.filter(|n| n.reference) {
                        let mode = reference.as_ref().ok().and_then(|r| r.as_ref().map(|r| r.mode)).unwrap_or_default();
                        if mode == ReferenceMode::AdaptersOff {
                            let kind = loss.as_ref().map(|l| l.kind.clone()).unwrap_or_default();
                            let better = if needs.rollout() { "\"model\" (a second copy of the base)" } else { "\"precomputed\" (the base model, scored once before training) or \"model\"" };
                            let at: &[&str] = if matches!(reference, Ok(Some(_))) { &["reference", "mode"] } else { &["train", "mode"] };
                            problems.push(source.problem(
                                at,
                                format!("loss `{kind}` compares with a reference policy, and with [train] mode = \"full\" there are no adapters to switch off: set [reference] mode = {better}"),
                            ));
                        }
                    }
                }
                TrainMode::Lora => {
                    if t.last_n_layers.is_some() {
                        problems.push(source.problem(&["train", "last_n_layers"], "goes with mode = \"full\"; LoRA takes [lora] last_n_layers"));
                    }
                }
            }
        }
        if let Ok(rewards) = &rewards {
            for (i, r) in rewards.iter().enumerate() {
                let at = i.to_string();
                check_plugin(&source, &["reward", &at], &r.plugin, registry.reward(&r.plugin.kind, &r.plugin.config).err(), &mut problems);
                if let Some(name) = &r.name {
                    if rewards[..i].iter().any(|o| o.name.as_ref() == Some(name)) {
                        problems.push(source.problem(&["reward", &at, "name"], format!("`{name}` names an earlier reward too; names must be unique")));
                    }
                }
            }
        }
        if let Ok(Some(r)) = &rollout {
            let mut check = |ok: bool, key: &str, message: &str| {
                if !ok {
                    problems.push(source.problem(&["rollout", key], message.to_owned()));
                }
            };
            check(r.num_generations >= 2, "num_generations", "must be at least 2: advantages compare a prompt's completions");
            check(r.max_tokens >= 1, "max_tokens", "must be at least 1");
            check(r.max_sampling_rounds >= 1, "max_sampling_rounds", "must be at least 1");
            check(
                r.max_sampling_rounds == RolloutConfig::default().max_sampling_rounds || r.dynamic_sampling,
                "max_sampling_rounds",
                "goes with dynamic_sampling = true",
            );
            check(r.temperature > 0.0, "temperature", "must be positive: identical greedy samples have no advantages");
            check(r.num_iterations >= 1, "num_iterations", "must be at least 1");
            if let Err(message) = r.sampler().validate() {
                problems.push(source.problem(&["rollout"], message));
            }
            let p = &r.cache;
            check_plugin(&source, &["rollout", "cache"], p, registry.kv_cache_policy(&p.kind, &p.config).err(), &mut problems);
        }
        // The completions' real length limit, when [rollout] parsed (its default when absent).
        let max_tokens = rollout.as_ref().ok().map(|r| r.as_ref().map_or(RolloutConfig::default().max_tokens, |r| r.max_tokens));
        if let Ok(Some(env)) = &environment {
            check_plugin(&source, &["environment"], &env.plugin, registry.environment(&env.plugin.kind, &env.plugin.config).err(), &mut problems);
            if let Ok(rewards) = &rewards {
                let name = env.reward_name();
                if rewards.iter().any(|r| r.name.as_deref().unwrap_or(&r.plugin.kind) == name) {
                    problems.push(source.problem(&["environment", "name"], format!("`{name}` is also a [[reward]]'s name; give the environment another `name`")));
                }
            }
        }
        // What an episode (or a completion) may add after the prompt.
        let completion_budget = match (&environment, max_tokens) {
            (Ok(Some(env)), Some(m)) => Some(env.episode_tokens(m)),
            (_, m) => m,
        };
        if let (Some(needs), Ok(rollout), Ok(rewards), Some(max_tokens)) = (needs, &rollout, &rewards, max_tokens) {
            let kind = loss.as_ref().map(|l| l.kind.clone()).unwrap_or_default();
            let has_env = matches!(&environment, Ok(Some(_)));
            if needs.rollout() {
                if rewards.is_empty() && !has_env {
                    problems.push(source.problem(&["loss", "kind"], format!("loss `{kind}` learns from rewards: add at least one [[reward]] or an [environment]")));
                }
                if let Ok(l) = &loss {
                    if let Some(n) = l.config.get("max_completion_length").and_then(toml::Value::as_integer) {
                        if n as usize != max_tokens {
                            problems.push(source.problem(&["loss", "max_completion_length"], format!("{n} differs from [rollout] max_tokens ({max_tokens}), the completions' real limit")));
                        }
                    }
                }
            } else {
                if rollout.is_some() {
                    problems.push(source.problem(&["rollout"], format!("loss `{kind}` trains on fixed data, not rollouts; remove [rollout]")));
                }
                if !rewards.is_empty() {
                    problems.push(source.problem(&["reward"], format!("loss `{kind}` takes no rewards; remove [[reward]]")));
                }
                if has_env {
                    problems.push(source.problem(&["environment"], format!("loss `{kind}` trains on fixed data, not rollouts; remove [environment]")));
                }
            }
        }
        if let (Some(needs), Ok(Some(d)), Ok(t)) = (needs, &data, &train) {
            if needs.rollout() {
                let kind = loss.as_ref().map(|l| l.kind.clone()).unwrap_or_default();
                if d.mask.is_some() {
                    problems.push(source.problem(&["data", "mask"], format!("loss `{kind}` scores its own completions; `mask` does not apply")));
                }
                if let Some(max_tokens) = completion_budget.filter(|&m| d.max_seq_length <= m) {
                    let what = if matches!(&environment, Ok(Some(_))) { "an episode's tokens ([environment] max_episode_tokens or max_turns × [rollout] max_tokens)" } else { "[rollout] max_tokens" };
                    problems.push(source.problem(&["data", "max_seq_length"], format!("{} leaves no room for prompts next to {what} ({max_tokens}): it bounds prompt + completion", d.max_seq_length)));
                }
                if d.max_batch_tokens.is_some() {
                    problems.push(source.problem(&["data", "max_batch_tokens"], format!("loss `{kind}` batches `batch_size` prompts × num_generations completions; `max_batch_tokens` does not apply")));
                }
                if d.packing {
                    problems.push(source.problem(&["data", "packing"], format!("loss `{kind}` trains on its own rollouts, batched by prompt group; `packing` applies to dataset rows")));
                }
                if source.table.get("data").and_then(|d| d.get("cache")).is_some() {
                    problems.push(source.problem(&["data", "cache"], format!("loss `{kind}` reads prompts, tokenized at the start of the run; the data cache does not apply")));
                }
                if d.valid.is_some() || t.eval_every.is_some() {
                    problems.push(source.problem(&["data", "valid"], format!("loss `{kind}` evaluates with rollouts on held-out prompts: use [eval] prompts and every instead of `valid` and `eval_every`")));
                }
            }
        }
        if let (Some(needs), Ok(Some(d))) = (needs, &data) {
            if (needs.pairs || needs.labels) && d.mask.is_some_and(|m| m != crate::data::Masking::Prompt) {
                let kind = loss.as_ref().map(|l| l.kind.clone()).unwrap_or_default();
                problems.push(source.problem(&["data", "mask"], format!("loss `{kind}` scores completions only: mask must be \"prompt\" (or left out)")));
            }
        }
        if let Ok(Some(l)) = &lora {
            let p = &l.mapper;
            check_plugin(&source, &["lora", "mapper"], p, registry.lora_target_mapper(&p.kind, &p.config).err(), &mut problems);
        }
        if let Ok(Some(d)) = &data {
            let p = &d.cache;
            check_plugin(&source, &["data", "cache"], p, registry.data_cache_policy(&p.kind, &p.config).err(), &mut problems);
        }

        if let Ok(Some(e)) = &eval {
            let mut check = |ok: bool, key: &str, message: &str| {
                if !ok {
                    problems.push(source.problem(&["eval", key], message.to_owned()));
                }
            };
            check(e.every != Some(0), "every", "must be at least 1");
            check(e.num_generations >= 1, "num_generations", "must be at least 1");
            check(e.temperature.is_finite() && e.temperature >= 0.0, "temperature", "must be 0 (greedy) or positive");
            check(e.max_tokens != Some(0), "max_tokens", "must be at least 1");
            check(e.max_prompts != Some(0), "max_prompts", "must be at least 1");
            check(e.batch_size != Some(0), "batch_size", "must be at least 1");
            check(e.prompts.is_file(), "prompts", &format!("{} is not a file", e.prompts.display()));
            if let Some(needs) = needs {
                if !needs.rollout() {
                    let kind = loss.as_ref().map(|l| l.kind.clone()).unwrap_or_default();
                    problems.push(source.problem(&["eval"], format!("[eval] runs rollouts for losses that learn from rewards; loss `{kind}` evaluates on [data] valid with [train] eval_every")));
                }
            }
        }

        match (model, lora, data, train, optimizer, schedule, (loss, reference, rollout, rewards, eval, environment), plugins, output) {
            (Ok(model), Ok(lora), Ok(data), Ok(train), Ok(optimizer), Ok(schedule), (Ok(loss), Ok(reference), Ok(rollout), Ok(reward), Ok(eval), Ok(environment)), Ok(plugins), Ok(mut output))
                if problems.is_empty() =>
            {
                if output.dir.is_none() {
                    let stem = file.file_stem().map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned());
                    output.dir = Some(base.join("runs").join(stem));
                }
                Ok(RunConfig { model, lora, data, train, optimizer, schedule, loss, reference, rollout, reward, eval, environment, plugins, output })
            }
            _ => Err(ConfigError { file: file.to_owned(), problems }),
        }
    }

    /// The schedule this configuration names, with its warmup.
    pub fn build_schedule(&self, registry: &Registry) -> Result<(Box<dyn LrSchedule>, ScheduleContext), RegistryError> {
        let inner = registry.schedule(&self.schedule.plugin.kind, &self.schedule.plugin.config)?;
        let ctx = ScheduleContext { base_lr: self.optimizer.lr, total_steps: self.train.steps };
        let schedule: Box<dyn LrSchedule> = if self.schedule.warmup_steps > 0 {
            Box::new(Warmup { inner, steps: self.schedule.warmup_steps, init: self.schedule.warmup_init })
        } else {
            inner
        };
        Ok((schedule, ctx))
    }

    /// The output directory (always set after [`RunConfig::load`]).
    pub fn output_dir(&self) -> PathBuf {
        self.output.dir.clone().unwrap_or_else(|| PathBuf::from("runs/run"))
    }

    /// Writes the configuration as resolved (defaults filled in, overrides applied) to `dir/resolved.toml`,
    /// atomically.
    pub fn write_resolved(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let text = toml::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::create_dir_all(dir)?;
        let path = dir.join("resolved.toml");
        let tmp = dir.join(".resolved.toml.tmp");
        std::fs::write(&tmp, format!("# The configuration this run used, with defaults and --set overrides applied.\n{text}"))?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests;
