//! Multi-turn rollouts: observations appended to the KV cache between turns continue it exactly as a fresh
//! prefill of the whole conversation would, observation tokens are never trained on, and GRPO runs with an
//! environment (built in, from a cdylib, from a Python child) end to end.

use std::path::PathBuf;

use host::{
    cache,
    fixture::{self, Family, Preset},
    generate::{generate_episodes, Completion, EpisodeLimits, GenerateOptions, Next, Sampler, SamplerConfig, TurnEnd},
    model::{self, CausalLm, LoadOptions},
    plugins::Registry,
    train::rollout::sequences,
    data::PromptRow,
};
use mlx_rs::{ops::indexing::IndexOp, Array, Dtype};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("host-env-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Log-probs of `tokens[1..]` under one forward over the whole sequence (no cache).
fn prefill_logps(m: &CausalLm, tokens: &[u32]) -> Vec<f32> {
    let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let n = ids.len() as i32;
    let logits = m.forward(&Array::from_slice(&ids[..ids.len() - 1], &[1, n - 1]), None).unwrap().as_dtype(Dtype::Float32).unwrap();
    let logps = logits.subtract(logits.logsumexp_axis(-1, true).unwrap()).unwrap().index((0, .., ..));
    let targets = Array::from_slice(&ids[1..], &[n - 1, 1]);
    logps.take_along_axis(&targets, -1).unwrap().reshape(&[n - 1]).unwrap().to_vec_exact::<f32>().unwrap()
}

/// Episodes on a random fixture where every fifth token id ends a turn and each turn is answered with an
/// observation of 1-4 tokens (by episode), up to 3 turns and 40 tokens.
fn episodes(m: &CausalLm, policy: &str, prompts: &[Vec<u32>], group: usize) -> Vec<Completion> {
    let registry = Registry::builtin().unwrap();
    let table: sdk::toml::Table = if policy == "quantized" { "group_size = 32\nstart = 0".parse().unwrap() } else { sdk::toml::Table::new() };
    let policy = registry.kv_cache_policy(policy, &table).unwrap();
    let mut caches = cache::for_episodes(&*policy, &m.attention_windows()).unwrap();
    let options = GenerateOptions { max_tokens: 8, eos_ids: (0..512).step_by(5).collect(), ..Default::default() };
    let limits = EpisodeLimits { max_turns: 3, max_tokens: 40 };
    let mut sampler = Sampler::new(SamplerConfig { temperature: 1.0, ..Default::default() }, 5).unwrap();
    let mut answer = |ends: &[TurnEnd<'_>]| -> Result<Vec<Next>, mlx_rs::error::Exception> {
        Ok(ends.iter().map(|e| if e.last { Next::End } else { Next::Observe((0..1 + e.episode % 4).map(|k| 300 + k as u32).collect()) }).collect())
    };
    generate_episodes(m, prompts, group, &mut caches, &mut sampler, &options, limits, &mut answer).unwrap().0
}

#[test]
fn appended_observations_continue_the_cache_as_a_re_prefill_of_the_conversation() {
    let dir = temp("reprefill");
    // Gemma 3 has sliding-window layers (window 4 in the fixture, shorter than the episodes):
    // the episodes' windowed caches must mask as a fresh prefill does.
    for family in [Family::Qwen2, Family::Gemma3Text] {
        let path = dir.join(format!("{family:?}"));
        fixture::write(&path, family, Preset::Tiny, 3).unwrap();
        let m = model::load(&path, &LoadOptions { dtype: Some(Dtype::Float32), quantize: None }).unwrap().model;
        let prompts: Vec<Vec<u32>> = vec![vec![11, 17, 40, 33, 9], vec![12, 7, 301], vec![44, 45, 46, 47, 48, 49, 50, 51, 52]];
        for policy in ["standard", "quantized"] {
            let group = 2;
            let out = episodes(&m, policy, &prompts, group);
            assert_eq!(out.len(), 6);
            let multi = out.iter().filter(|c| !c.observations.is_empty()).count();
            assert!(multi >= 3, "{family:?} {policy}: only {multi} episodes had a second turn");
            let mut worst = 0f32;
            for (e, c) in out.iter().enumerate() {
                let prompt = &prompts[e / group];
                let full: Vec<u32> = prompt.iter().chain(&c.tokens).copied().collect();
                let reference = prefill_logps(&m, &full);
                let observed: Vec<bool> = (0..c.tokens.len()).map(|j| c.observations.iter().any(|r| r.contains(&j))).collect();
                for (j, (&lp, &obs)) in c.logprobs.iter().zip(&observed).enumerate() {
                    if obs {
                        assert_eq!(lp, 0.0, "an observation token has no log-prob");
                        assert_eq!(c.tokens[j], 300 + (j - c.observations.iter().find(|r| r.contains(&j)).unwrap().start) as u32);
                        continue;
                    }
                    worst = worst.max((lp - reference[prompt.len() - 1 + j]).abs());
                }
            }
            // The cached episode computes what one forward over the conversation computes, in other batch
            // shapes: BLAS blocking moves float32 log-probs of |x| ≈ 6 by an ulp or two (measured 4.8e-7 and
            // 9.5e-7), so 5e-5 leaves room for other BLAS builds. Rows moved without their RoPE shift (tried: a
            // shift off by one position) move them by 1.1e-3, which this catches. An 8-bit quantized cache
            // rounds every key and value (start = 0), which the fresh prefill does not: measured 1.0e-3 and
            // 1.5e-3 in every turn, the first included, so 1e-2 bounds quantization noise and catches gross
            // realign errors of the packed store only (the standard cache checks the positions exactly).
            let tolerance = if policy == "quantized" { 1e-2 } else { 5e-5 };
            assert!(worst < tolerance, "{family:?} {policy}: worst log-prob difference {worst}");
            eprintln!("{family:?} {policy}: worst {worst:e}");

            // The training rows: the mask covers generated tokens only.
            let rows: Vec<PromptRow> = prompts.iter().map(|p| PromptRow { line: 1, text: String::new(), tokens: p.clone(), row: "{}".into(), messages: vec![] }).collect();
            let refs: Vec<&PromptRow> = rows.iter().collect();
            let batch = sequences(&refs, group, &out, 1);
            let mask = batch.mask.as_dtype(Dtype::Float32).unwrap().to_vec_exact::<f32>().unwrap();
            let width = batch.mask.shape()[1] as usize;
            for (e, c) in out.iter().enumerate() {
                let p = prompts[e / group].len();
                for j in 0..c.tokens.len() {
                    // Target position p - 1 + j predicts completion token j.
                    let want = if c.observations.iter().any(|r| r.contains(&j)) { 0.0 } else { 1.0 };
                    assert_eq!(mask[e * width + p - 1 + j], want, "episode {e} token {j}");
                }
                let trained: f32 = mask[e * width..(e + 1) * width].iter().sum();
                let observed: usize = c.observations.iter().map(|r| r.len()).sum();
                assert_eq!(trained as usize, c.tokens.len() - observed);
            }
        }
    }
}

#[path = "../../tests/support/cdylib.rs"]
mod support;

fn records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A GRPO config on the bundled demo model with `environment` (a TOML section and whatever it needs).
fn demo_config(dir: &std::path::Path, environment: &str, steps: u64) -> PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = format!(
        "[model]\npath = {:?}\n[lora]\nmapper = {{ kind = \"all_linear\" }}\nrank = 8\nscale = 8.0\n\
         [data]\ntrain = {:?}\nbatch_size = 4\nmax_seq_length = 160\npad_multiple = 8\n\
         [rollout]\nnum_generations = 4\nmax_tokens = 8\ntemperature = 1.0\n\
         {environment}\n\
         [optimizer]\nkind = \"adamw\"\nlr = 5e-5\n[train]\nsteps = {steps}\nseed = 0\n\
         [loss]\nkind = \"grpo\"\nloss_type = \"dapo\"\nbeta = 0.0\n[output]\ndir = {:?}\n",
        root.join("models/tiny-arith").display().to_string(),
        root.join("data/grpo/train.jsonl").display().to_string(),
        dir.join("run").display().to_string(),
    );
    let path = dir.join("grpo.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run(path: &std::path::Path) -> Result<(), host::train::TrainError> {
    let mut registry = Registry::builtin().unwrap();
    let cfg = host::config::RunConfig::load(path, &[] as &[host::config::Override], &mut registry).unwrap();
    host::train::run(&cfg, &registry, None).map(|_| ())
}

/// The cdylib's `retry` environment answers a wrong answer with "Wrong, try again." as the user: episodes of
/// the demo model run several turns on one cache, each reward is what the transcript earned (1 / turn of the
/// right answer, 0 without one), and the turns are counted in the metrics.
#[test]
fn grpo_with_a_cdylib_environment_runs_multi_turn_episodes() {
    let dir = temp("retry");
    let library = support::cdylib("example_plugins");
    let env = format!("[plugins]\npaths = [{:?}]\n[environment]\nkind = \"retry\"\nmax_turns = 3\nmax_episode_tokens = 120\n", library.display().to_string());
    run(&demo_config(&dir, &env, 3)).unwrap();
    let out = dir.join("run");
    let lines = std::fs::read_to_string(out.join("completions.jsonl")).unwrap();
    let mut retried = 0;
    for line in lines.lines() {
        let c: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = c["completion"].as_str().unwrap();
        let tries = text.matches("Wrong, try again.").count();
        retried += usize::from(tries > 0);
        let reward = c["rewards"]["retry"].as_f64().unwrap();
        assert!(reward == 0.0 || (reward - 1.0 / (tries + 1) as f64).abs() < 1e-12, "{c}");
        assert_eq!(c["reward"].as_f64().unwrap(), reward, "the environment is the only reward");
        assert!(tries <= 2, "at most 3 turns: {c}");
    }
    assert!(retried > 0, "no episode had a second turn:\n{lines}");
    let log = records(&out);
    let turns: Vec<f64> = log.iter().map(|r| r["env/turns"].as_f64().unwrap()).collect();
    assert!(turns.iter().all(|&t| (1.0..=3.0).contains(&t)) && turns.iter().any(|&t| t > 1.0), "{turns:?}");
    assert!(log.iter().any(|r| r["env/observation_tokens"].as_f64().unwrap() > 0.0), "{log:?}");
}

/// The shipped tool-use demo (configs/grpo-tools.toml on models/tiny-tools, the built-in calculator): the model
/// starts out answering at once, mostly wrong, and calling the tool about one episode in sixteen; within sixteen
/// GRPO steps it calls the tool in most episodes and the reward rises with it. Measured on this machine: tool
/// calls per episode 0.03-0.09 over steps 1-3, 0.28-0.88 over steps 6-9 (the turn), 0.97-1.0 over steps 13-16;
/// rewards 0.03-0.09 then 0.28-0.69 (mean 0.48). Judging steps 13-16 leaves the turn room to come later.
/// The margins below leave room for another machine's sampling paths (BLAS rounding changes which tokens are
/// drawn) while a broken advantage, mask or observation append (no learning, or learning the wrong turn)
/// fails them.
#[test]
fn the_tool_use_demo_learns_to_call_the_calculator() {
    let dir = temp("tools-demo");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut registry = Registry::builtin().unwrap();
    let overrides: Vec<host::config::Override> = [
        "train.steps=16".to_owned(),
        "train.save_every=16".to_owned(),
        "eval.every=1000".to_owned(),
        "eval.max_prompts=4".to_owned(),
        format!("model.path={:?}", root.join("models/tiny-tools").display().to_string()),
        format!("data.train={:?}", root.join("data/tools/train.jsonl").display().to_string()),
        format!("eval.prompts={:?}", root.join("data/tools/valid.jsonl").display().to_string()),
        format!("output.dir={:?}", dir.join("run").display().to_string()),
    ]
    .iter()
    .map(|o| o.parse().unwrap())
    .collect();
    let cfg = host::config::RunConfig::load(&root.join("configs/grpo-tools.toml"), &overrides, &mut registry).unwrap();
    host::train::run(&cfg, &registry, None).unwrap();
    let log = records(&dir.join("run"));
    let mean = |key: &str, steps: std::ops::Range<usize>| {
        let v: Vec<f64> = log
            .iter()
            .filter(|r| r.get("reward").is_some() && steps.contains(&(r["step"].as_u64().unwrap() as usize)))
            .map(|r| r[key].as_f64().unwrap())
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (calls_before, calls_after) = (mean("env/tool_calls", 1..4), mean("env/tool_calls", 13..17));
    let (reward_before, reward_after) = (mean("reward", 1..4), mean("reward", 13..17));
    assert!(calls_before < 0.25 && calls_after > 0.6, "tool calls per episode {calls_before:.2} → {calls_after:.2}");
    assert!(reward_after > reward_before + 0.15, "reward {reward_before:.2} → {reward_after:.2}");
    // The reward comes from using the tool: most rewarded episodes called it, and each of those answered
    // with the tool's result (a direct answer can be right by chance, rarely).
    let (mut rewarded, mut with_tool) = (0, 0);
    for line in std::fs::read_to_string(dir.join("run/completions.jsonl")).unwrap().lines() {
        let c: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = c["completion"].as_str().unwrap();
        if c["reward"].as_f64().unwrap() != 1.0 {
            continue;
        }
        rewarded += 1;
        if let Some((_, after)) = text.split_once("<|im_start|>tool\n") {
            with_tool += 1;
            let result = after.split("<|im_end|>").next().unwrap();
            assert!(text.ends_with(&format!("The answer is {result}.<|im_end|>")), "{c}");
        }
    }
    assert!(rewarded > 20 && with_tool * 10 > rewarded * 8, "{with_tool} of {rewarded} rewarded episodes called the tool");
}

