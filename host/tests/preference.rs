//! Preference training end to end on fixture models: the reference with adapters off equals a separate copy
//! of the base model, precomputed reference log-probs equal live ones, a short DPO run raises preference
//! accuracy and the reward margin on its training pairs, and a third-party cdylib loss trains exactly like the
//! built-in it mirrors.

#[path = "../../tests/support/cdylib.rs"]
mod support;

use std::path::{Path, PathBuf};

use host::{
    config::{Override, RunConfig},
    data::{assemble, parse_row, tokenize, DataOptions, Dataset, Item, Masking, RowShape},
    fixture::{self, Family, Preset},
    lora::{self, LoraSettings},
    model::{self, CausalLm, LoadOptions},
    plugins::Registry,
    text::TextTokenizer,
    train::{
        self,
        reference::{partner, ReferenceSource, ReferenceTable},
    },
};
use mlx_rs::{Array, Dtype};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("host-pref-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn float32(dir: &Path) -> CausalLm {
    model::load(dir, &LoadOptions { dtype: Some(Dtype::Float32), quantize: None }).unwrap().model
}

/// The policy: the fixture with adapters whose B is nonzero, so the adapted model differs from the base.
fn adapted(dir: &Path) -> CausalLm {
    let mut m = float32(dir);
    let mapper = Registry::builtin().unwrap().lora_target_mapper("all_linear", &sdk::toml::Table::new()).unwrap();
    lora::apply(&mut m, &*mapper, &LoraSettings { rank: 4, scale: 4.0, dropout: 0.0, dora: false, last_n_layers: None }, 0).unwrap();
    for (i, (_, l)) in m.linears_mut().into_iter().enumerate() {
        if let Some(b) = &mut *l.lora_b {
            *b = mlx_rs::random::normal::<f32>(b.shape(), None, None, &mlx_rs::random::key(i as u64 + 7).unwrap()).unwrap().multiply(Array::from_f32(0.1)).unwrap();
        }
    }
    m
}

fn values(a: &Array) -> Vec<f32> {
    a.as_dtype(Dtype::Float32).unwrap().as_slice::<f32>().to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

const PAIRS: [&str; 6] = [
    r#"{"prompt": "What is 2 + 3?", "chosen": "The answer is 5.", "rejected": "maybe 7?"}"#,
    r#"{"prompt": "What is 9 - 4?", "chosen": "The answer is 5.", "rejected": "um 3"}"#,
    r#"{"prompt": "What is 3 * 3?", "chosen": "The answer is 9.", "rejected": "idk, 8?"}"#,
    r#"{"prompt": "What is 10 + 11?", "chosen": "The answer is 21.", "rejected": "20 i guess"}"#,
    r#"{"prompt": "What is 7 - 7?", "chosen": "The answer is 0.", "rejected": "maybe 1?"}"#,
    r#"{"prompt": "What is 4 * 5?", "chosen": "The answer is 20.", "rejected": "um 22"}"#,
];

fn write_lines(path: &Path, lines: &[&str]) {
    std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

#[test]
fn adapters_off_reference_equals_a_separate_copy_of_the_base_model() {
    let dir = temp("same");
    fixture::write(&dir.join("model"), Family::Llama, Preset::Tiny, 5).unwrap();
    let t = TextTokenizer::load(&dir.join("model")).unwrap();
    let items: Vec<Item> = PAIRS[..3].iter().map(|r| tokenize(&parse_row(r).unwrap(), &t, Masking::Prompt, 256).unwrap()).collect();
    let batch = assemble(&items.iter().collect::<Vec<_>>(), None, 8, 256, None);

    let mut policy = adapted(&dir.join("model"));
    let mut scratch = float32(&dir.join("model"));
    let off = ReferenceSource::AdaptersOff.logps(&mut policy, &batch.inputs, &batch.targets, None).unwrap();
    let copy = ReferenceSource::Model(Box::new(float32(&dir.join("model")))).logps(&mut scratch, &batch.inputs, &batch.targets, None).unwrap();
    assert!(max_diff(&values(&off), &values(&copy)) <= 1e-6, "{}", max_diff(&values(&off), &values(&copy)));
    // The adapters are back on afterwards: the policy itself differs from the reference.
    let on = train::token_logps(&policy, &batch.inputs, &batch.targets, None).unwrap();
    assert!(max_diff(&values(&on), &values(&off)) > 1e-3);
}

#[test]
fn precomputed_reference_log_probs_equal_live_ones_and_are_cached() {
    let dir = temp("precomputed");
    fixture::write(&dir.join("model"), Family::Qwen2, Preset::Tiny, 6).unwrap();
    let model_dir = dir.join("model");
    let t = TextTokenizer::load(&model_dir).unwrap();
    let rows: Vec<String> = PAIRS.iter().enumerate().map(|(i, r)| {
        let v: serde_json::Value = serde_json::from_str(r).unwrap();
        format!(r#"{{"prompt": {}, "completion": {}, "label": {}}}"#, v["prompt"], if i % 2 == 0 { &v["chosen"] } else { &v["rejected"] }, i % 2 == 0)
    }).collect();
    let path = dir.join("kto.jsonl");
    write_lines(&path, &rows.iter().map(String::as_str).collect::<Vec<_>>());
    let registry = Registry::builtin().unwrap();
    let mut cache = registry.data_cache_policy("disk", &format!("dir = {:?}", dir.join("cache").display().to_string()).parse().unwrap()).unwrap();
    let options = DataOptions { masking: Masking::Prompt, max_seq_length: 256, skip_bad_rows: false, shape: RowShape::Labeled };
    let mut data = Dataset::load(&path, &t, options, &mut *cache, &model_dir.join("tokenizer.json")).unwrap();
    let mut policy = adapted(&model_dir);
    let source = ReferenceSource::AdaptersOff;
    let table = ReferenceTable::build(&mut data, &t, &source, &mut policy, b"test", true, 4, 256, &mut *cache).unwrap();
    assert!(!table.cache_hit);

    // A batch in another order than the table was built in.
    let indices = [4usize, 1, 5];
    let items: Vec<Item> = indices.iter().map(|&i| data.item(i, &t).unwrap()).collect();
    let partners: Vec<Item> = indices.iter().map(|&i| partner(&mut data, i, &t).unwrap()).collect();
    let mut batch = assemble(&items.iter().collect::<Vec<_>>(), Some(&partners.iter().collect::<Vec<_>>()), 8, 256, None);
    let (rows, kl) = table.rows(&indices, 1).unwrap();
    batch.set_reference(&rows);
    let kl_batch = batch.kl.as_deref_mut().unwrap();
    kl_batch.set_reference(&kl.unwrap());
    let masked = |a: &Array, mask: &Array| values(&a.multiply(mask).unwrap());
    let live = source.logps(&mut policy, &batch.inputs, &batch.targets, None).unwrap();
    assert!(max_diff(&masked(batch.reference.as_ref().unwrap(), &batch.mask), &masked(&live, &batch.mask)) <= 1e-5);
    let kl_batch = batch.kl.as_deref().unwrap();
    let kl_live = source.logps(&mut policy, &kl_batch.inputs, &kl_batch.targets, None).unwrap();
    assert!(max_diff(&masked(kl_batch.reference.as_ref().unwrap(), &kl_batch.mask), &masked(&kl_live, &kl_batch.mask)) <= 1e-5);

    let again = ReferenceTable::build(&mut data, &t, &source, &mut policy, b"test", true, 4, 256, &mut *cache).unwrap();
    assert!(again.cache_hit);
    assert_eq!(again.items, table.items);
    let other = ReferenceTable::build(&mut data, &t, &source, &mut policy, b"another model", true, 4, 256, &mut *cache).unwrap();
    assert!(!other.cache_hit, "the reference's identity is part of the key");
}

/// A run over a fresh tiny fixture and `PAIRS` (also the validation set, so evaluation scores the training pairs).
fn pair_config(name: &str, loss: &str, extra: &str) -> (PathBuf, PathBuf) {
    let dir = temp(name);
    fixture::write(&dir.join("model"), Family::Qwen2, Preset::Tiny, 2).unwrap();
    let data = dir.join("pairs.jsonl");
    write_lines(&data, &PAIRS);
    let text = format!(
        r#"
[model]
path = {model:?}
[lora]
rank = 8
scale = 20.0
[data]
train = {data:?}
valid = {data:?}
batch_size = 3
pad_multiple = 8
cache = {{ kind = "none" }}
[loss]
{loss}
[optimizer]
kind = "adamw"
lr = 1e-3
weight_decay = 0.0
[train]
steps = 30
eval_every = 30
save_every = 30
seed = 1
{extra}
[output]
dir = {out:?}
"#,
        model = dir.join("model").display().to_string(),
        data = data.display().to_string(),
        out = dir.join("run").display().to_string(),
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    (path, dir)
}

fn run(path: &Path, registry: &mut Registry) -> Vec<serde_json::Value> {
    let cfg = RunConfig::load(path, &[] as &[Override], registry).unwrap();
    let outcome = train::run(&cfg, registry, None).unwrap();
    assert_eq!(outcome.steps, 30);
    std::fs::read_to_string(cfg.output_dir().join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_short_dpo_run_raises_accuracy_and_margin_on_its_pairs() {
    let (path, dir) = pair_config("dpo", "kind = \"dpo\"\nbeta = 0.1", "");
    let log = run(&path, &mut Registry::builtin().unwrap());
    // Step 1: the policy is its reference (B = 0), so every margin is 0 up to rounding and the loss is ln 2.
    let first = &log[0];
    assert!(first["rewards/margins"].as_f64().unwrap().abs() < 1e-5, "{first}");
    assert!((first["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-5);
    // After 30 steps: measured margin 0.50 and loss 0.48 (OpenBLAS 0.3.31). The tiny model's trajectory
    // drifts by a few percent between BLAS builds (rounding amplified by Adam at lr 1e-3), so the bounds sit
    // halfway between the start (margin 0, loss ln 2 = 0.69) and what training reaches: a run that does not
    // learn, or learns the wrong way, still fails them.
    let eval = log.iter().find(|r| r.get("eval_loss").is_some()).unwrap();
    assert_eq!(eval["eval_rewards/accuracies"].as_f64(), Some(1.0), "{eval}");
    assert!(eval["eval_rewards/margins"].as_f64().unwrap() > 0.25, "{eval}");
    assert!(eval["eval_loss"].as_f64().unwrap() < 0.6, "{eval}");
    assert!(dir.join("run/rewards.png").is_file());
}

#[test]
fn a_cdylib_loss_trains_exactly_like_the_builtin_it_mirrors() {
    // pair_logsigmoid (example cdylib) is SimPO with γ = 0: −log σ(β(p̄_w − p̄_l)).
    let library = support::cdylib("example_plugins");
    let plugins = format!("[plugins]\npaths = [{:?}]", library.display().to_string());
    let (theirs, _) = pair_config("cdylib", "kind = \"pair_logsigmoid\"\nbeta = 2.0", &plugins.replace("[plugins]", "\n[plugins]"));
    let (ours, _) = pair_config("builtin", "kind = \"simpo\"\nbeta = 2.0\ngamma = 0.0", "");
    let mut registry = Registry::builtin().unwrap();
    let a: Vec<f64> = run(&theirs, &mut registry).iter().filter_map(|r| r.get("loss")?.as_f64()).collect();
    let b: Vec<f64> = run(&ours, &mut registry).iter().filter_map(|r| r.get("loss")?.as_f64()).collect();
    assert_eq!((a.len(), b.len()), (30, 30));
    // The same updates: equal up to float rounding while rounding differences are still small, and both
    // train. The two losses order their float ops differently (1-ulp differences at step 1); at lr 1e-3 the
    // tiny model amplifies them step by step (2.7e-6 by step 5 with OpenBLAS 0.3.31), so 2e-5 over the
    // first 6 steps. A real difference (γ = 0.5 instead of 0, another β) moves the step-1 loss by > 0.05.
    for (step, (x, y)) in a.iter().zip(&b).enumerate().take(6) {
        assert!((x - y).abs() <= 2e-5, "step {}: {x} vs {y}", step + 1);
    }
    for losses in [&a, &b] {
        assert!(losses[29] < 0.5 * losses[0], "it trains: {} → {}", losses[0], losses[29]);
    }
}

#[test]
fn a_separate_reference_model_gives_the_adapters_off_run_and_must_share_the_tokenizer() {
    let (off, dir) = pair_config("ref-off", "kind = \"dpo\"\nbeta = 0.1", "");
    let copy = dir.join("reference-copy");
    fixture::write(&copy, Family::Qwen2, Preset::Tiny, 2).unwrap();
    let model_line = format!("\n[reference]\nmode = \"model\"\nmodel = {:?}", copy.display().to_string());
    let (separate, _) = pair_config("ref-model", "kind = \"dpo\"\nbeta = 0.1", &model_line);
    let mut registry = Registry::builtin().unwrap();
    let a: Vec<f64> = run(&off, &mut registry).iter().filter_map(|r| r.get("loss")?.as_f64()).collect();
    let b: Vec<f64> = run(&separate, &mut registry).iter().filter_map(|r| r.get("loss")?.as_f64()).collect();
    for (step, (x, y)) in a.iter().zip(&b).enumerate().take(6) {
        assert!((x - y).abs() <= 2e-6, "step {}: {x} vs {y}", step + 1);
    }

    // Another tokenizer (a fixture of another family) is refused before training.
    let other = dir.join("other-family");
    fixture::write(&other, Family::Llama, Preset::Tiny, 2).unwrap();
    let model_line = format!("\n[reference]\nmode = \"model\"\nmodel = {:?}", other.display().to_string());
    let (bad, _) = pair_config("ref-bad", "kind = \"dpo\"", &model_line);
    let cfg = RunConfig::load(&bad, &[] as &[Override], &mut registry).unwrap();
    let err = train::run(&cfg, &registry, None).unwrap_err().to_string();
    assert!(err.contains("has another tokenizer than the policy's"), "{err}");
}
