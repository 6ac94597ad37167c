use super::*;

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("host-config-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn load(name: &str, text: &str, overrides: &[&str]) -> Result<RunConfig, ConfigError> {
    let overrides: Vec<Override> = overrides.iter().map(|o| o.parse().unwrap()).collect();
    RunConfig::load(&write(name, text), &overrides, &mut Registry::builtin().unwrap())
}

fn at(line: usize, column: usize) -> Location {
    Location::Text { line, column }
}

#[test]
fn minimal_config_gets_defaults() {
    let config = load("minimal", "[optimizer]\nlr = 1e-4\n", &[]).unwrap();
    assert_eq!(config.train.steps, 1000);
    assert_eq!(config.schedule, ScheduleSection::default());
    assert_eq!(config.output_dir(), PathBuf::from("runs/minimal"));
}

#[test]
fn problems_in_every_section_are_reported_together_with_positions() {
    let text = "\
[train]
steps = 10
stepz = 5

[optimizer]
lr = \"fast\"

[sheduler]
kind = \"cosine\"
";
    let err = load("many", text, &[]).unwrap_err();
    let got: Vec<(Location, &str)> = err.problems.iter().map(|p| (p.location.clone(), p.path.as_str())).collect();
    assert_eq!(got, vec![(at(8, 2), "sheduler"), (at(3, 1), "train.stepz"), (at(6, 1), "optimizer.lr")], "{err}");
    assert!(err.problems[0].message.contains("expected one of: model, lora, data, train, optimizer, schedule, loss, reference, rollout, reward, eval, environment, plugins, output"));
    assert!(err.problems[1].message.contains("expected one of: steps, seed, grad_accumulation_steps"), "{}", err.problems[1].message);
    assert!(err.problems[2].message.contains("invalid type"), "{}", err.problems[2].message);
    let shown = err.to_string();
    assert!(shown.contains("many.toml: 3 problems"), "{shown}");
    assert!(shown.contains("many.toml:3:1: `train.stepz`: unknown key"), "{shown}");
}

#[test]
fn plugin_and_cross_field_problems_point_at_their_keys() {
    let text = "\
[train]
steps = 5

[optimizer]
lr = -1.0

[schedule]
kind = \"cosine\"
warmup_steps = 5
min_lrr = 0.1
";
    let err = load("plugin", text, &[]).unwrap_err();
    let got: Vec<(Location, &str)> = err.problems.iter().map(|p| (p.location.clone(), p.path.as_str())).collect();
    assert_eq!(
        got,
        vec![(at(5, 1), "optimizer.lr"), (at(9, 1), "schedule.warmup_steps"), (at(10, 1), "schedule.min_lrr")],
        "{err}"
    );
    assert!(err.problems[2].message.contains("schedule `cosine` (built-in (plugin-schedules))"));
}

#[test]
fn unknown_plugin_lists_valid_names_at_kind() {
    let err = load("unknown", "[optimizer]\nlr = 1e-3\n[schedule]\nkind = \"cosin\"\n", &[]).unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert_eq!(err.problems[0].location, at(4, 1));
    assert!(err.problems[0].message.contains("valid names: constant, cosine, exponential, linear, step, wsd"));
}

#[test]
fn overrides_apply_and_are_named_when_wrong() {
    let text = "[optimizer]\nlr = 1e-3\n[schedule]\nkind = \"cosine\"\n";
    let config = load("set", text, &["optimizer.lr=0.5", "schedule.kind=linear", "train.steps=7"]).unwrap();
    assert_eq!(config.optimizer.lr, 0.5);
    assert_eq!(config.schedule.plugin.kind, "linear");
    assert_eq!(config.train.steps, 7);
    let err = load("set-bad", text, &["schedule.min_lr=low"]).unwrap_err();
    assert_eq!(err.problems[0].location, Location::Override("schedule.min_lr=low".to_owned()));
    let err = load("set-path", text, &["optimizer.lr.x=1"]).unwrap_err();
    assert!(err.problems[0].message.contains("`optimizer.lr` is not a table"), "{err}");
}

#[test]
fn syntax_errors_have_a_position() {
    let err = load("syntax", "[optimizer]\nlr = = 1\n", &[]).unwrap_err();
    assert!(matches!(err.problems[0].location, Location::Text { line: 2, .. }), "{err}");
}

#[test]
fn resolved_config_round_trips() {
    let text = "[optimizer]\nlr = 2e-4\n[schedule]\nkind = \"wsd\"\ndecay_ratio = 0.2\nwarmup_steps = 3\n";
    let config = load("resolved", text, &["train.steps=40"]).unwrap();
    let dir = std::env::temp_dir().join(format!("host-config-{}-resolved-out", std::process::id()));
    let written = config.write_resolved(&dir).unwrap();
    let again = RunConfig::load(&written, &[], &mut Registry::builtin().unwrap()).unwrap();
    assert_eq!(again, config);
    assert_eq!(again.schedule.plugin.config.get("decay_ratio"), Some(&toml::Value::Float(0.2)));
}

#[test]
fn schedule_is_built_with_warmup_and_the_run_context() {
    let text = "[train]\nsteps = 110\n[optimizer]\nlr = 1e-3\n[schedule]\nkind = \"linear\"\nwarmup_steps = 10\n";
    let config = load("build", text, &[]).unwrap();
    let registry = Registry::builtin().unwrap();
    let (schedule, ctx) = config.build_schedule(&registry).unwrap();
    assert_eq!(ctx, ScheduleContext { base_lr: 1e-3, total_steps: 110 });
    // Warmup 0 → 1e-3 over 10 steps, then linear 1e-3 → 0 over the remaining 100.
    for (step, want) in [(0u64, 0.0), (5, 5e-4), (10, 1e-3), (60, 5e-4), (110, 0.0)] {
        assert!((schedule.lr(step, &ctx).unwrap() - want).abs() < 1e-15, "step {step}");
    }
}

#[test]
fn every_shipped_config_parses_and_validates() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&configs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            RunConfig::load_in(&path, &[], &mut Registry::builtin().unwrap(), &root).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen > 0, "no configs found in {}", configs.display());
}

#[test]
fn reference_and_mask_rules_follow_what_the_loss_needs() {
    let text = "\
[optimizer]
lr = 1e-3

[loss]
kind = \"simpo\"
beta = -2.0

[reference]
mode = \"model\"
";
    let err = load("reference", text, &[]).unwrap_err();
    let got: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(got, vec!["loss.beta"], "a loss that fails to build leaves its reference rules unchecked: {err}");
    let err = load("reference", &text.replace("beta = -2.0", "beta = 2.0"), &[]).unwrap_err();
    let got: Vec<(Location, &str, &str)> = err.problems.iter().map(|p| (p.location.clone(), p.path.as_str(), p.message.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (at(8, 2), "reference", "loss `simpo` uses no reference policy; remove [reference]"),
            (at(9, 1), "reference.mode", "mode = \"model\" needs `model`, the reference model"),
        ],
        "{err}"
    );
    let dpo = "[optimizer]\nlr = 1e-3\n[loss]\nkind = \"dpo\"\n[reference]\nmode = \"adapters_off\"\nmodel = \"elsewhere\"\n";
    let err = load("reference-model", dpo, &[]).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].path, "reference.model");
    let cfg = load("reference-ok", dpo, &["reference.mode=\"precomputed\""]).unwrap();
    assert_eq!(cfg.reference.unwrap().mode, ReferenceMode::Precomputed);

    let data = write("mask-data", "");
    let masked = format!("[optimizer]\nlr = 1e-3\n[loss]\nkind = \"kto\"\n[data]\ntrain = {:?}\nmask = \"none\"\n", data.display().to_string());
    let err = load("mask", &masked, &[]).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!((err.problems[0].path.as_str(), err.problems[0].message.as_str()), ("data.mask", "loss `kto` scores completions only: mask must be \"prompt\" (or left out)"));
    let cfg = load("mask-ok", &masked.replace("mask = \"none\"\n", ""), &[]).unwrap();
    assert_eq!(cfg.data.unwrap().masking(crate::data::RowShape::Labeled), crate::data::Masking::Prompt);
}

#[test]
fn rollout_rules_follow_what_the_loss_needs() {
    let prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/grpo/train.jsonl").display().to_string();
    let grpo = &format!("\
[optimizer]
lr = 1e-3

[data]
train = \"{prompts}\"
max_batch_tokens = 512
cache = {{ kind = \"none\" }}

[loss]
kind = \"grpo\"
beta = 0.04
loss_type = \"dr_grpo\"
max_completion_length = 16

[reference]
mode = \"precomputed\"

[rollout]
max_tokens = 32
num_generations = 1
scale_rewards = \"sometimes\"
");
    let err = load("rollout", grpo, &[]).unwrap_err();
    let got: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    // scale_rewards fails to parse, so the rules that need [rollout] wait; the rest are reported together.
    assert_eq!(got, vec!["rollout.scale_rewards", "reference.mode", "data.max_batch_tokens", "data.cache"], "{err}");
    assert!(err.problems[0].message.contains("\"group\", \"batch\", \"none\", true or false"), "{err}");

    let fixed = grpo.replace("scale_rewards = \"sometimes\"", "scale_rewards = false");
    let err = load("rollout", &fixed, &[]).unwrap_err();
    let got: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(got, vec!["reference.mode", "rollout.num_generations", "loss.kind", "loss.max_completion_length", "data.max_batch_tokens", "data.cache"], "{err}");
    let message = |path: &str| err.problems.iter().find(|p| p.path == path).unwrap().message.clone();
    assert_eq!(message("loss.max_completion_length"), "16 differs from [rollout] max_tokens (32), the completions' real limit");
    assert_eq!(message("loss.kind"), "loss `grpo` learns from rewards: add at least one [[reward]] or an [environment]");

    let good = &format!("\
[optimizer]
lr = 1e-3

[data]
train = \"{prompts}\"

[loss]
kind = \"grpo\"

[rollout]
max_tokens = 32
scale_rewards = \"batch\"

[[reward]]
kind = \"exact_answer\"

[[reward]]
kind = \"regex_format\"
pattern = 'The answer is \\d+'
weight = 0.5
");
    let config = load("rollout", good, &[]).unwrap();
    let rollout = config.rollout.clone().unwrap();
    assert_eq!((rollout.num_generations, rollout.max_tokens, rollout.scale_rewards), (8, 32, crate::config::ScaleRewards::Batch));
    let rewards: Vec<(&str, f64)> = config.reward.iter().map(|r| (r.plugin.kind.as_str(), r.weight)).collect();
    assert_eq!(rewards, vec![("exact_answer", 1.0), ("regex_format", 0.5)]);
    assert_eq!(config.reward[1].plugin.config.get("pattern").and_then(|v| v.as_str()), Some("The answer is \\d+"));

    let err = load("rollout", good, &["data.max_seq_length=32"]).unwrap_err();
    assert_eq!(err.problems[0].path, "data.max_seq_length", "{err}");
    assert_eq!(err.problems[0].message, "32 leaves no room for prompts next to [rollout] max_tokens (32): it bounds prompt + completion");

    let err = load("rollout", &good.replace("kind = \"exact_answer\"", "kind = \"exact\""), &[]).unwrap_err();
    assert_eq!(err.problems[0].path, "reward.0.kind", "{err}");
    assert!(err.problems[0].message.contains("exact_answer, length_penalty, overlong, regex_format"), "{err}");

    // Named rewards: the names are the metrics' keys, so a name used twice is refused at the second.
    let named = good.replace("kind = \"exact_answer\"", "kind = \"exact_answer\"\nname = \"correct\"");
    let config = load("rollout", &named, &[]).unwrap();
    assert_eq!(config.reward[0].name.as_deref(), Some("correct"));
    let twice = named.replace("weight = 0.5", "weight = 0.5\nname = \"correct\"");
    let err = load("rollout", &twice, &[]).unwrap_err();
    assert_eq!(err.problems[0].path, "reward.1.name", "{err}");
    assert!(err.problems[0].message.contains("`correct` names an earlier reward too"), "{err}");

    // An environment: its host keys, its plugin's own keys, and the limits it sets on [data] max_seq_length.
    let env = format!("{good}\n[environment]\nkind = \"calculator\"\nmax_turns = 3\ncolumn = \"answer\"\nweight = 2\n");
    let config = load("rollout", &env, &[]).unwrap();
    let e = config.environment.clone().unwrap();
    assert_eq!((e.plugin.kind.as_str(), e.max_turns, e.max_episode_tokens, e.weight, e.reward_name()), ("calculator", 3, None, 2.0, "calculator".to_owned()));
    assert_eq!(e.plugin.config.get("column").and_then(|v| v.as_str()), Some("answer"));
    assert_eq!(e.episode_tokens(32), 96, "max_turns × [rollout] max_tokens");
    // 3 turns of 32 tokens do not fit next to prompts in 64 tokens.
    let err = load("rollout", &env, &["data.max_seq_length=64"]).unwrap_err();
    assert_eq!(err.problems[0].path, "data.max_seq_length", "{err}");
    assert!(err.problems[0].message.contains("an episode's tokens"), "{err}");
    let err = load("rollout", &env.replace("column = ", "colum = "), &[]).unwrap_err();
    assert_eq!(err.problems[0].path, "environment.colum", "{err}");
    assert!(err.problems[0].message.contains("expected one of `column`"), "{err}");
    let err = load("rollout", &env.replace("max_turns = 3", "max_turns = 0"), &[]).unwrap_err();
    assert!(err.problems[0].message.contains("`max_turns` must be a whole number of at least 1"), "{err}");
    let err = load("rollout", &env.replace("kind = \"calculator\"", "kind = \"calculator\"\ntool_call_format = \"json\""), &[]).unwrap_err();
    assert!(err.problems[0].message.contains("`tool_call_format` must be"), "{err}");
    let err = load("rollout", &env.replace("weight = 2", "weight = 2\nname = \"exact_answer\""), &[]).unwrap_err();
    assert_eq!(err.problems[0].path, "environment.name", "{err}");
    // With an environment, [[reward]] functions are optional.
    let only_env = format!("[optimizer]\nlr = 1e-3\n\n[data]\ntrain = \"{prompts}\"\n\n[loss]\nkind = \"grpo\"\n\n[environment]\nkind = \"calculator\"\n");
    assert!(load("rollout", &only_env, &[]).unwrap().reward.is_empty());

    let sft = "\
[optimizer]
lr = 1e-3

[loss]
kind = \"sft\"

[rollout]
max_tokens = 8

[[reward]]
kind = \"exact_answer\"
";
    let err = load("rollout", sft, &[]).unwrap_err();
    let got: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(got, vec!["rollout", "reward"], "{err}");
}

#[test]
fn packing_fixes_the_batch_and_applies_to_dataset_rows() {
    let rows = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/sft/train.jsonl").display().to_string();
    let sft = format!("[optimizer]\nlr = 1e-3\n\n[data]\ntrain = \"{rows}\"\npacking = true\nmax_batch_tokens = 4096\n");
    let err = load("packing", &sft, &[]).unwrap_err();
    let got: Vec<(&str, &Location)> = err.problems.iter().map(|p| (p.path.as_str(), &p.location)).collect();
    assert_eq!(got, vec![("data.max_batch_tokens", &Location::Text { line: 7, column: 1 })], "{err}");
    assert!(load("packing", &sft.replace("max_batch_tokens = 4096\n", ""), &[]).unwrap().data.unwrap().packing);

    let prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/grpo/train.jsonl").display().to_string();
    let grpo = format!(
        "[optimizer]\nlr = 1e-3\n\n[data]\ntrain = \"{prompts}\"\npacking = true\n\n[loss]\nkind = \"grpo\"\n\n[rollout]\nmax_tokens = 32\n\n[[reward]]\nkind = \"exact_answer\"\n"
    );
    let err = load("packing", &grpo, &[]).unwrap_err();
    let got: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(got, vec!["data.packing"], "{err}");
    assert!(err.problems[0].message.contains("applies to dataset rows"), "{err}");
}
