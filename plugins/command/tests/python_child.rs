//! The `command` reward against real Python children: the helper's happy path (columns as keyword arguments,
//! prints kept off the protocol), and every way a child can misbehave, each a clear error naming the command.

use std::path::PathBuf;

use plugin_command::CommandReward;
use sdk::{Plugin, Reward, RewardBatch};

fn script(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plugin-command-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

fn reward(path: &PathBuf, extra: &str) -> Result<CommandReward, String> {
    let toml = format!("command = [\"python3\", {:?}]\n{extra}", path.display().to_string());
    CommandReward::from_config(&toml.parse().unwrap()).map_err(|e| e.to_string())
}

/// Three completions; rows 0 and 2 have an `answer`, row 1 has none.
fn score(r: &mut CommandReward) -> Result<Vec<Option<f64>>, String> {
    let prompts = ["What is 2+2?", "Say hi", "What is 3+4?"];
    let completions = ["It is 4", "hi", "It is 8"];
    let ids: [&[u32]; 3] = [&[1, 2, 3], &[4], &[1, 2, 5]];
    let rows = [r#"{"prompt": "What is 2+2?", "answer": 4}"#, r#"{"prompt": "Say hi"}"#, r#"{"prompt": "What is 3+4?", "answer": 7}"#];
    let batch = RewardBatch { prompts: &prompts, completions: &completions, completion_ids: &ids, rows: &rows };
    r.score(&batch).map_err(|e| e.to_string())
}

const ANSWER: &str = r#"
from host_plugin import serve_reward

def score(prompts, completions, completion_ids, answer, **columns):
    print("scoring", len(completions))  # must not reach the protocol
    assert columns["prompt"] == prompts, columns
    return [None if a is None else float(c.endswith(str(a))) + 0.01 * len(ids)
            for c, a, ids in zip(completions, answer, completion_ids)]

serve_reward(score)
"#;

#[test]
fn a_python_reward_scores_with_columns_as_keyword_arguments_and_lives_across_batches() {
    let mut r = reward(&script("answer.py", ANSWER), "").unwrap();
    assert_eq!(score(&mut r).unwrap(), vec![Some(1.03), None, Some(0.03)]);
    // The same process answers the next batch (request ids advance).
    assert_eq!(score(&mut r).unwrap(), vec![Some(1.03), None, Some(0.03)]);
}

#[test]
fn children_that_misbehave_get_errors_naming_the_command() {
    let cases: [(&str, &str, &str, &str); 9] = [
        ("raises.py", "from host_plugin import serve_reward\nserve_reward(lambda **k: 1 / 0)\n", "", "ZeroDivisionError"),
        ("count.py", "from host_plugin import serve_reward\nserve_reward(lambda completions, **k: [1.0])\n", "", "returned 1 scores for 3 completions"),
        ("nan.py", "from host_plugin import serve_reward\nserve_reward(lambda completions, **k: [float('nan')] * 3)\n", "", "score 0 is nan"),
        ("exits.py", "import sys\nfrom host_plugin import serve_reward\ndef s(**k):\n    sys.exit(3)\nserve_reward(s)\n", "", "exit status: 3"),
        ("slow.py", "import time\nfrom host_plugin import serve_reward\ndef s(completions, **k):\n    time.sleep(30)\nserve_reward(s)\n", "timeout_seconds = 0.5", "no answer within 0.5 s (`timeout_seconds`)"),
        ("silent.py", "import time\ntime.sleep(30)\n", "startup_timeout_seconds = 0.5", "(`startup_timeout_seconds`)"),
        ("version.py", "import sys\nsys.stdin.readline()\nprint('{\"type\": \"ready\", \"protocol\": 2}', flush=True)\nsys.stdin.readline()\n", "", "speaks protocol version 2; this host speaks version 1"),
        ("chatty.py", "import sys\nsys.stdin.readline()\nprint('loading model...', flush=True)\nsys.stdin.readline()\n", "", "not a protocol message (JSON object) to stdout: \"loading model...\"; print to stderr instead"),
        ("raw.py", "import sys, json\nsys.stdin.readline()\nprint(json.dumps({'type': 'ready', 'protocol': 1}), flush=True)\nsys.stdin.readline()\nprint(json.dumps({'type': 'scores', 'id': 1, 'scores': [1, 'x', 2]}), flush=True)\nsys.stdin.readline()\n", "", "score 1 is \"x\", not a number or null"),
    ];
    for (name, body, extra, want) in cases {
        let path = script(name, body);
        let mut r = reward(&path, extra).unwrap();
        let started = std::time::Instant::now();
        let err = score(&mut r).unwrap_err();
        assert!(err.contains(want), "{name}: {err}");
        assert!(err.contains(&format!("command `python3 {}`", path.display())), "{name} names the command: {err}");
        // Deadlines hold: nothing here waits for the 30-second sleeps.
        assert!(started.elapsed().as_secs_f64() < 10.0, "{name} took {:?}", started.elapsed());
    }
}

#[test]
fn bad_settings_are_refused_before_anything_starts() {
    let parse = |toml: &str| CommandReward::from_config(&toml.parse().unwrap()).map(|_| ()).map_err(|e| e.to_string());
    assert!(parse("command = []").unwrap_err().contains("`command` is empty"));
    assert!(parse("command = [\"no-such-program-here\"]").unwrap_err().contains("program `no-such-program-here` not found"));
    assert!(parse("command = [\"python3\"]\ntimeout_seconds = 0").unwrap_err().contains("`timeout_seconds` must be a positive number"));
    assert!(parse("command = [\"python3\"]\ntimeout = 5").unwrap_err().contains("unknown field `timeout`"));
}

const ENV: &str = r#"
from host_plugin import serve_environment

TOOLS = [{"type": "function", "function": {"name": "double", "parameters": {"type": "object"}}}]

def step(messages, turn, last, answer, **columns):
    print("turn", turn)  # must not reach the protocol
    calls = messages[-1].get("tool_calls")
    if answer == "crash":
        raise RuntimeError("the environment broke")
    if answer == "bad":
        return [1]
    if calls and not last:
        return [str(2 * c["function"]["arguments"]["x"]) for c in calls]
    return None if answer is None else float(messages[-1]["content"] == str(answer))

serve_environment(step, TOOLS)
"#;

fn env_turn(content: &str, calls: Option<serde_json::Value>, answer: serde_json::Value, last: bool) -> sdk::EnvTurn {
    let mut message = serde_json::json!({"role": "assistant", "content": content});
    if let Some(c) = calls {
        message["tool_calls"] = c;
    }
    sdk::EnvTurn { row: serde_json::json!({"prompt": "p", "answer": answer}), messages: vec![message], turn: 1, last }
}

#[test]
fn a_python_environment_answers_calls_and_ends_episodes_with_rewards() {
    use sdk::{EnvReply, Environment};
    let toml = format!("command = [\"python3\", {:?}]\n", script("env.py", ENV).display().to_string());
    let mut env = plugin_command::CommandEnvironment::from_config(&toml.parse().unwrap()).unwrap();
    let tools = env.tools().unwrap();
    assert_eq!(tools[0]["function"]["name"], "double");
    let call = serde_json::json!([{"type": "function", "function": {"name": "double", "arguments": {"x": 21}}}]);
    let replies = env
        .step(&[
            env_turn("<tool_call>…", Some(call.clone()), serde_json::json!(42), false),
            env_turn("42", None, serde_json::json!(42), false),
            env_turn("41", None, serde_json::json!(42), false),
            env_turn("<tool_call>…", Some(call), serde_json::json!(42), true),
            env_turn("x", None, serde_json::Value::Null, false),
        ])
        .unwrap();
    assert_eq!(
        replies,
        vec![EnvReply::Observe(vec!["42".into()]), EnvReply::Done(Some(1.0)), EnvReply::Done(Some(0.0)), EnvReply::Done(Some(0.0)), EnvReply::Done(None)]
    );
    let err = env.step(&[env_turn("x", None, serde_json::json!("bad"), false)]).unwrap_err().to_string();
    assert!(err.contains("tool messages are strings") && err.contains("env.py"), "{err}");
    let err = env.step(&[env_turn("x", None, serde_json::json!("crash"), false)]).unwrap_err().to_string();
    assert!(err.contains("the environment broke"), "{err}");
}
