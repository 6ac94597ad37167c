//! The TensorBoard logs of the shipped GRPO and SFT configurations, read back with the `tensorboard`
//! package's own reader: every scalar of metrics.jsonl at its step with its value, GRPO's completions as
//! text, and a resumed run that appends without repeating a step. Needs a Python with `tensorboard` in
//! TENSORBOARD_PYTHON; `.ci/run` sets one up and runs these.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use host::{
    config::{Override, RunConfig},
    generate::Control,
    plugins::Registry,
    train::{self, Resume},
};
use serde_json::Value;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("host-tb-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Logged {
    scalars: BTreeMap<String, Vec<(u64, f64)>>,
    texts: BTreeMap<String, Vec<(u64, String)>>,
}

fn read_tensorboard(dir: &Path) -> Logged {
    let python = std::env::var("TENSORBOARD_PYTHON").expect("TENSORBOARD_PYTHON: a python with the tensorboard package");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/tensorboard_events.py");
    let out = Command::new(python).arg(script).arg(dir).output().expect("run python");
    assert!(out.status.success(), "tensorboard's reader failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let pairs = |x: &Value| -> Vec<(u64, Value)> { x.as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap(), p[1].clone())).collect() };
    Logged {
        scalars: v["scalars"].as_object().unwrap().iter().map(|(k, x)| (k.clone(), pairs(x).into_iter().map(|(s, v)| (s, v.as_f64().unwrap())).collect())).collect(),
        texts: v["texts"].as_object().unwrap().iter().map(|(k, x)| (k.clone(), pairs(x).into_iter().map(|(s, v)| (s, v.as_str().unwrap().to_owned())).collect())).collect(),
    }
}

/// What metrics.jsonl says every scalar series should be: (step, value) per tag, in file order.
fn expected(run: &Path) -> BTreeMap<String, Vec<(u64, f64)>> {
    let mut series: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for line in std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        let step = record["step"].as_u64().unwrap();
        for (k, v) in record.as_object().unwrap() {
            let value = match v {
                Value::Bool(b) => f64::from(u8::from(*b)),
                other => match other.as_f64() {
                    Some(x) => x,
                    None => continue,
                },
            };
            if k != "step" {
                series.entry(k.clone()).or_default().push((step, value));
            }
        }
    }
    series
}

/// Every scalar of metrics.jsonl is in TensorBoard at its step with its value (TensorBoard stores float32:
/// the value rounded to f32, exactly), and TensorBoard has nothing else.
fn assert_same_scalars(run: &Path) -> Logged {
    let logged = read_tensorboard(&run.join("tensorboard"));
    let want = expected(run);
    assert_eq!(logged.scalars.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "tags");
    for (tag, points) in &want {
        let got = &logged.scalars[tag];
        assert_eq!(got.len(), points.len(), "{tag}: {got:?} vs {points:?}");
        for ((gs, gv), (ws, wv)) in got.iter().zip(points) {
            assert_eq!(gs, ws, "{tag}");
            assert!(*gv == f64::from(*wv as f32) || (gv.is_nan() && wv.is_nan()), "{tag} at step {ws}: {gv} vs {wv}");
        }
    }
    logged
}

fn load(config: &str, out: &Path, extra: &[&str]) -> RunConfig {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let overrides: Vec<Override> = std::iter::once(format!("output.dir={:?}", out.display().to_string()))
        .chain(extra.iter().map(|s| (*s).to_owned()))
        .map(|o| o.parse().unwrap())
        .collect();
    RunConfig::load_in(&root.join(config), &overrides, &mut Registry::builtin().unwrap(), &root).unwrap()
}

struct StopAt(u64);
impl train::StepCallback for StopAt {
    fn after_step(&mut self, step: u64, _loss: f64) -> Control {
        if step == self.0 { Control::Stop } else { Control::Continue }
    }
}

#[test]
#[ignore = "needs TENSORBOARD_PYTHON (run by .ci/run)"]
fn the_grpo_config_logs_every_scalar_and_its_completions_and_a_resume_repeats_no_step() {
    let out = temp("grpo");
    let registry = Registry::builtin().unwrap();
    let extra = ["train.steps=12", "train.save_every=4", "output.log_completions_every=5"];
    let cfg = load("configs/grpo.toml", &out, &extra);
    // Stop after step 6: the checkpoint is at step 4 (save_every) and 6 (stopping); lose step 5 and 6 as a
    // crash would, by resuming from the step-4 checkpoint.
    let first = train::run_with(&cfg, &registry, None, &mut StopAt(6)).unwrap();
    assert_eq!(first.steps, 6);
    let logged = assert_same_scalars(&out);
    assert_eq!(logged.scalars["reward"].iter().map(|p| p.0).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
    let resumed = train::run(&cfg, &registry, Some(&Resume::From(out.join("checkpoints/step-0000004")))).unwrap();
    assert_eq!(resumed.steps, 12);
    let logged = assert_same_scalars(&out);
    assert_eq!(logged.scalars["reward"].iter().map(|p| p.0).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
    for tag in ["loss", "reward", "reward_std", "rewards/exact_answer/mean", "completions/mean_length", "clip_ratio/region_mean", "entropy", "learning_rate", "num_tokens"] {
        assert!(logged.scalars.contains_key(tag), "{tag} missing: {:?}", logged.scalars.keys());
    }
    assert_completion_tables(&out, &logged);
    // With rollouts reused for two steps, step 10 trains on step 9's completions: it still gets its table.
    let reused = temp("grpo-reused");
    let cfg = load("configs/grpo.toml", &reused, &["train.steps=10", "rollout.num_iterations=2", "output.log_completions_every=5"]);
    train::run(&cfg, &registry, None).unwrap();
    assert_completion_tables(&reused, &assert_same_scalars(&reused));
}

/// Completions every 5 steps: 5 and 10, each a markdown table with one row per completion the step trained
/// on (sampled at that step, or at the last step that sampled, when rollouts are reused).
fn assert_completion_tables(out: &Path, logged: &Logged) {
    let texts = &logged.texts["completions"];
    assert_eq!(texts.iter().map(|t| t.0).collect::<Vec<_>>(), vec![5, 10]);
    let completions: Vec<Value> = std::fs::read_to_string(out.join("completions.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (step, table) in texts {
        let sampled = completions.iter().filter_map(|c| c["step"].as_u64()).filter(|s| s <= step).max().unwrap();
        let rows: Vec<&Value> = completions.iter().filter(|c| c["step"].as_u64() == Some(sampled)).collect();
        assert!(!rows.is_empty());
        assert_eq!(table.lines().count(), 2 + rows.len(), "{table}");
        assert!(table.starts_with("| prompt | completion | exact_answer | regex_format | reward | advantage |"), "{table}");
        for (line, row) in table.lines().skip(2).zip(&rows) {
            let completion = row["completion"].as_str().unwrap().replace('|', "\\|").replace('\n', "<br>");
            assert!(line.contains(&completion), "{line} lacks {completion}");
            assert!(line.ends_with(&format!("| {:.3} | {:.3} |", row["reward"].as_f64().unwrap(), row["advantage"].as_f64().unwrap())), "{line}");
        }
    }
}

#[test]
#[ignore = "needs TENSORBOARD_PYTHON (run by .ci/run)"]
fn the_sft_config_logs_every_scalar_including_evaluations() {
    let out = temp("sft");
    let cfg = load("configs/sft.toml", &out, &["train.steps=20", "train.eval_every=10", "train.save_every=10"]);
    let outcome = train::run(&cfg, &Registry::builtin().unwrap(), None).unwrap();
    assert_eq!(outcome.steps, 20);
    let logged = assert_same_scalars(&out);
    assert_eq!(logged.scalars["eval_loss"].iter().map(|p| p.0).collect::<Vec<_>>(), vec![10, 20]);
    assert_eq!(logged.scalars["loss"].len(), 20);
    assert!(logged.texts.is_empty());
    // report_to = [] writes no TensorBoard log at all.
    let quiet = temp("sft-quiet");
    let cfg = load("configs/sft.toml", &quiet, &["train.steps=11", "output.report_to=[]"]);
    train::run(&cfg, &Registry::builtin().unwrap(), None).unwrap();
    assert!(!quiet.join("tensorboard").exists());
}
