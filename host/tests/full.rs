//! Full fine-tuning (`[train] mode = "full"`): its gradient is the one LoRA's gradients imply, only the chosen
//! layers change, the output is a complete model directory that loads again, resume is exact to the byte,
//! preference losses take their reference from precomputed base log-probs, and GRPO trains the weights.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use host::{
    config::{Override, RunConfig},
    fixture::{self, Family, Preset},
    model::{self, LoadOptions},
    plugins::Registry,
    train::{self, Resume, StopReason},
};
use mlx_rs::{Array, Dtype};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("host-full-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// An SFT run on a tiny Qwen2 fixture over the shipped data; `tuning` is `[lora]` or `[train]` keys.
fn sft_config(dir: &Path, name: &str, tuning: &str, train: &str, optimizer: &str) -> PathBuf {
    let data = workspace().join("data/sft");
    let text = format!(
        r#"
{tuning}
[model]
path = {model:?}
dtype = "float32"
[data]
train = {train_data:?}
mask = "prompt"
batch_size = 4
[optimizer]
{optimizer}
[schedule]
kind = "constant"
[train]
seed = 5
{train}
[output]
dir = {out:?}
report_to = []
"#,
        model = dir.join("model").display().to_string(),
        train_data = data.join("train.jsonl").display().to_string(),
        out = dir.join(name).display().to_string(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn load(path: &Path, overrides: &[&str]) -> (RunConfig, Registry) {
    let mut registry = Registry::builtin().unwrap();
    let overrides: Vec<Override> = overrides.iter().map(|o| o.parse().unwrap()).collect();
    (RunConfig::load(path, &overrides, &mut registry).unwrap(), registry)
}

fn tensors(path: &Path) -> HashMap<String, Array> {
    Array::load_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn values(a: &Array) -> Vec<f32> {
    a.as_dtype(Dtype::Float32).unwrap().to_vec_exact::<f32>().unwrap()
}

fn records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn one_sgd_step_of_full_fine_tuning_is_the_gradient_lora_implies() {
    // With B = 0, LoRA's layer computes the base output, so both runs see the same loss and the same output
    // gradient dY. Then ∂L/∂B = s·Aᵀ·(∂L/∂W)ᵀ and ∂L/∂A = 0, and after one plain SGD step (learning rate η)
    // B₁ = −η ∂L/∂B and W₁ − W₀ = −η ∂L/∂W, so B₁ = s·A₀ᵀ·(W₁ − W₀)ᵀ for every adapted layer.
    let dir = temp("sgd");
    fixture::write(&dir.join("model"), Family::Qwen2, Preset::Tiny, 1).unwrap();
    let sgd = "kind = \"sgd\"\nlr = 1.0";
    let scale = 10.0f32;
    let lora = sft_config(&dir, "lora", &format!("[lora]\nrank = 4\nscale = {scale}\ndropout = 0.0\nmapper = {{ kind = \"all_linear\" }}"), "steps = 1", sgd);
    let full = sft_config(&dir, "full", "", "steps = 1\nmode = \"full\"", sgd);
    for path in [&lora, &full] {
        let (cfg, registry) = load(path, &[]);
        train::run(&cfg, &registry, None).unwrap();
    }
    let (l, f) = (records(&dir.join("lora")), records(&dir.join("full")));
    assert_eq!(l[0]["loss"], f[0]["loss"], "the same first loss");

    let base = model::read_weights(&dir.join("model")).unwrap();
    let trained = model::read_weights(&dir.join("full")).unwrap();
    let adapters = tensors(&dir.join("lora/adapters.safetensors"));
    let mut checked = 0;
    for (name, b1) in &adapters {
        let Some(layer) = name.strip_suffix(".lora_b") else { continue };
        let a0 = &adapters[&format!("{layer}.lora_a")];
        let delta = trained[&format!("{layer}.weight")].subtract(&base[&format!("{layer}.weight")]).unwrap();
        let implied = a0.t().matmul(delta.t()).unwrap().multiply(Array::from_f32(scale)).unwrap();
        let (want, got) = (values(&implied), values(b1));
        let peak = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = want.iter().zip(&got).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        // Both sides are float32 sums over the batch's tokens in different orders, and W₁ − W₀ loses the
        // low bits of W₀ (relative ~1e-6 here): 1e-3 of the peak is far above that and far below a wrong
        // gradient (a missing layer, a doubled loss or a dropped token moves B by its whole size).
        assert!(peak > 0.0 && worst <= 1e-3 * peak, "{layer}: worst {worst:e} of peak {peak:e}");
        checked += 1;
    }
    assert!(checked >= 7, "{checked} adapted layers compared");
    // Everything trains with no [train] last_n_layers: embeddings and norms too.
    for name in ["model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"] {
        assert_ne!(values(&trained[name]), values(&base[name]), "{name} did not change");
    }
}

#[test]
fn last_n_layers_train_alone_and_the_result_is_a_model_directory_that_loads() {
    let dir = temp("last");
    fixture::write(&dir.join("model"), Family::Llama, Preset::Tiny, 2).unwrap();
    let path = sft_config(&dir, "run", "", "steps = 12\nmode = \"full\"\nlast_n_layers = 1\nsave_every = 6", "kind = \"adamw\"\nlr = 1e-3");
    let (cfg, registry) = load(&path, &[]);
    let outcome = train::run(&cfg, &registry, None).unwrap();
    assert_eq!((outcome.steps, outcome.stopped), (12, StopReason::Completed));
    let run = dir.join("run");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training_config.json", "checkpoints/step-0000012/model.safetensors"] {
        assert!(run.join(f).is_file(), "{f}");
    }
    assert!(!run.join("adapters.safetensors").exists(), "no adapter files from a full run");
    let losses: Vec<f64> = records(&run).iter().filter_map(|r| r["loss"].as_f64()).collect();
    assert!(losses[9..].iter().sum::<f64>() < losses[..3].iter().sum::<f64>(), "{losses:?}");

    let base = model::read_weights(&dir.join("model")).unwrap();
    let trained = model::read_weights(&run).unwrap();
    assert_eq!(base.len(), trained.len());
    let last = model::load(&dir.join("model"), &LoadOptions::default()).unwrap().model.num_layers() - 1;
    for (name, b) in &base {
        let changed = values(b) != values(&trained[name]);
        let in_last = name.starts_with(&format!("model.layers.{last}."));
        // AdamW moves every trained weight (its update is never exactly zero); the rest is bit for bit the base.
        assert_eq!(changed, in_last, "{name}");
    }
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("training_config.json")).unwrap()).unwrap();
    assert_eq!((config["fine_tune_type"].as_str(), config["num_layers"].as_u64()), (Some("full"), Some(1)));

    // The directory loads as a model and computes with the trained weights.
    let reloaded = model::load(&run, &LoadOptions { dtype: Some(Dtype::Float32), quantize: None }).unwrap();
    assert_eq!(reloaded.args.model_type, "llama");
}

#[test]
fn a_full_run_resumed_halfway_writes_the_same_bytes() {
    let dir = temp("resume");
    fixture::write(&dir.join("model"), Family::Qwen3, Preset::Tiny, 4).unwrap();
    let path = sft_config(&dir, "x", "", "steps = 6\nmode = \"full\"\nsave_every = 3\nmax_grad_norm = 1.0", "kind = \"adamw\"\nlr = 1e-3");
    let out = |name: &str| format!("output.dir={:?}", dir.join(name).display().to_string());
    let (cfg, registry) = load(&path, &[&out("straight")]);
    train::run(&cfg, &registry, None).unwrap();
    let (cfg, registry) = load(&path, &[&out("split"), "train.steps=3"]);
    train::run(&cfg, &registry, None).unwrap();
    let (cfg, registry) = load(&path, &[&out("split")]);
    let resumed = train::run(&cfg, &registry, Some(&Resume::Latest)).unwrap();
    assert_eq!(resumed.steps, 6);
    for file in ["model.safetensors", "checkpoints/step-0000006/model.safetensors", "checkpoints/step-0000006/state.safetensors"] {
        let (a, b) = (std::fs::read(dir.join("straight").join(file)).unwrap(), std::fs::read(dir.join("split").join(file)).unwrap());
        assert!(a == b, "{file}: contents differ");
    }
    // Resuming a full run's checkpoint as a LoRA run is refused by name, not half-loaded.
    let lora = sft_config(&dir, "lora", "[lora]\nrank = 2", "steps = 6", "kind = \"adamw\"\nlr = 1e-3");
    let (cfg, registry) = load(&lora, &[&out("split")]);
    let err = train::run(&cfg, &registry, Some(&Resume::Latest)).unwrap_err().to_string();
    assert!(err.contains("another training setup") || err.contains("adapters"), "{err}");
}

/// Preference pairs: the shipped data.
fn dpo_config(dir: &Path, reference: &str) -> PathBuf {
    let data = workspace().join("data/preference");
    let text = format!(
        r#"
[model]
path = {model:?}
dtype = "float32"
[data]
train = {train:?}
batch_size = 4
[loss]
kind = "dpo"
beta = 0.1
{reference}
[optimizer]
lr = 1e-4
[train]
steps = 4
mode = "full"
seed = 1
[output]
dir = {out:?}
report_to = []
"#,
        model = dir.join("model").display().to_string(),
        train = data.join("train.jsonl").display().to_string(),
        out = dir.join("dpo").display().to_string(),
    );
    let path = dir.join("dpo.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn dpo_fine_tunes_every_weight_against_precomputed_base_log_probs() {
    let dir = temp("dpo");
    fixture::write(&dir.join("model"), Family::Qwen2, Preset::Tiny, 6).unwrap();
    let mut registry = Registry::builtin().unwrap();
    // No adapters to switch off: the default reference is refused, naming what works.
    let err = RunConfig::load(&dpo_config(&dir, ""), &[], &mut registry).unwrap_err().to_string();
    assert!(err.contains("no adapters to switch off") && err.contains("precomputed"), "{err}");

    let (cfg, registry) = load(&dpo_config(&dir, "[reference]\nmode = \"precomputed\""), &[]);
    train::run(&cfg, &registry, None).unwrap();
    let r = records(&dir.join("dpo"));
    // Before the first update the policy is the reference: every margin is 0 and the sigmoid loss is ln 2.
    let first = r[0]["loss"].as_f64().unwrap();
    assert!((first - std::f64::consts::LN_2).abs() < 1e-5, "first loss {first}");
    assert!(r[0]["rewards/margins"].as_f64().unwrap().abs() < 1e-5);
    // Later steps move away from the reference.
    assert!(r.last().unwrap()["rewards/margins"].as_f64().unwrap().abs() > 1e-4, "{:?}", r.last());
}

#[test]
fn grpo_fine_tunes_the_weights_with_a_separate_reference_model() {
    let dir = temp("grpo");
    fixture::write(&dir.join("model"), Family::Llama, Preset::Tiny, 2).unwrap();
    let rows: String = (0..8).map(|i| format!("{{\"prompt\": \"What is {i} + 1?\", \"answer\": \"{}\"}}\n", i + 1)).collect();
    std::fs::write(dir.join("prompts.jsonl"), rows).unwrap();
    let model_dir = dir.join("model").display().to_string();
    let text = format!(
        r#"
[model]
path = {model_dir:?}
dtype = "float32"
[data]
train = {data:?}
batch_size = 2
max_seq_length = 64
[rollout]
num_generations = 4
max_tokens = 6
[[reward]]
kind = "length_penalty"
[optimizer]
lr = 1e-3
[train]
steps = 3
mode = "full"
last_n_layers = 2
seed = 3
[loss]
kind = "grpo"
beta = 0.04
[reference]
mode = "model"
model = {model_dir:?}
[output]
dir = {out:?}
report_to = []
"#,
        data = dir.join("prompts.jsonl").display().to_string(),
        out = dir.join("run").display().to_string(),
    );
    let path = dir.join("grpo.toml");
    std::fs::write(&path, text).unwrap();
    let (cfg, registry) = load(&path, &[]);
    let outcome = train::run(&cfg, &registry, None).unwrap();
    assert_eq!(outcome.steps, 3);
    let r = records(&dir.join("run"));
    // The first step's policy is the reference model itself: k3 is exactly 0 there, then the weights move.
    assert!(r[0]["kl"].as_f64().unwrap().abs() < 1e-6, "{}", r[0]);
    assert!(r.last().unwrap()["kl"].as_f64().unwrap() > 0.0, "{:?}", r.last());
    assert!(dir.join("run/model.safetensors").is_file());
}

#[test]
fn full_mode_settings_that_cannot_work_are_refused_by_name() {
    let dir = temp("refused");
    fixture::write(&dir.join("model"), Family::Qwen2, Preset::Tiny, 1).unwrap();
    let adam = "kind = \"adamw\"\nlr = 1e-3";
    let mut registry = Registry::builtin().unwrap();
    let mut refused = |name: &str, tuning: &str, train: &str, expect: &[&str]| {
        let path = sft_config(&dir, name, tuning, train, adam);
        let err = RunConfig::load(&path, &[], &mut registry).unwrap_err().to_string();
        assert!(expect.iter().all(|e| err.contains(e)), "{name}: {err}");
    };
    refused("with-lora", "[lora]\nrank = 4", "mode = \"full\"", &["[lora]", "remove"]);
    refused("lora-layers", "[lora]\nrank = 4", "last_n_layers = 2", &["last_n_layers", "mode = \"full\""]);
    refused("zero-layers", "", "mode = \"full\"\nlast_n_layers = 0", &["last_n_layers", "at least 1"]);
    refused("quantized", "", "mode = \"full\"\n[model.quantize]\nbits = 4", &["quantize", "QLoRA"]);

    // A quantized checkpoint is refused when it loads.
    let q = dir.join("q");
    let loaded = model::load(&dir.join("model"), &LoadOptions { dtype: None, quantize: Some(host::nn::Quant::affine(4, 32)) }).unwrap();
    model::save(&loaded, &q).unwrap();
    let path = sft_config(&dir, "qdir", "", "mode = \"full\"", adam);
    let (cfg, registry) = load(&path, &[&format!("model.path={:?}", q.display().to_string())]);
    let err = train::run(&cfg, &registry, None).unwrap_err().to_string();
    assert!(err.contains("quantized") && err.contains("mode = \"lora\""), "{err}");
}
