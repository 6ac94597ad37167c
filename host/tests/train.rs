//! The SFT trainer end to end on a fixture model: the loss falls, resume is exact, gradient accumulation
//! weighs micro-batches by supervised tokens, a non-finite loss stops with a checkpoint, an interrupt saves.

mod common;
use common::adapters;

use std::path::{Path, PathBuf};

use host::{
    config::{Override, RunConfig},
    data::{collate, Masking, Row},
    fixture::{self, Family, Preset},
    lora::{self, LoraSettings},
    model::{self, LoadOptions},
    plugins::Registry,
    text::TextTokenizer,
    train::{self, Resume, StopReason, TrainError},
};
use mlx_rs::{module::ModuleParameters, Array, Dtype};
use sdk::{Loss, LossInputs, LossOutput, Plugin, PluginError, Requirements};


/// The one sequence a text, prompt/completion or messages row becomes.
fn single(row: &Row, t: &TextTokenizer, masking: Masking, max_len: usize) -> Result<host::data::Example, String> {
    host::data::tokenize(row, t, masking, max_len).map(|mut item| item.examples.remove(0))
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("host-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A run config over a fresh tiny fixture and the shipped SFT data.
fn config(name: &str, extra: &str) -> (PathBuf, PathBuf) {
    let dir = temp(name);
    fixture::write(&dir.join("model"), Family::Qwen2, Preset::Tiny, 1).unwrap();
    let data = workspace().join("data/sft");
    let text = format!(
        r#"
[model]
path = {model:?}

[lora]
rank = 4
scale = 10.0
dropout = 0.1

[data]
train = {train:?}
valid = {valid:?}
mask = "prompt"
batch_size = 4
cache = {{ kind = "disk", dir = {cache:?} }}

[optimizer]
kind = "adamw"
lr = 2e-3

[schedule]
kind = "cosine"
warmup_steps = 2

[train]
steps = 30
save_every = 10
eval_every = 10
max_grad_norm = 1.0
seed = 3
{extra}

[output]
dir = {out:?}
"#,
        model = dir.join("model").display().to_string(),
        train = data.join("train.jsonl").display().to_string(),
        valid = data.join("valid.jsonl").display().to_string(),
        cache = dir.join("cache").display().to_string(),
        out = dir.join("run").display().to_string(),
    );
    let path = dir.join("sft.toml");
    std::fs::write(&path, text).unwrap();
    (path, dir)
}

fn load(path: &Path, overrides: &[&str]) -> (RunConfig, Registry) {
    let mut registry = Registry::builtin().unwrap();
    let overrides: Vec<Override> = overrides.iter().map(|o| o.parse().unwrap()).collect();
    (RunConfig::load(path, &overrides, &mut registry).unwrap(), registry)
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("loss")?.as_f64())
        .collect()
}

#[test]
fn loss_falls_and_the_run_leaves_adapters_checkpoints_metrics_and_a_plot() {
    let (path, dir) = config("falls", "");
    let (cfg, registry) = load(&path, &[]);
    let outcome = train::run(&cfg, &registry, None).unwrap();
    assert_eq!((outcome.steps, outcome.stopped), (30, StopReason::Completed));
    let run = dir.join("run");
    let l = losses(&run);
    assert_eq!(l.len(), 30);
    let (first, last) = (l[..5].iter().sum::<f64>() / 5.0, l[25..].iter().sum::<f64>() / 5.0);
    assert!(last < first - 0.3, "loss {first:.3} → {last:.3}");
    for f in ["adapters.safetensors", "adapter_config.json", "loss.png", "resolved.toml", "best/adapters.safetensors", "checkpoints/latest"] {
        assert!(run.join(f).is_file(), "{f}");
    }
    let checkpoints: Vec<String> = std::fs::read_dir(run.join("checkpoints")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("step-")).collect();
    assert_eq!(checkpoints.len(), 3);
    assert!(outcome.padded_tokens >= outcome.real_tokens && outcome.real_tokens > 0);
}

#[test]
fn twenty_steps_equal_ten_then_resume_ten_bit_for_bit() {
    let (path, dir) = config("resume", "grad_accumulation_steps = 2");
    let straight = dir.join("straight");
    let (cfg, registry) = load(&path, &["train.steps=20", &format!("output.dir={:?}", straight.display().to_string())]);
    train::run(&cfg, &registry, None).unwrap();

    let split = dir.join("split");
    let out = format!("output.dir={:?}", split.display().to_string());
    let (cfg, registry) = load(&path, &["train.steps=20", &out]);
    // Stop after 10 steps, as Ctrl-C would.
    struct StopAt(u64);
    impl train::StepCallback for StopAt {
        fn after_step(&mut self, step: u64, _loss: f64) -> host::generate::Control {
            if step == self.0 { host::generate::Control::Stop } else { host::generate::Control::Continue }
        }
    }
    let first = train::run_with(&cfg, &registry, None, &mut StopAt(10)).unwrap();
    assert_eq!((first.steps, first.stopped), (10, StopReason::Interrupted));
    let resumed = train::run(&cfg, &registry, Some(&Resume::Latest)).unwrap();
    assert_eq!(resumed.steps, 20);
    assert_eq!(adapters(&straight), adapters(&split), "adapters after 20 steps");
    assert_eq!(losses(&straight), losses(&split), "the same losses step by step");
    // The same bytes, not only the same values: tensors are written in canonical order, never in the
    // parameters' hash-map order (which differs between processes and runs).
    for file in ["adapters.safetensors", "checkpoints/step-0000020/adapters.safetensors", "checkpoints/step-0000020/state.safetensors"] {
        let (a, b) = (std::fs::read(straight.join(file)).unwrap(), std::fs::read(split.join(file)).unwrap());
        assert!(a == b, "{file}: {} vs {} bytes, contents differ", a.len(), b.len());
    }
}

#[test]
fn packed_batches_are_nearly_padding_free_and_resume_bit_for_bit() {
    let (path, dir) = config("packed", "");
    let packed = ["data.packing=true", "data.batch_size=2", "data.max_seq_length=96", "data.pad_multiple=8", "train.steps=12", "train.eval_every=6"];
    let straight = dir.join("straight");
    let mut overrides: Vec<String> = packed.iter().map(|s| s.to_string()).collect();
    overrides.push(format!("output.dir={:?}", straight.display().to_string()));
    let refs: Vec<&str> = overrides.iter().map(String::as_str).collect();
    let (cfg, registry) = load(&path, &refs);
    let outcome = train::run(&cfg, &registry, None).unwrap();
    // This data's rows average ~25 tokens, so one row per sequence of 96 would compute ~26% real positions;
    // placed longest first, several to a sequence, only the sequences' tails are padding (measured 88%).
    let real = outcome.real_tokens as f64 / outcome.padded_tokens as f64;
    assert!(real > 0.85, "{} real of {} computed positions", outcome.real_tokens, outcome.padded_tokens);

    let split = dir.join("split");
    overrides.pop();
    overrides.push(format!("output.dir={:?}", split.display().to_string()));
    let refs: Vec<&str> = overrides.iter().map(String::as_str).collect();
    let (cfg, registry) = load(&path, &refs);
    struct StopAt(u64);
    impl train::StepCallback for StopAt {
        fn after_step(&mut self, step: u64, _loss: f64) -> host::generate::Control {
            if step == self.0 { host::generate::Control::Stop } else { host::generate::Control::Continue }
        }
    }
    train::run_with(&cfg, &registry, None, &mut StopAt(7)).unwrap();
    train::run(&cfg, &registry, Some(&Resume::Latest)).unwrap();
    assert_eq!(losses(&straight), losses(&split), "the same losses step by step");
    assert_eq!(adapters(&straight), adapters(&split), "adapters after 12 steps");
}

/// A loss that is NaN.
struct NanLoss;

impl Plugin for NanLoss {
    const NAME: &'static str = "nan_loss";
    const SUMMARY: &'static str = "test: always NaN";
    fn from_config(_: &sdk::toml::Table) -> Result<Self, PluginError> {
        Ok(NanLoss)
    }
}

impl Loss for NanLoss {
    fn requirements(&self) -> Requirements {
        Requirements::default()
    }

    fn forward(&self, inputs: &LossInputs<'_>) -> Result<LossOutput, PluginError> {
        let loss = inputs.policy_logps.sum(None)?.multiply(Array::from_f32(f32::NAN))?;
        Ok(LossOutput { loss, metrics: vec![] })
    }
}

sdk::register_loss!(NanLoss);

#[test]
fn a_non_finite_loss_stops_before_the_update_with_a_checkpoint() {
    let (path, _) = config("nan", "");
    let (cfg, registry) = load(&path, &["loss.kind=nan_loss"]);
    match train::run(&cfg, &registry, None) {
        Err(TrainError::NonFinite { step, value, checkpoint, .. }) => {
            assert_eq!(step, 1);
            assert!(value.is_nan());
            // The checkpoint holds the untouched initial adapters: B is still zero.
            let t = Array::load_safetensors(checkpoint.join("adapters.safetensors")).unwrap();
            let b = &t["model.layers.0.self_attn.q_proj.lora_b"];
            assert_eq!(b.abs().unwrap().sum(None).unwrap().item_exact::<f32>(), 0.0);
        }
        other => panic!("expected a non-finite stop, got {other:?}"),
    }
}

/// A loss that is finite (zero) with a non-finite gradient: d√u/du is infinite at u = 0.
struct NanGradLoss;

impl Plugin for NanGradLoss {
    const NAME: &'static str = "nan_grad_loss";
    const SUMMARY: &'static str = "test: zero loss, non-finite gradient";
    fn from_config(_: &sdk::toml::Table) -> Result<Self, PluginError> {
        Ok(NanGradLoss)
    }
}

impl Loss for NanGradLoss {
    fn requirements(&self) -> Requirements {
        Requirements::default()
    }

    fn forward(&self, inputs: &LossInputs<'_>) -> Result<LossOutput, PluginError> {
        let lp = inputs.policy_logps;
        let loss = lp.subtract(lp)?.sqrt()?.sum(None)?;
        Ok(LossOutput { loss, metrics: vec![] })
    }
}

sdk::register_loss!(NanGradLoss);

/// The update is guarded in the graph (the loss is read only after the step ran), so a finite loss whose
/// gradient is not must leave the adapters untouched too, and name the gradient norm.
#[test]
fn a_non_finite_gradient_stops_before_the_update_with_a_checkpoint() {
    let (path, _) = config("nan_grad", "");
    let (cfg, registry) = load(&path, &["loss.kind=nan_grad_loss"]);
    match train::run(&cfg, &registry, None) {
        Err(e @ TrainError::NonFinite { step: 1, .. }) => {
            let TrainError::NonFinite { what, value, ref checkpoint, .. } = e else { unreachable!() };
            assert_eq!(what, "gradient norm");
            assert!(!value.is_finite());
            let t = Array::load_safetensors(checkpoint.join("adapters.safetensors")).unwrap();
            for (name, a) in &t {
                if name.ends_with("lora_b") {
                    assert_eq!(a.abs().unwrap().sum(None).unwrap().item_exact::<f32>(), 0.0, "{name} was updated");
                }
            }
            assert!(e.to_string().contains("the gradient norm is"), "{e}");
        }
        other => panic!("expected a non-finite stop, got {other:?}"),
    }
}

#[test]
fn gradient_accumulation_weighs_micro_batches_by_supervised_tokens() {
    let dir = temp("accum");
    fixture::write(&dir, Family::Llama, Preset::Tiny, 1).unwrap();
    let t = TextTokenizer::load(&dir).unwrap();
    let mut m = model::load(&dir, &LoadOptions { dtype: Some(Dtype::Float32), quantize: None }).unwrap().model;
    let mapper = Registry::builtin().unwrap().lora_target_mapper("all_linear", &sdk::toml::Table::new()).unwrap();
    lora::apply(&mut m, &*mapper, &LoraSettings { rank: 4, scale: 2.0, dropout: 0.0, dora: false, last_n_layers: None }, 0).unwrap();
    for (i, (_, l)) in m.linears_mut().into_iter().enumerate() {
        if let Some(b) = &mut *l.lora_b {
            *b = mlx_rs::random::normal::<f32>(b.shape(), None, None, &mlx_rs::random::key(i as u64).unwrap()).unwrap().multiply(Array::from_f32(0.05)).unwrap();
        }
    }
    let row = |p: &str, c: &str| single(&Row::Completion { system: None, prompt: p.into(), completion: c.into() }, &t, Masking::Prompt, 512).unwrap();
    // Very different supervised counts: equal weights would differ from the token-weighted mean.
    let (short, long) = (row("1 + 1", "2"), row("Tell me", "the model reads a short story and answers the question step by step"));
    let (a, b) = (collate(&[&short], 8, 0), collate(&[&long], 8, 0));
    let both = collate(&[&short, &long], 8, 0);
    let loss = Registry::builtin().unwrap().loss("sft", &sdk::toml::Table::new()).unwrap();
    let grads_of = |m: &mut model::CausalLm, batch: &host::data::Batch| {
        let mut vg = mlx_rs::nn::value_and_grad(|m: &mut model::CausalLm, _: ()| -> Result<Vec<Array>, mlx_rs::error::Exception> {
            let logps = train::token_logps(m, &batch.inputs, &batch.targets, None)?;
            Ok(vec![loss.forward(&LossInputs::new(&logps, &batch.mask)).map_err(|e| mlx_rs::error::Exception::custom(e.to_string()))?.loss])
        });
        vg(m, ()).unwrap().1
    };
    let (ga, gb, gboth) = (grads_of(&mut m, &a), grads_of(&mut m, &b), grads_of(&mut m, &both));
    let n = (a.supervised + b.supervised) as f32;
    let (wa, wb) = (a.supervised as f32 / n, b.supervised as f32 / n);
    let mut worst = 0.0f32;
    let mut unweighted_gap = 0.0f32;
    for (k, g) in &gboth {
        let weighted = ga[k].multiply(Array::from_f32(wa)).unwrap().add(gb[k].multiply(Array::from_f32(wb)).unwrap()).unwrap();
        let equal = ga[k].add(&gb[k]).unwrap().multiply(Array::from_f32(0.5)).unwrap();
        worst = worst.max(weighted.subtract(g).unwrap().abs().unwrap().max(None).unwrap().item_exact::<f32>());
        unweighted_gap = unweighted_gap.max(equal.subtract(g).unwrap().abs().unwrap().max(None).unwrap().item_exact::<f32>());
    }
    assert!(worst < 1e-6, "token-weighted accumulation differs from the joint batch by {worst}");
    assert!(unweighted_gap > 100.0 * worst.max(1e-8), "equal weights would differ noticeably ({unweighted_gap})");
    let _ = m.trainable_parameters();
}

#[test]
fn missing_sections_and_bad_configs_are_clear() {
    let (path, _) = config("bad", "");
    let mut registry = Registry::builtin().unwrap();
    let overrides: Vec<Override> = vec!["optimizer.momentum=0.9".parse().unwrap(), "data.mask=everything".parse().unwrap()];
    let err = RunConfig::load(&path, &overrides, &mut registry).unwrap_err().to_string();
    assert!(err.contains("`optimizer.momentum`: does not apply to adamw"), "{err}");
    assert!(err.contains("`data.mask`: unknown variant `everything`"), "{err}");
    let (mut cfg, registry) = load(&path, &[]);
    cfg.data = None;
    let err = train::run(&cfg, &registry, None).unwrap_err().to_string();
    assert_eq!(err, "training needs a [data] section");
}

#[test]
fn checkpointed_layers_give_the_same_gradients() {
    let dir = temp("ckpt");
    fixture::write(&dir, Family::Qwen3, Preset::Tiny, 4).unwrap();
    let mut m = model::load(&dir, &LoadOptions { dtype: Some(Dtype::Float32), quantize: None }).unwrap().model;
    let mapper = Registry::builtin().unwrap().lora_target_mapper("all_linear", &sdk::toml::Table::new()).unwrap();
    lora::apply(&mut m, &*mapper, &LoraSettings { rank: 4, scale: 2.0, dropout: 0.0, dora: false, last_n_layers: Some(1) }, 0).unwrap();
    for (i, (_, l)) in m.linears_mut().into_iter().enumerate() {
        if let Some(b) = &mut *l.lora_b {
            *b = mlx_rs::random::normal::<f32>(b.shape(), None, None, &mlx_rs::random::key(i as u64).unwrap()).unwrap().multiply(Array::from_f32(0.05)).unwrap();
        }
    }
    let inputs = Array::from_slice(&(0..24).map(|i| (i * 13 + 1) % 500).collect::<Vec<i32>>(), &[2, 12]);
    let targets = Array::from_slice(&(0..24).map(|i| (i * 7 + 3) % 500).collect::<Vec<i32>>(), &[2, 12]);
    let grads = |m: &mut model::CausalLm| {
        let mut vg = mlx_rs::nn::value_and_grad(|m: &mut model::CausalLm, _: ()| -> Result<Vec<Array>, mlx_rs::error::Exception> {
            Ok(vec![train::token_logps(m, &inputs, &targets, None)?.sum(None)?])
        });
        let (v, g) = vg(m, ()).unwrap();
        (v[0].item_exact::<f32>(), g)
    };
    let (v_plain, g_plain) = grads(&mut m);
    m.model.checkpoint_layers = usize::MAX;
    let (v_ckpt, g_ckpt) = grads(&mut m);
    assert_eq!(g_plain.len(), 14, "the last layer's 7 adapters, A and B");
    assert!((v_plain - v_ckpt).abs() < 1e-4);
    for (k, g) in &g_plain {
        let d = g.subtract(&g_ckpt[k]).unwrap().abs().unwrap().max(None).unwrap().item_exact::<f32>();
        assert!(d < 1e-5, "{k}: {d}");
    }
}

#[test]
fn a_bfloat16_model_trains_compiled_with_float32_adapters() {
    // An optimizer update must not change an adapter's dtype (a compiled step's state layout is fixed), and
    // adapters stay float32 on a bfloat16 model, as in mlx-lm.
    let (path, dir) = config("bf16", "");
    let (cfg, registry) = load(&path, &["model.dtype=\"bfloat16\"", "train.steps=3", "train.eval_every=3", "train.save_every=3"]);
    let outcome = train::run(&cfg, &registry, None).unwrap();
    assert_eq!(outcome.steps, 3);
    assert!(losses(&dir.join("run")).iter().all(|l| l.is_finite()));
    let saved = Array::load_safetensors(dir.join("run/adapters.safetensors")).unwrap();
    assert!(!saved.is_empty() && saved.values().all(|a| a.dtype() == Dtype::Float32));
}

#[test]
fn full_fine_tuning_keeps_bfloat16_weights_bfloat16_in_the_compiled_step() {
    // The update is computed in float32 (float32 gradients and moments) and each weight rounded back to its
    // dtype: the compiled apply step's state layout never changes, and the saved model stays bfloat16.
    let (path, dir) = config("bf16-full", "mode = \"full\"");
    let text = std::fs::read_to_string(&path).unwrap().replace("[lora]\nrank = 4\nscale = 10.0\ndropout = 0.1\n", "");
    std::fs::write(&path, text).unwrap();
    let (cfg, registry) = load(&path, &["model.dtype=\"bfloat16\"", "train.steps=3", "train.eval_every=3", "train.save_every=3", "optimizer.lr=1e-2"]);
    assert!(cfg.train.compile);
    let outcome = train::run(&cfg, &registry, None).unwrap();
    assert_eq!(outcome.steps, 3);
    assert!(losses(&dir.join("run")).iter().all(|l| l.is_finite()));
    let saved = Array::load_safetensors(dir.join("run/model.safetensors")).unwrap();
    let base = Array::load_safetensors(dir.join("model/model.safetensors")).unwrap();
    assert!(!saved.is_empty() && saved.values().all(|a| a.dtype() == Dtype::Bfloat16));
    let moved = saved.iter().filter(|(k, v)| base[k.as_str()].as_dtype(Dtype::Bfloat16).unwrap().as_slice::<half::bf16>() != v.as_slice::<half::bf16>()).count();
    assert!(moved * 2 > saved.len(), "{moved} of {} weights changed", saved.len());
}
