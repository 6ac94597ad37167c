//! The `mlx_lm` backend: the same TOML run by mlx-lm's `mlx_lm.lora` (for model families not implemented here,
//! or on request). Every setting is translated or refused: nothing is silently dropped. mlx-lm reads its data
//! from a directory of `train.jsonl`/`valid.jsonl`, so those are linked into `<output>/mlx_lm_data`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::config::{Checkpointing, OptimizerKind, RunConfig};

use super::TrainError;

/// How to start mlx_lm.lora: `MLX_LM_PYTHON` (a Python with mlx-lm), else `mlx_lm.lora` on PATH, else
/// `python3 -m mlx_lm.lora` if python3 can import it.
pub fn locate() -> Option<Vec<String>> {
    if let Ok(python) = std::env::var("MLX_LM_PYTHON") {
        return Some(vec![python, "-m".into(), "mlx_lm".into(), "lora".into()]);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("mlx_lm.lora").is_file()))
        .unwrap_or(false);
    if on_path {
        return Some(vec!["mlx_lm.lora".into()]);
    }
    let importable = Command::new("python3").args(["-c", "import mlx_lm.lora"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    importable.is_ok_and(|s| s.success()).then(|| vec!["python3".into(), "-m".into(), "mlx_lm".into(), "lora".into()])
}

/// The mlx_lm.lora invocation for a configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub args: Vec<String>,
    /// The `-c` YAML (lora_parameters, lr_schedule, optimizer_config).
    pub yaml: String,
    pub data_dir: PathBuf,
}

fn unsupported(what: &str) -> TrainError {
    TrainError::Config(format!("the mlx_lm backend cannot honour {what}; use backend = \"native\" or remove it"))
}

fn number(table: &toml::Table, key: &str) -> Option<f64> {
    table.get(key).and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
}

/// mlx-lm's `lr_schedule` block for a built-in schedule (mlx.optimizers' schedule functions).
fn schedule_yaml(config: &RunConfig) -> Result<Option<String>, TrainError> {
    let s = &config.schedule;
    let lr = config.optimizer.lr;
    let span = config.train.steps.saturating_sub(s.warmup_steps) as f64;
    let c = &s.plugin.config;
    let (name, args) = match s.plugin.kind.as_str() {
        "constant" if s.warmup_steps == 0 => return Ok(None),
        // A constant after warmup: a linear schedule that does not move.
        "constant" => ("linear_schedule", vec![lr, lr, 1.0]),
        "cosine" => ("cosine_decay", vec![lr, number(c, "decay_steps").unwrap_or(span), number(c, "min_lr").unwrap_or(0.0)]),
        "linear" => ("linear_schedule", vec![lr, number(c, "end_lr").unwrap_or(0.0), number(c, "decay_steps").unwrap_or(span)]),
        "exponential" => {
            let rate = number(c, "decay_rate").unwrap_or(1.0).powf(1.0 / number(c, "decay_steps").unwrap_or(1.0));
            ("exponential_decay", vec![lr, rate])
        }
        "step" => ("step_decay", vec![lr, number(c, "gamma").unwrap_or(0.1), number(c, "step_size").unwrap_or(1.0)]),
        other => return Err(unsupported(&format!("the `{other}` schedule"))),
    };
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    let mut yaml = format!("lr_schedule:\n  name: {name}\n  arguments: [{}]\n", args.join(", "));
    if s.warmup_steps > 0 {
        yaml.push_str(&format!("  warmup: {}\n  warmup_init: {:?}\n", s.warmup_steps, s.warmup_init));
    }
    Ok(Some(yaml))
}

pub fn plan(config: &RunConfig) -> Result<Plan, TrainError> {
    let model = config.model.as_ref().ok_or_else(|| super::session::missing("model"))?;
    let lora = config.lora.as_ref().ok_or_else(|| super::session::missing("lora"))?;
    let data = config.data.as_ref().ok_or_else(|| super::session::missing("data"))?;
    let t = &config.train;
    if config.loss.kind != "sft" || !config.loss.config.is_empty() {
        return Err(unsupported(&format!("loss `{}` (mlx_lm.lora trains plain SFT)", config.loss.kind)));
    }
    if config.output.report_to.as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(unsupported("[output] report_to (mlx_lm.lora reports on its own output)"));
    }
    if model.quantize.is_some() {
        return Err(unsupported("[model] quantize (quantize with `host quantize` first)"));
    }
    if model.dtype.is_some() {
        return Err(unsupported("[model] dtype"));
    }
    let mask = data.masking(crate::data::RowShape::Single);
    if mask == crate::data::Masking::Assistant {
        return Err(unsupported("mask = \"assistant\""));
    }
    if data.skip_bad_rows || data.cache.kind != "disk" || data.pad_multiple != 32 || data.max_batch_tokens.is_some() || data.packing {
        return Err(unsupported("[data] skip_bad_rows, cache, pad_multiple, max_batch_tokens or packing (mlx-lm tokenizes and batches its own way)"));
    }
    if t.max_grad_norm.is_some() || t.early_stopping_patience.is_some() || t.memory_budget_gb.is_some() || t.router_aux_loss_coef != 0.0 {
        return Err(unsupported("max_grad_norm, early_stopping_patience, memory_budget_gb or router_aux_loss_coef"));
    }
    if lora.mapper.kind == "regex" || !matches!(lora.mapper.kind.as_str(), "all_linear" | "short_names") {
        return Err(unsupported(&format!("the `{}` LoRA target mapper (mlx-lm takes module keys per layer)", lora.mapper.kind)));
    }
    let out = config.output_dir();
    let data_dir = out.join("mlx_lm_data");
    let optimizer = match config.optimizer.kind {
        OptimizerKind::Adamw => "adamw",
        OptimizerKind::Adam => "adam",
        OptimizerKind::Sgd => "sgd",
        OptimizerKind::Adafactor => "adafactor",
    };
    let mut args = vec![
        "--model".into(),
        model.path.clone(),
        "--train".into(),
        "--data".into(),
        data_dir.display().to_string(),
        "--fine-tune-type".into(),
        if lora.dora { "dora" } else { "lora" }.into(),
        "--optimizer".into(),
        optimizer.into(),
        "--num-layers".into(),
        lora.last_n_layers.map_or("-1".into(), |n| n.to_string()),
        "--batch-size".into(),
        data.batch_size.to_string(),
        "--iters".into(),
        t.steps.to_string(),
        "--learning-rate".into(),
        format!("{:?}", config.optimizer.lr),
        "--save-every".into(),
        t.save_every.to_string(),
        "--adapter-path".into(),
        out.display().to_string(),
        "--max-seq-length".into(),
        data.max_seq_length.to_string(),
        "--grad-accumulation-steps".into(),
        t.grad_accumulation_steps.to_string(),
        "--seed".into(),
        t.seed.to_string(),
    ];
    if mask == crate::data::Masking::Prompt {
        args.push("--mask-prompt".into());
    }
    match (t.eval_every, &data.valid) {
        (Some(every), Some(_)) => {
            args.extend(["--steps-per-eval".into(), every.to_string()]);
            args.extend(["--val-batches".into(), t.eval_batches.map_or("-1".into(), |n| n.to_string())]);
        }
        // mlx-lm evaluates every 200 steps by default; with no eval_every, never.
        _ => args.extend(["--steps-per-eval".into(), (t.steps + 1).to_string(), "--val-batches".into(), "0".into()]),
    }
    if t.checkpoint_layers.is_some() {
        return Err(unsupported("checkpoint_layers (mlx-lm checkpoints every layer or none)"));
    }
    if t.gradient_checkpointing == Checkpointing::On {
        args.push("--grad-checkpoint".into());
    }
    if t.split_head == crate::config::SplitHead::On {
        return Err(unsupported("split_head = \"on\" (mlx-lm evaluates the head in one graph)"));
    }
    let keys = match lora.mapper.kind.as_str() {
        "short_names" => {
            let names: Vec<String> = lora.mapper.config.get("targets").and_then(|v| v.as_array()).map_or_else(Vec::new, |a| {
                a.iter().filter_map(|v| v.as_str()).map(str::to_owned).collect()
            });
            let mut keys = Vec::new();
            for n in names {
                let group: Vec<&str> = match n.as_str() {
                    "attention" => vec!["q_proj", "k_proj", "v_proj", "o_proj"],
                    "mlp" => vec!["gate_proj", "up_proj", "down_proj"],
                    other => vec![other],
                };
                for g in group {
                    let prefix = if ["gate_proj", "up_proj", "down_proj"].contains(&g) { "mlp" } else { "self_attn" };
                    keys.push(format!("\"{prefix}.{g}\""));
                }
            }
            format!("  keys: [{}]\n", keys.join(", "))
        }
        _ => String::new(),
    };
    let mut yaml = format!(
        "lora_parameters:\n  rank: {}\n  scale: {:?}\n  dropout: {:?}\n{keys}",
        lora.rank, lora.scale, lora.dropout
    );
    if let Some(s) = schedule_yaml(config)? {
        yaml.push_str(&s);
    }
    let o = &config.optimizer;
    let mut opt = Vec::new();
    if let Some(wd) = o.weight_decay {
        opt.push(format!("weight_decay: {wd:?}"));
    }
    if let Some([a, b]) = o.betas {
        opt.push(format!("betas: [{a:?}, {b:?}]"));
    }
    if let Some(eps) = o.eps {
        opt.push(format!("eps: {eps:?}"));
    }
    if let Some(m) = o.momentum {
        opt.push(format!("momentum: {m:?}"));
    }
    if !opt.is_empty() {
        yaml.push_str(&format!("optimizer_config:\n  {optimizer}:\n{}", opt.iter().map(|l| format!("    {l}\n")).collect::<String>()));
    }
    Ok(Plan { args, yaml, data_dir })
}

fn link(from: &Path, to: &Path) -> Result<(), TrainError> {
    let _ = std::fs::remove_file(to);
    let from = from.canonicalize().map_err(|e| TrainError::Io { path: from.to_owned(), message: e.to_string() })?;
    std::os::unix::fs::symlink(&from, to).map_err(|e| TrainError::Io { path: to.to_owned(), message: e.to_string() })
}

/// Runs mlx_lm.lora with the plan, its output passed through.
pub fn run(config: &RunConfig, command: &[String]) -> Result<(), TrainError> {
    let plan = plan(config)?;
    let data = config.data.as_ref().ok_or_else(|| super::session::missing("data"))?;
    std::fs::create_dir_all(&plan.data_dir).map_err(|e| TrainError::Io { path: plan.data_dir.clone(), message: e.to_string() })?;
    link(&data.train, &plan.data_dir.join("train.jsonl"))?;
    if let Some(valid) = &data.valid {
        link(valid, &plan.data_dir.join("valid.jsonl"))?;
    }
    let yaml_path = config.output_dir().join("mlx_lm_config.yaml");
    std::fs::write(&yaml_path, &plan.yaml).map_err(|e| TrainError::Io { path: yaml_path.clone(), message: e.to_string() })?;
    let (program, prefix) = command.split_first().ok_or_else(|| TrainError::Config("empty mlx_lm command".into()))?;
    let status = Command::new(program)
        .args(prefix)
        .args(&plan.args)
        .arg("-c")
        .arg(&yaml_path)
        .status()
        .map_err(|e| TrainError::Config(format!("cannot start {program}: {e}")))?;
    if !status.success() {
        return Err(TrainError::Config(format!("mlx_lm.lora failed ({status})")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::Registry;

    fn config(extra: &str) -> Result<RunConfig, String> {
        let dir = std::env::temp_dir().join(format!("mlx-lm-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("train.jsonl"), "{\"text\": \"x\"}\n").unwrap();
        let text = format!(
            "[model]\npath = \"m\"\n[lora]\nrank = 4\nscale = 8.0\nmapper = {{ kind = \"short_names\", targets = [\"q_proj\", \"mlp\"] }}\n\
             [data]\ntrain = \"train.jsonl\"\nmask = \"prompt\"\n[optimizer]\nlr = 1e-4\nweight_decay = 0.05\n\
             [schedule]\nkind = \"cosine\"\nwarmup_steps = 10\nmin_lr = 1e-5\n[train]\nsteps = 110\nbackend = \"mlx_lm\"\n{extra}\n[output]\ndir = \"out\"\n"
        );
        // Tests run in parallel: one file per configuration.
        let path = dir.join(format!("c{}.toml", extra.len()));
        std::fs::write(&path, text).unwrap();
        RunConfig::load_in(&path, &[], &mut Registry::builtin().unwrap(), &dir).map_err(|e| e.to_string())
    }

    #[test]
    fn settings_translate_to_mlx_lm_arguments_and_yaml() {
        let plan = plan(&config("").unwrap()).unwrap();
        let arg = |flag: &str| plan.args.iter().position(|a| a == flag).map(|i| plan.args[i + 1].clone());
        assert_eq!(arg("--iters").as_deref(), Some("110"));
        assert_eq!(arg("--num-layers").as_deref(), Some("-1"));
        assert_eq!(arg("--optimizer").as_deref(), Some("adamw"));
        assert_eq!(arg("--learning-rate").as_deref(), Some("0.0001"));
        assert!(plan.args.contains(&"--mask-prompt".to_owned()));
        assert_eq!(
            plan.yaml,
            "lora_parameters:\n  rank: 4\n  scale: 8.0\n  dropout: 0.0\n  keys: [\"self_attn.q_proj\", \"mlp.gate_proj\", \"mlp.up_proj\", \"mlp.down_proj\"]\n\
             lr_schedule:\n  name: cosine_decay\n  arguments: [0.0001, 100.0, 1e-5]\n  warmup: 10\n  warmup_init: 0.0\n\
             optimizer_config:\n  adamw:\n    weight_decay: 0.05\n"
        );
    }

    #[test]
    fn what_mlx_lm_cannot_do_is_refused() {
        let err = plan(&config("max_grad_norm = 1.0").unwrap()).unwrap_err().to_string();
        assert!(err.contains("cannot honour max_grad_norm"), "{err}");
        let mut c = config("").unwrap();
        c.schedule.plugin.kind = "wsd".into();
        assert!(plan(&c).unwrap_err().to_string().contains("the `wsd` schedule"));
        let mut c = config("").unwrap();
        c.loss.kind = "dpo".into();
        assert!(plan(&c).unwrap_err().to_string().contains("loss `dpo`"));
    }
}
