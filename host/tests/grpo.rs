//! GRPO end to end: a prompt's shared KV cache samples exactly what per-sample caches sample, the first pass
//! over fresh rollouts has ratio 1 and no clipping while reused rollouts do not, and on the bundled demo
//! model the shipped configuration raises the mean reward.

mod common;
use common::adapters;

#[path = "../../tests/support/cdylib.rs"]
mod support;

use std::path::{Path, PathBuf};

use host::{
    cache,
    config::{Override, RunConfig},
    fixture::{self, Family, Preset},
    generate::{generate, generate_groups, Control, GenerateOptions, Sampler, SamplerConfig},
    model::{self, LoadOptions},
    plugins::Registry,
    train,
};
use mlx_rs::Dtype;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("host-grpo-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Where [`temp`] put `name`, without clearing it.
fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("host-grpo-{}-{name}", std::process::id()))
}

fn records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn get(r: &serde_json::Value, key: &str) -> f64 {
    r.get(key).and_then(serde_json::Value::as_f64).unwrap_or_else(|| panic!("no {key} in {r}"))
}

#[test]
fn a_shared_prompt_cache_samples_what_per_sample_caches_sample() {
    let dir = temp("shared");
    fixture::write(&dir.join("model"), Family::Qwen2, Preset::Tiny, 3).unwrap();
    let m = model::load(&dir.join("model"), &LoadOptions { dtype: Some(Dtype::Float32), quantize: None }).unwrap().model;
    let registry = Registry::builtin().unwrap();
    let prompts: Vec<Vec<u32>> = vec![vec![5, 17, 40, 33, 9], vec![12, 7, 301], vec![44, 45, 46, 47, 48, 49, 50]];
    let group = 4;
    let sampler = SamplerConfig { temperature: 1.0, top_p: 0.95, top_k: 50, ..Default::default() };
    let options = GenerateOptions { max_tokens: 10, ..Default::default() };
    for kind in ["standard", "rotating", "quantized"] {
        let table: sdk::toml::Table = match kind {
            "rotating" => "max_size = 12".parse().unwrap(),
            "quantized" => "group_size = 32".parse().unwrap(),
            _ => sdk::toml::Table::new(),
        };
        let policy = registry.kv_cache_policy(kind, &table).unwrap();
        let mut shared_caches = cache::for_layers(&*policy, &m.attention_windows()).unwrap();
        let (shared, _) =
            generate_groups(&m, &prompts, group, &mut shared_caches, &mut Sampler::new(sampler.clone(), 11).unwrap(), &options, &mut |_: usize, _: u32| Control::Continue)
                .unwrap();
        // The same rows with every copy of a prompt prefilled in its own cache row.
        let repeated: Vec<Vec<u32>> = prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), group)).collect();
        let mut own_caches = cache::for_layers(&*policy, &m.attention_windows()).unwrap();
        let (own, _) = generate(&m, &repeated, &mut own_caches, &mut Sampler::new(sampler.clone(), 11).unwrap(), &options, &mut |_: usize, _: u32| Control::Continue).unwrap();
        assert_eq!(shared.len(), prompts.len() * group);
        // The two layouts run the prompts through matmuls of 3 and 12 rows, which BLAS blocks differently:
        // with a float32 cache that moves a log-prob (|x| ≈ 6, ulp 4.8e-7) by an ulp or two (measured 9.5e-7),
        // so 2e-5 leaves room for other BLAS builds and thread counts. An 8-bit quantized cache turns such a
        // difference into a whole quantization step (group range / 255) wherever a key or value lies next to
        // a rounding boundary (measured 2.1e-4), so it gets 2e-3. A shared row that masks one position wrong
        // (an off-by-one in the repeated rows' padding, tried) changes the sampled tokens of every row and
        // moves the first log-probs by 0.08-0.84 with the quantized cache: both checks catch it.
        let tolerance = if kind == "quantized" { 2e-3 } else { 2e-5 };
        for (i, (a, b)) in shared.iter().zip(&own).enumerate() {
            assert_eq!(a.tokens, b.tokens, "{kind}: row {i}");
            for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
                assert!((x - y).abs() < tolerance, "{kind}: row {i}: {:?} vs {:?}", a.logprobs, b.logprobs);
            }
        }
        // Samples within a group differ: the copies draw independently.
        assert!(shared[..group].iter().any(|c| c.tokens != shared[0].tokens), "{kind}");
    }
}

/// A GRPO configuration on a tiny fixture, prompts asking for sums; `rollout` goes into [rollout].
fn fixture_config(name: &str, rollout: &str, steps: u64) -> PathBuf {
    fixture_config_with(name, rollout, steps, "[[reward]]\nkind = \"length_penalty\"")
}

fn fixture_config_with(name: &str, rollout: &str, steps: u64, rewards: &str) -> PathBuf {
    let dir = temp(name);
    fixture::write(&dir.join("model"), Family::Llama, Preset::Tiny, 2).unwrap();
    let rows: String = (0..12).map(|i| format!("{{\"prompt\": \"What is {i} + 1?\", \"answer\": \"{}\"}}\n", i + 1)).collect();
    std::fs::write(dir.join("prompts.jsonl"), rows).unwrap();
    let text = format!(
        r#"
[model]
path = {model:?}
[lora]
rank = 4
scale = 20.0
[data]
train = {data:?}
batch_size = 2
max_seq_length = 64
pad_multiple = 8
[rollout]
num_generations = 4
max_tokens = 6
{rollout}
{rewards}
[optimizer]
kind = "adamw"
lr = 1e-2
[train]
steps = {steps}
save_every = 100
seed = 3
[loss]
kind = "grpo"
beta = 0.04
[output]
dir = {out:?}
"#,
        model = dir.join("model").display().to_string(),
        data = dir.join("prompts.jsonl").display().to_string(),
        out = dir.join("run").display().to_string(),
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn fixture_run(name: &str, rollout: &str, steps: u64) -> (PathBuf, Vec<serde_json::Value>) {
    fixture_run_with(name, rollout, steps, &[])
}

fn fixture_run_with(name: &str, rollout: &str, steps: u64, overrides: &[&str]) -> (PathBuf, Vec<serde_json::Value>) {
    let path = fixture_config(name, rollout, steps);
    let dir = path.parent().unwrap().to_owned();
    let registry = Registry::builtin().unwrap();
    let overrides: Vec<Override> = overrides.iter().map(|o| o.parse().unwrap()).collect();
    let cfg = RunConfig::load(&path, &overrides, &mut Registry::builtin().unwrap()).unwrap();
    let outcome = train::run(&cfg, &registry, None).unwrap();
    assert_eq!(outcome.steps, steps);
    (dir.join("run"), records(&dir.join("run")))
}

#[test]
fn a_reward_from_a_cdylib_scores_rollouts_next_to_a_builtin() {
    let library = support::cdylib("example_plugins");
    let rewards = format!(
        "[plugins]\npaths = [{:?}]\n[[reward]]\nkind = \"ends_with\"\nsuffix = \".\"\nweight = 2.0\n[[reward]]\nkind = \"length_penalty\"\nper_token = 0.01",
        library.display().to_string()
    );
    let path = fixture_config_with("cdylib", "", 2, &rewards);
    let mut registry = Registry::builtin().unwrap();
    let cfg = RunConfig::load(&path, &[] as &[Override], &mut registry).unwrap();
    let out = cfg.output_dir();
    train::run(&cfg, &registry, None).unwrap();
    // Every completion's reward is 2 × ends_with + length_penalty, the functions' own scores logged beside it.
    let lines = std::fs::read_to_string(out.join("completions.jsonl")).unwrap();
    for line in lines.lines() {
        let c: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = c["completion"].as_str().unwrap().trim();
        let ends = c["rewards"]["ends_with"].as_f64();
        assert_eq!(ends, if text.is_empty() { None } else { Some(if text.ends_with('.') { 1.0 } else { 0.0 }) }, "{c}");
        let length = c["rewards"]["length_penalty"].as_f64().unwrap();
        assert!((length + 0.01 * c["tokens"].as_f64().unwrap()).abs() < 1e-9, "{c}");
        assert!((get(&c, "reward") - (2.0 * ends.unwrap_or(0.0) + length)).abs() < 1e-9, "{c}");
    }
    let log = records(&out);
    assert!(log[0].get("rewards/ends_with/mean").is_some() && log[0].get("rewards/length_penalty/mean").is_some(), "{}", log[0]);
}

#[test]
fn fresh_rollouts_have_ratio_one_and_reused_ones_are_clipped_against_the_sampler() {
    let (_, log) = fixture_run("iterations", "num_iterations = 1", 3);
    for r in &log {
        assert_eq!(r["fresh_rollouts"], true, "{r}");
        assert!((get(r, "ratio") - 1.0).abs() < 1e-6, "{r}");
        assert_eq!(get(r, "clip_ratio/region_mean"), 0.0, "{r}");
        assert!(get(r, "kl") >= 0.0 && get(r, "entropy") > 0.0, "{r}");
    }
    // The reference is the base model: KL is exactly 0 before the first update (adapters start at B = 0).
    assert!(get(&log[0], "kl").abs() < 1e-7, "{}", log[0]);

    let (out, log) = fixture_run("reuse", "num_iterations = 2", 4);
    let fresh: Vec<bool> = log.iter().map(|r| r["fresh_rollouts"].as_bool().unwrap()).collect();
    assert_eq!(fresh, vec![true, false, true, false]);
    for r in &log {
        let ratio = get(r, "ratio");
        if r["fresh_rollouts"] == true {
            assert!((ratio - 1.0).abs() < 1e-6, "{r}");
            assert_eq!(get(r, "clip_ratio/region_mean"), 0.0, "{r}");
        } else {
            // One update at lr 1e-2 later the policy has moved away from the one that sampled.
            assert!((ratio - 1.0).abs() > 1e-4, "{r}");
        }
        // The same rollouts score the same on both passes.
        assert!(get(r, "reward") <= 0.0 && get(r, "completions/mean_length") > 0.0, "{r}");
    }
    assert_eq!(get(&log[0], "reward"), get(&log[1], "reward"));

    // With a learning rate too small to move the policy, the stored sampling-policy log-probs equal the
    // policy's own on the second pass too: ratio 1 there as well.
    let (_, still) = fixture_run_with("reuse-still", "num_iterations = 2", 2, &["optimizer.lr=1e-12"]);
    assert_eq!(still[1]["fresh_rollouts"], false);
    assert!((get(&still[1], "ratio") - 1.0).abs() < 1e-5, "{}", still[1]);
    assert_eq!(get(&still[1], "clip_ratio/region_mean"), 0.0, "{}", still[1]);
    let completions = std::fs::read_to_string(out.join("completions.jsonl")).unwrap();
    // Two fresh rollout batches of 2 prompts × 4 completions.
    assert_eq!(completions.lines().count(), 16);
    assert!(out.join("reward.png").is_file() && out.join("adapters.safetensors").is_file());
}

#[test]
fn the_shipped_grpo_config_raises_the_mean_reward_on_the_demo_model() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = temp("demo");
    let steps = 60;
    let overrides: Vec<Override> =
        [format!("output.dir={:?}", out.display().to_string()), format!("train.steps={steps}")].iter().map(|o| o.parse().unwrap()).collect();
    let mut registry = Registry::builtin().unwrap();
    let cfg = RunConfig::load_in(&root.join("configs/grpo.toml"), &overrides, &mut registry, &root).unwrap();
    let outcome = train::run(&cfg, &registry, None).unwrap();
    assert_eq!(outcome.steps, steps);
    let (log, evals): (Vec<serde_json::Value>, Vec<serde_json::Value>) = records(&out).into_iter().partition(|r| r.get("reward").is_some());
    // [eval] every 25 steps and at the end.
    assert_eq!(evals.iter().map(|r| get(r, "step")).collect::<Vec<f64>>(), vec![25.0, 50.0, 60.0]);
    let mean = |rows: &[serde_json::Value]| rows.iter().map(|r| get(r, "rewards/exact_answer/mean")).sum::<f64>() / rows.len() as f64;
    let (first, last) = (mean(&log[..15]), mean(&log[log.len() - 15..]));
    assert!(last > first + 0.2, "exact-answer reward: first 15 steps {first:.3}, last 15 {last:.3}");
    for png in ["reward.png", "completions.png", "policy.png", "loss.png"] {
        assert!(out.join(png).is_file(), "{png}");
    }
    assert!(out.join("adapters.safetensors").is_file());
}

#[test]
fn an_interrupted_grpo_run_resumes_to_the_same_adapters_and_samples() {
    let path = fixture_config("resume", "num_iterations = 1", 4);
    let dir = path.parent().unwrap().to_owned();
    let load = |out: &str| {
        let o: Override = format!("output.dir={:?}", dir.join(out).display().to_string()).parse().unwrap();
        RunConfig::load(&path, &[o], &mut Registry::builtin().unwrap()).unwrap()
    };
    let registry = Registry::builtin().unwrap();
    train::run(&load("straight"), &registry, None).unwrap();

    struct StopAt(u64);
    impl train::StepCallback for StopAt {
        fn after_step(&mut self, step: u64, _loss: f64) -> Control {
            if step == self.0 { Control::Stop } else { Control::Continue }
        }
    }
    let cfg = load("split");
    let first = train::run_with(&cfg, &registry, None, &mut StopAt(2)).unwrap();
    assert_eq!((first.steps, first.stopped), (2, train::StopReason::Interrupted));
    // A step that ran after the checkpoint and was lost (a crash) leaves lines the resumed run replaces.
    let log = dir.join("split/completions.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("{\"step\": 3, \"completion\": \"lost\"}\n");
    std::fs::write(&log, text).unwrap();
    let resumed = train::run(&cfg, &registry, Some(&train::Resume::Latest)).unwrap();
    assert_eq!(resumed.steps, 4);
    assert_eq!(adapters(&dir.join("straight")), adapters(&dir.join("split")));
    // Sampling seeds follow the step, so the resumed run drew the same completions.
    let completions = |out: &str| std::fs::read_to_string(dir.join(out).join("completions.jsonl")).unwrap();
    assert_eq!(completions("straight"), completions("split"));
    let rewards = |out: &str| records(&dir.join(out)).iter().map(|r| get(r, "reward")).collect::<Vec<f64>>();
    assert_eq!(rewards("straight"), rewards("split"));
}

/// A reward written in Python (`kind = "command"` with the repository's helper) scores every completion with
/// the row's columns; when its process dies mid-run, the run stops with an error naming the reward and a
/// checkpoint of the last finished step, and resuming from it with the reward fixed gives the run that never
/// failed.
#[test]
fn a_python_reward_scores_rollouts_and_a_crash_stops_the_run_with_a_checkpoint_to_resume_from() {
    let dir = temp("python-reward");
    // len(completion) % 3 plus a tenth of the row's answer: checks the text and the column both arrive.
    let scorer = |crash: &str| {
        format!(
            "import os\nfrom host_plugin import serve_reward\ncalls = 0\ndef score(prompts, completions, answer, **columns):\n    global calls\n    calls += 1\n{crash}    return [len(c) % 3 + int(a) / 10 for c, a in zip(completions, answer)]\nserve_reward(score)\n"
        )
    };
    std::fs::write(dir.join("good.py"), scorer("")).unwrap();
    std::fs::write(dir.join("crashes.py"), scorer("    if calls == 2:\n        os._exit(7)\n")).unwrap();
    let rewards = |script: &str| format!("[[reward]]\nkind = \"command\"\nname = \"py\"\ncommand = [\"python3\", {:?}]", dir.join(script).display().to_string());
    let registry = Registry::builtin().unwrap();
    let config = |script: &str, out: &str| {
        let path = fixture_config_with(&format!("python-{out}"), "", 3, &rewards(script));
        let o: Override = format!("output.dir={:?}", dir.join(out).display().to_string()).parse().unwrap();
        RunConfig::load(&path, &[o], &mut Registry::builtin().unwrap()).unwrap()
    };

    train::run(&config("good.py", "straight"), &registry, None).unwrap();
    let lines = std::fs::read_to_string(dir.join("straight/completions.jsonl")).unwrap();
    for line in lines.lines() {
        let c: serde_json::Value = serde_json::from_str(line).unwrap();
        // Line L of the prompts holds "What is L-1 + 1?" with answer L.
        let answer = c["prompt_line"].as_f64().unwrap();
        let want = (c["completion"].as_str().unwrap().chars().count() % 3) as f64 + answer / 10.0;
        assert!((c["rewards"]["py"].as_f64().unwrap() - want).abs() < 1e-12, "{c}");
    }
    assert!(records(&dir.join("straight"))[0].get("rewards/py/mean").is_some());

    // The second batch's call kills the child: step 2 never happens, step 1 is saved.
    let crashing = config("crashes.py", "split");
    let err = train::run(&crashing, &registry, None).unwrap_err().to_string();
    assert!(err.starts_with("step 2: reward `py`:") && err.contains("exit status: 7") && err.contains("checkpoint"), "{err}");
    assert_eq!(records(&dir.join("split")).len(), 1, "one step finished");
    let fixed = config("good.py", "split");
    assert_eq!(train::run(&fixed, &registry, Some(&train::Resume::Latest)).unwrap().steps, 3);
    assert_eq!(adapters(&dir.join("straight")), adapters(&dir.join("split")));
}

/// The demo config with `overrides`, run for its steps into a fresh directory; the step records.
fn demo_run(name: &str, overrides: &[&str]) -> Vec<serde_json::Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = temp(name);
    let mut all: Vec<String> = vec![format!("output.dir={:?}", out.display().to_string()), "schedule.warmup_steps=1".into()];
    all.extend(overrides.iter().map(|o| (*o).to_owned()));
    let overrides: Vec<Override> = all.iter().map(|o| o.parse().unwrap()).collect();
    let mut registry = Registry::builtin().unwrap();
    let cfg = RunConfig::load_in(&root.join("configs/grpo.toml"), &overrides, &mut registry, &root).unwrap();
    train::run(&cfg, &registry, None).unwrap();
    records(&out)
}

/// The step records of a log (grpo.toml's [eval] adds evaluation records beside them).
fn steps(log: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    log.into_iter().filter(|r| r.get("reward").is_some()).collect()
}

/// DAPO's dynamic sampling on the demo model: micro-batches are topped up with prompts whose completions
/// disagree, so a step that needed no filling trains on no group without spread; when the rounds run out
/// (a reward that never varies), dropped groups fill the batch and it is logged.
#[test]
fn dynamic_sampling_trains_on_groups_with_spread_and_logs_its_rounds() {
    let log = steps(demo_run("dynamic", &["train.steps=4", "rollout.dynamic_sampling=true"]));
    for r in &log {
        let (rounds, dropped, filled) = (get(r, "dynamic_sampling/rounds"), get(r, "dynamic_sampling/dropped_groups"), get(r, "dynamic_sampling/filled_groups"));
        assert!(rounds >= 1.0 && rounds <= 4.0, "{r}");
        if filled == 0.0 {
            assert_eq!(get(r, "frac_reward_zero_std"), 0.0, "{r}");
        }
        assert!(dropped == 0.0 || rounds > 1.0 || filled > 0.0, "a dropped group is replaced or filled: {r}");
    }
    // The untrained demo model often agrees with itself (a quarter of its groups): some step had to top up.
    assert!(log.iter().any(|r| get(r, "dynamic_sampling/dropped_groups") > 0.0), "{log:?}");

    // A reward that is the same for every completion: every round drops every group; the cap (2 rounds) ends
    // the search and the dropped groups fill the batch.
    let flat = steps(demo_run(
        "dynamic-flat",
        &["train.steps=2", "rollout.dynamic_sampling=true", "rollout.max_sampling_rounds=2", "reward=[{kind = \"length_penalty\", per_token = 0.0}]"],
    ));
    for r in &flat {
        // Dropped: the groups of both rounds beyond the 8 that fill (the epoch's last batch has 6 prompts).
        assert_eq!((get(r, "dynamic_sampling/rounds"), get(r, "dynamic_sampling/filled_groups")), (2.0, 8.0), "{r}");
        assert!(get(r, "dynamic_sampling/dropped_groups") >= 6.0, "{r}");
        assert_eq!(get(r, "frac_reward_zero_std"), 1.0);
    }
}

/// With `mask_truncated_completions`, a completion cut off at `max_tokens` trains on nothing: when all are cut
/// (3 tokens cannot hold the demo's answer and its EOS), the loss is exactly 0; at the shipped 8 tokens the
/// masked tokens are exactly those of the completions without EOS (each `max_tokens` long).
#[test]
fn truncated_completions_can_be_masked_out_of_the_loss() {
    let masked = steps(demo_run("masked", &["train.steps=2", "rollout.max_tokens=3", "rollout.mask_truncated_completions=true"]));
    for r in &masked {
        assert_eq!(get(r, "completions/clipped_ratio"), 1.0, "{r}");
        assert_eq!(get(r, "completions/masked_tokens"), get(r, "completion_tokens"), "{r}");
        assert_eq!((get(r, "loss"), get(r, "grad_norm")), (0.0, 0.0), "{r}");
    }
    let some = steps(demo_run("some-masked", &["train.steps=3", "rollout.mask_truncated_completions=true"]));
    for r in &some {
        let truncated = (get(r, "completions/clipped_ratio") * 64.0).round();
        assert_eq!(get(r, "completions/masked_tokens"), 8.0 * truncated, "{r}");
    }
    assert!(steps(demo_run("not-masked", &["train.steps=2"]))[0].get("completions/masked_tokens").is_none());
}

/// `[eval]`: greedy completions of held-out prompts every N steps and at the end, scored by the run's
/// rewards and logged as `eval_*`; evaluating changes nothing about training (same adapters as without).
#[test]
fn validation_rollouts_score_held_out_prompts_without_changing_training() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let valid = root.join("data/grpo/valid.jsonl").display().to_string();
    let eval = format!("eval={{prompts = {valid:?}, every = 2, max_prompts = 6, batch_size = 4}}");
    let with = demo_run("eval", &["train.steps=5", &eval]);
    let evals: Vec<&serde_json::Value> = with.iter().filter(|r| r.get("eval_reward").is_some()).collect();
    // Steps 2 and 4, and the last one.
    assert_eq!(evals.iter().map(|r| get(r, "step")).collect::<Vec<f64>>(), vec![2.0, 4.0, 5.0]);
    for r in &evals {
        assert_eq!(get(r, "eval_prompts"), 6.0, "{r}");
        // One greedy completion per prompt; each scores exact_answer (0 or 1) + regex_format (0 or 0.1).
        let (correct, format) = (get(r, "eval_rewards/exact_answer/mean"), get(r, "eval_rewards/regex_format/mean"));
        assert!((get(r, "eval_reward") - (correct + format)).abs() < 1e-9, "{r}");
        assert!((correct * 6.0 - (correct * 6.0).round()).abs() < 1e-9, "{r}");
    }
    let without = demo_run("no-eval", &["train.steps=5"]);
    let losses = |log: &[serde_json::Value]| log.iter().filter_map(|r| r.get("loss").and_then(serde_json::Value::as_f64)).collect::<Vec<f64>>();
    assert_eq!(losses(&with), losses(&without));
    assert_eq!(adapters(&temp_path("eval")), adapters(&temp_path("no-eval")));

    // A prompts file that is not there is named before anything loads.
    let err = RunConfig::load(&root.join("configs/grpo.toml"), &["eval={prompts = \"/no/such.jsonl\"}".parse().unwrap()], &mut Registry::builtin().unwrap()).unwrap_err();
    assert!(err.to_string().contains("eval.prompts") && err.to_string().contains("is not a file"), "{err}");
}

/// A fixture turned into a reward model: its config says `Qwen2ForSequenceClassification` with one label,
/// and a `score.weight` head `[1, hidden]` joins its tensors.
fn reward_model_fixture(dir: &Path) -> (PathBuf, Vec<f32>) {
    let base = dir.join("base");
    fixture::write(&base, Family::Qwen2, Preset::Tiny, 9).unwrap();
    let rm = dir.join("rm");
    std::fs::create_dir_all(&rm).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        if base.join(f).is_file() {
            std::fs::copy(base.join(f), rm.join(f)).unwrap();
        }
    }
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).unwrap()).unwrap();
    config["architectures"] = serde_json::json!(["Qwen2ForSequenceClassification"]);
    config["num_labels"] = serde_json::json!(1);
    std::fs::write(rm.join("config.json"), config.to_string()).unwrap();
    let mut tensors = mlx_rs::Array::load_safetensors(base.join("model.safetensors")).unwrap();
    let hidden = config["hidden_size"].as_i64().unwrap() as usize;
    let w: Vec<f32> = (0..hidden).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1).collect();
    tensors.insert("score.weight".into(), mlx_rs::Array::from_slice(&w, &[1, hidden as i32]));
    host::tensor_file::write(&rm.join("model.safetensors"), tensors.iter().map(|(k, v)| (k.as_str(), v)), Some("pt")).unwrap();
    (base, w)
}

/// `kind = "reward_model"`: each prompt + completion's score is the body's last hidden state times the
/// `score` head, as transformers computes it; batched rows with padding give what each row alone gives.
#[test]
fn a_sequence_classification_checkpoint_scores_completions_as_a_reward() {
    let dir = temp("reward-model");
    let (base, w) = reward_model_fixture(&dir);
    let registry = Registry::builtin().unwrap();
    let table: sdk::toml::Table = format!("model = {:?}\nbatch_size = 2", dir.join("rm").display().to_string()).parse().unwrap();
    let mut reward = registry.reward("reward_model", &table).unwrap();
    // Row 0: a plain prompt column; row 1: chat messages (through the reward model's template); row 2: no
    // prompt column (the prompt as the policy saw it).
    let prompts = ["<rendered 0>", "<rendered 1>", "Count to three:"];
    let completions = [" It is 4.", "Hello there, how are you", " 1 2 3"];
    let ids: [&[u32]; 3] = [&[], &[], &[]];
    let rows = [r#"{"prompt": "What is 2 + 2?"}"#, r#"{"prompt": [{"role": "user", "content": "Hi"}]}"#, "{}"];
    let scores = reward.score(&sdk::RewardBatch { prompts: &prompts, completions: &completions, completion_ids: &ids, rows: &rows }).unwrap();

    // Each text alone through the plain causal LM (same body weights): last hidden state · w.
    let m = model::load(&base, &LoadOptions { dtype: Some(Dtype::Float32), quantize: None }).unwrap().model;
    let tokenizer = host::text::TextTokenizer::load(&base).unwrap();
    let texts = [
        tokenizer.encode("What is 2 + 2? It is 4.", false).unwrap(),
        tokenizer.encode_chat(&[serde_json::json!({"role": "user", "content": "Hi"}), serde_json::json!({"role": "assistant", "content": completions[1]})], None, false).unwrap(),
        tokenizer.encode("Count to three: 1 2 3", false).unwrap(),
    ];
    for (i, text) in texts.iter().enumerate() {
        let tokens: Vec<i32> = text.iter().map(|&t| t as i32).collect();
        let hidden = m.model.forward(&mlx_rs::Array::from_slice(&tokens, &[1, tokens.len() as i32]), None).unwrap();
        let h = hidden.reshape(&[-1]).unwrap().to_vec_exact::<f32>().unwrap();
        let last = &h[h.len() - w.len()..];
        let want: f64 = last.iter().zip(&w).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
        let got = scores[i].unwrap();
        // Batched (padded, in pairs) against alone: the same float32 sums in other BLAS blockings, ~1e-6.
        assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "row {i}: {got} vs {want}");
    }
    assert!(scores.iter().all(|s| s.unwrap().abs() > 1e-6), "the head is not zero: {scores:?}");

    // A causal LM is not a reward model: refused by key, before anything loads.
    let table: sdk::toml::Table = format!("model = {:?}", base.display().to_string()).parse().unwrap();
    let err = registry.reward("reward_model", &table).err().unwrap().to_string();
    assert!(err.contains("not a *ForSequenceClassification reward model"), "{err}");
    let table: sdk::toml::Table = format!("model = {:?}\nlabel = 1", dir.join("rm").display().to_string()).parse().unwrap();
    assert!(registry.reward("reward_model", &table).err().unwrap().to_string().contains("`label` 1 is out of range"));

    // And in a GRPO run, beside a built-in.
    let rewards = format!("[[reward]]\nkind = \"reward_model\"\nname = \"rm\"\nmodel = {:?}\n[[reward]]\nkind = \"length_penalty\"", dir.join("rm").display().to_string());
    let path = fixture_config_with("reward-model-run", "", 2, &rewards);
    let cfg = RunConfig::load(&path, &[] as &[Override], &mut Registry::builtin().unwrap()).unwrap();
    train::run(&cfg, &registry, None).unwrap();
    let log = records(&cfg.output_dir());
    assert!(log.iter().all(|r| r["rewards/rm/mean"].as_f64().is_some_and(f64::is_finite)), "{log:?}");
}
