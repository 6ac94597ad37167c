//! The JSON-lines protocol between the host and a plugin process, version 1. One JSON object per line, UTF-8,
//! on the child's stdin (host → child) and stdout (child → host); the child's stderr is passed through to the
//! host's, so it is where a plugin prints. Nothing else may appear on stdout.
//!
//! ```text
//! host → child  {"type": "hello", "protocol": 1, "kind": "reward"}
//! child → host  {"type": "ready", "protocol": 1}
//! host → child  {"type": "score", "id": 1, "prompts": [..], "completions": [..], "completion_ids": [[..]], "rows": [{..}]}
//! child → host  {"type": "scores", "id": 1, "scores": [0.5, null, ..]}      one per completion; null: not applicable
//!          or   {"type": "error", "id": 1, "message": "..."}                  the run stops with this message
//! ```
//!
//! An environment (`"kind": "environment"` in the hello) is asked for its tools once, then answers every round
//! of finished assistant turns:
//!
//! ```text
//! host → child  {"type": "tools", "id": 1}
//! child → host  {"type": "tools", "id": 1, "tools": [{"type": "function", "function": {..}}]}
//! host → child  {"type": "step", "id": 2, "turns": [{"row": {..}, "messages": [..], "turn": 1, "last": false}]}
//! child → host  {"type": "replies", "id": 2, "replies": [{"observations": ["4"]}, {"done": true, "reward": 1.0}]}
//! ```
//!
//! One reply per turn: `observations` (tool messages, one per call; on a turn without calls they speak as the
//! user) or `done` with a `reward` (a number, or null: no reward of the environment's own). On a `last` turn
//! observations are not used.
//!
//! The host closes the child's stdin when the run ends; the child should then exit (it is killed a few seconds
//! later otherwise). A child that answers with another protocol version, another id, a line that is not a JSON
//! object, or not within the deadline is an error naming the plugin.

use serde_json::{json, Value};

/// The protocol version this host speaks.
pub const VERSION: u64 = 1;

/// The Python helper (`python/host_plugin.py`): written next to the child and put on its `PYTHONPATH`.
pub const PYTHON_HELPER: &str = include_str!("../../../python/host_plugin.py");

/// File name of the Python helper, the module name `import host_plugin` finds.
pub const PYTHON_HELPER_FILE: &str = "host_plugin.py";

pub fn hello(kind: &str) -> Value {
    json!({"type": "hello", "protocol": VERSION, "kind": kind})
}

/// Checks the child's answer to [`hello`].
pub fn check_ready(answer: &Value) -> Result<(), String> {
    match (answer.get("type").and_then(Value::as_str), answer.get("protocol").and_then(Value::as_u64)) {
        (Some("ready"), Some(VERSION)) => Ok(()),
        (Some("ready"), Some(v)) => Err(format!("speaks protocol version {v}; this host speaks version {VERSION}")),
        _ => Err(format!("answered the hello with {answer} instead of {{\"type\": \"ready\", \"protocol\": {VERSION}}}")),
    }
}

/// The answer's payload under `key` when it is of type `expected` and has request `id`; its message when it
/// is an error.
pub fn payload<'a>(answer: &'a Value, expected: &str, id: u64, key: &str) -> Result<&'a Value, String> {
    let kind = answer.get("type").and_then(Value::as_str);
    if kind == Some("error") {
        let message = answer.get("message").and_then(Value::as_str).unwrap_or("(no message)");
        return Err(format!("reported an error: {message}"));
    }
    if kind != Some(expected) {
        return Err(format!("answered with {} instead of a `{expected}` message", short(answer)));
    }
    if answer.get("id").and_then(Value::as_u64) != Some(id) {
        return Err(format!("answered request {} while request {id} was waiting", answer.get("id").map_or("(no id)".into(), Value::to_string)));
    }
    answer.get(key).ok_or_else(|| format!("sent a `{expected}` message without `{key}`"))
}

/// A value cut to a readable length for an error message.
pub fn short(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}
