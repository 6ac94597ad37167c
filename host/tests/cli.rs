//! The `host` binary end to end: the same binary, unchanged, runs plugins from a cdylib it was not built with.

#[path = "../../tests/support/cdylib.rs"]
mod support;
mod common;

use std::{path::PathBuf, process::Command};

fn host(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_host")).args(args).env("RUST_BACKTRACE", "0").output().expect("run host");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("host-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn plugins_lists_builtins_and_the_loaded_library() {
    let library = support::cdylib("example_plugins");
    let (ok, stdout, stderr) = host(&["plugins", "--load", library.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let lines: Vec<Vec<&str>> = stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["KIND", "NAME", "ORIGIN", "SUMMARY"]);
    let origin_of = |kind: &str, name: &str| {
        lines.iter().find(|l| l[0] == kind && l[1] == name).map(|l| l[2..].join(" ")).unwrap_or_default()
    };
    let file = library.display().to_string();
    assert!(origin_of("schedule", "inverse_sqrt").starts_with(&file), "{stdout}");
    assert!(origin_of("loss", "pair_logsigmoid").starts_with(&file), "{stdout}");
    for builtin in ["constant", "linear", "cosine", "step", "exponential", "wsd"] {
        assert!(origin_of("schedule", builtin).starts_with("built-in (plugin-schedules)"), "{builtin}: {stdout}");
    }
}

#[test]
fn the_same_binary_runs_a_schedule_from_a_cdylib_named_in_the_config() {
    let library = support::cdylib("example_plugins");
    let config = temp_config(
        "swap.toml",
        &format!(
            "[train]\nsteps = 13\n[optimizer]\nlr = 0.03\n[plugins]\npaths = [{:?}]\n[schedule]\nkind = \"inverse_sqrt\"\ntimescale = 3.0\n",
            library.display().to_string()
        ),
    );
    let (ok, stdout, stderr) = host(&["schedule", "--config", config.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let rows: Vec<(u64, f64)> = stdout
        .lines()
        .skip(1)
        .map(|l| {
            let (s, lr) = l.split_once(',').unwrap();
            (s.parse().unwrap(), lr.parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), 13);
    for (step, lr) in rows {
        let want = 0.03 / (1.0 + step as f64 / 3.0).sqrt();
        assert!((lr - want).abs() <= 1e-9 * want, "step {step}: {lr} vs {want}");
    }
    // And with --set, the built-in instead: nothing rebuilt, only the configuration changed.
    let (ok, stdout, stderr) =
        host(&["schedule", "--config", config.to_str().unwrap(), "--set", "schedule.kind=constant", "--set", "schedule.timescale=1"]);
    assert!(!ok, "constant takes no timescale: {stdout}");
    assert!(stderr.contains("`schedule.timescale`") && stderr.contains("unknown field `timescale`"), "{stderr}");
}

#[test]
fn config_problems_are_all_reported_and_fail_the_command() {
    let config = temp_config("bad.toml", "[optimizer]\nlr = 0\n[schedule]\nkind = \"cosine\"\nmin_lrr = 1\n[extra]\n");
    let (ok, _, stderr) = host(&["schedule", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("bad.toml: 3 problems"), "{stderr}");
    assert!(stderr.contains("bad.toml:6:2: `extra`: unknown section"), "{stderr}");
    assert!(stderr.contains("bad.toml:2:1: `optimizer.lr`: must be a positive number, got 0"), "{stderr}");
    assert!(stderr.contains("bad.toml:5:1: `schedule.min_lrr`"), "{stderr}");
}

#[test]
fn generate_streams_text_or_prints_one_json_object() {
    let dir = std::env::temp_dir().join(format!("host-cli-{}-gen", std::process::id()));
    host::fixture::write(&dir, host::fixture::Family::Qwen2, host::fixture::Preset::Tiny, 5).unwrap();
    let model = dir.to_str().unwrap();
    let (ok, stdout, stderr) = host(&["generate", "--model", model, "--chat", "What is 2 + 3?", "--max-tokens", "7", "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: stdout {stdout:?}, stderr {stderr:?}"));
    let tokenizer = host::text::TextTokenizer::load(&dir).unwrap();
    let expected_prompt =
        tokenizer.encode_chat(&[serde_json::json!({"role": "user", "content": "What is 2 + 3?"})], None, true).unwrap();
    assert_eq!(v["prompt_tokens"], serde_json::json!(expected_prompt));
    let tokens: Vec<u32> = serde_json::from_value(v["tokens"].clone()).unwrap();
    let logprobs: Vec<f32> = serde_json::from_value(v["logprobs"].clone()).unwrap();
    assert_eq!(tokens.len(), logprobs.len());
    assert!(!tokens.is_empty() && tokens.len() <= 7);
    assert!(logprobs.iter().all(|l| *l <= 0.0));
    assert_eq!(v["text"], serde_json::json!(tokenizer.decode(&tokens, false).unwrap()));
    assert!(v["timings"]["decode_tokens_per_second"].as_f64().unwrap() > 0.0);

    // Streaming the same greedy generation prints the same text.
    let (ok, streamed, stderr) = host(&["generate", "--model", model, "--chat", "What is 2 + 3?", "--max-tokens", "7"]);
    assert!(ok, "{stderr}");
    assert_eq!(streamed, format!("{}\n", v["text"].as_str().unwrap()));
    assert!(stderr.contains("tokens/s"), "{stderr}");

    // A stop string (here the last two characters of the text) cuts the text before its first occurrence.
    let text = v["text"].as_str().unwrap();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 2, "the fixture generates some text: {text:?}");
    let stop: String = chars[chars.len() - 2..].iter().collect();
    let (ok, out, stderr) = host(&["generate", "--model", model, "--chat", "What is 2 + 3?", "--max-tokens", "7", "--json", "--stop", &stop]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("{e}: stop {stop:?}, stdout {out:?}, stderr {stderr:?}, first text {text:?}"));
    assert_eq!(v["finish_reason"], "stop");
    assert_eq!(v["text"].as_str().unwrap(), &text[..text.find(&stop).unwrap()]);
    let (ok, _, stderr) = host(&["generate", "--model", "/no/such/model", "--prompt", "x"]);
    assert!(!ok && stderr.contains("model `/no/such/model` not found"), "{stderr}");
}

#[test]
fn the_shipped_training_configs_run() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for name in ["sft", "dpo", "orpo", "kto", "simpo", "full-sft"] {
        let out = std::env::temp_dir().join(format!("host-cli-{}-{name}", std::process::id()));
        let out_arg = format!("output.dir={:?}", out.display().to_string());
        let config = format!("configs/{name}.toml");
        let status = Command::new(env!("CARGO_BIN_EXE_host"))
            .current_dir(&root)
            .args(["run", "--config", &config, "--set", "train.steps=12", "--set", "train.eval_every=6", "--set", "schedule.warmup_steps=2", "--set", &out_arg])
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        assert!(status.status.success(), "{name}: {}", String::from_utf8_lossy(&status.stderr));
        let stdout = String::from_utf8_lossy(&status.stdout);
        assert!(stdout.contains("12 steps, completed"), "{name}: {stdout}");
        assert!(stdout.contains("best validation loss"), "{name}: {stdout}");
        let result = if name == "full-sft" { "model.safetensors" } else { "adapters.safetensors" };
        assert!(out.join(result).is_file() && out.join("loss.png").is_file(), "{name}");
        assert_eq!(out.join("rewards.png").is_file(), !name.ends_with("sft"), "{name}: preference losses plot their rewards");
    }
}

/// The GRPO variants as shipped: `grpo-python` (its reward a Python script served by a child process) computes
/// what `grpo`'s built-in rewards compute, so the two runs log the same rewards and train the same adapters;
/// `dapo` logs its dynamic sampling, masking and overlong reward; `gspo` reuses each batch of rollouts for a second step, on which its sequence weights leave 1.
#[test]
fn the_shipped_grpo_variants_run_and_the_python_reward_trains_what_the_builtins_train() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = |name: &str| {
        let out = std::env::temp_dir().join(format!("host-cli-{}-{name}", std::process::id()));
        let out_arg = format!("output.dir={:?}", out.display().to_string());
        let config = format!("configs/{name}.toml");
        let status = Command::new(env!("CARGO_BIN_EXE_host"))
            .current_dir(&root)
            .args(["run", "--config", &config, "--set", "train.steps=6", "--set", &out_arg])
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        assert!(status.status.success(), "{name}: {}", String::from_utf8_lossy(&status.stderr));
        let log: Vec<serde_json::Value> =
            std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).filter(|r: &serde_json::Value| r.get("reward").is_some()).collect();
        assert_eq!(log.len(), 6, "{name}");
        (out, log)
    };
    let (builtin, builtin_log) = run("grpo");
    let (python, python_log) = run("grpo-python");
    for (a, b) in builtin_log.iter().zip(&python_log) {
        assert_eq!(a["reward"], b["reward"], "step {}", a["step"]);
        assert_eq!(a["loss"], b["loss"], "step {}", a["step"]);
        assert!(b.get("rewards/python/mean").is_some(), "{b}");
    }
    assert_eq!(common::adapters(&builtin), common::adapters(&python));

    let (_, dapo) = run("dapo");
    for r in &dapo {
        for key in ["dynamic_sampling/rounds", "dynamic_sampling/filled_groups", "completions/masked_tokens", "rewards/overlong/mean"] {
            assert!(r[key].as_f64().is_some(), "{key}: {r}");
        }
    }

    let (_, gspo) = run("gspo");
    let (fresh, reused): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) = gspo.iter().partition(|r| r["fresh_rollouts"] == serde_json::json!(true));
    assert_eq!((fresh.len(), reused.len()), (3, 3), "num_iterations = 2");
    assert!(fresh.iter().all(|r| r["ratio"].as_f64() == Some(1.0)), "{fresh:?}");
    // The first updates, at warmup learning rates of 1e-5 on adapters starting at B = 0, move the weights too
    // little to show in a float32 mean; by the last reused batch the weight has left 1.
    let last = reused.last().unwrap();
    assert!(last["ratio"].as_f64().unwrap() != 1.0 && last["clip_ratio/region_mean"].as_f64().is_some(), "{last}");
}

#[test]
fn quantize_writes_each_mode_and_refuses_what_no_mode_packs() {
    let dir = std::env::temp_dir().join(format!("host-cli-{}-quantize", std::process::id()));
    host::fixture::write(&dir.join("float"), host::fixture::Family::Qwen2, host::fixture::Preset::Tiny, 5).unwrap();
    let model = dir.join("float");
    let out = dir.join("nvfp4");
    let (ok, stdout, stderr) = host(&["quantize", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--mode", "nvfp4"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("nvfp4 4-bit, group size 16"), "{stdout}");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization"], serde_json::json!({"group_size": 16, "bits": 4, "mode": "nvfp4"}));
    let q = host::model::load(&out, &Default::default()).unwrap();
    let layer = q.model.model.layers[0].self_attn.q_proj.as_ref().unwrap();
    assert_eq!(layer.quant.map(|q| q.mode), Some(host::nn::QuantMode::Nvfp4));
    // An unknown mode, and a group size the mode does not use, fail before anything is written.
    let (ok, _, stderr) = host(&["quantize", "--model", model.to_str().unwrap(), "--out", dir.join("x").to_str().unwrap(), "--mode", "int4"]);
    assert!(!ok && stderr.contains("unknown quantization mode `int4`"), "{stderr}");
    let (ok, _, stderr) =
        host(&["quantize", "--model", model.to_str().unwrap(), "--out", dir.join("y").to_str().unwrap(), "--mode", "mxfp8", "--group-size", "64"]);
    assert!(!ok && stderr.contains("mxfp8 packs 8 bits in groups of 32"), "{stderr}");
    assert!(!dir.join("x").exists() && !dir.join("y").exists());
}
