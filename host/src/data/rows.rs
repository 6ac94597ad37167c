//! JSONL rows in the formats mlx-lm and TRL read: `{"text"}`, `{"prompt", "completion"}` (optional
//! `"system"`), `{"messages", "tools"?}`; preference pairs `{"prompt", "chosen", "rejected"}` and labelled
//! completions `{"prompt", "completion", "label"}` (KTO), each either plain strings or chat messages (TRL's
//! conversational form, including pairs with an implicit prompt: two whole conversations sharing a prefix).
//! A malformed row is an error naming its file and line.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::DataError;

#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Text(String),
    Completion { system: Option<String>, prompt: String, completion: String },
    Chat { messages: Vec<Value>, tools: Option<Vec<Value>> },
    /// A preferred and a dispreferred completion of one prompt.
    Preference { prompt: Prompt, chosen: Reply, rejected: Reply },
    /// A completion labelled desirable (`true`) or undesirable.
    Labeled { prompt: Prompt, completion: Reply, label: bool },
}

/// The prompt of a preference or labelled row.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text { system: Option<String>, prompt: String },
    /// Chat messages before the completion (they may end with a user or tool turn).
    Messages(Vec<Value>),
}

impl Prompt {
    /// For a model without a chat template: the system text, a newline and the prompt (mlx-lm's plain
    /// concatenation); `None` for chat messages, which need a template.
    pub fn plain_text(&self) -> Option<String> {
        match self {
            Prompt::Text { system: Some(s), prompt } => Some(format!("{s}\n{prompt}")),
            Prompt::Text { system: None, prompt } => Some(prompt.clone()),
            Prompt::Messages(_) => None,
        }
    }

    /// As chat messages: the system message when there is one, then the user's prompt.
    pub fn messages(&self) -> Vec<Value> {
        match self {
            Prompt::Text { system, prompt } => {
                let mut m: Vec<Value> = system.iter().map(|s| serde_json::json!({"role": "system", "content": s})).collect();
                m.push(serde_json::json!({"role": "user", "content": prompt}));
                m
            }
            Prompt::Messages(m) => m.clone(),
        }
    }
}

/// A completion: plain text, or the assistant messages that follow the prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Text(String),
    Messages(Vec<Value>),
}

impl Row {
    /// What the row trains: one sequence, a pair, or a labelled sequence.
    pub fn shape(&self) -> RowShape {
        match self {
            Row::Text(_) | Row::Completion { .. } | Row::Chat { .. } => RowShape::Single,
            Row::Preference { .. } => RowShape::Pair,
            Row::Labeled { .. } => RowShape::Labeled,
        }
    }
}

/// The kinds of rows a loss can train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowShape {
    /// text, prompt/completion or messages.
    Single,
    /// prompt/chosen/rejected.
    Pair,
    /// prompt/completion/label.
    Labeled,
}

impl RowShape {
    pub fn describe(self) -> &'static str {
        match self {
            RowShape::Single => "text, prompt/completion or messages rows",
            RowShape::Pair => "preference rows (prompt/chosen/rejected)",
            RowShape::Labeled => "labelled rows (prompt/completion/label)",
        }
    }
}

/// A row with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcedRow {
    pub line: usize,
    pub row: Row,
}

fn string(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("`{key}` must be a string, got {}", kind(other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// Checks a list of chat messages; `field` names it in errors.
fn messages(value: &Value, field: &str) -> Result<Vec<Value>, String> {
    let Value::Array(messages) = value else { return Err(format!("`{field}` must be a list of messages, got {}", kind(value))) };
    if messages.is_empty() {
        return Err(format!("`{field}` is empty"));
    }
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| format!("{field}[{i}] has no string `role`"))?;
        if !ROLES.contains(&role) {
            return Err(format!("{field}[{i}]: unknown role `{role}` (system, user, assistant, tool)"));
        }
        let has_content = matches!(m.get("content"), Some(Value::String(_)) | Some(Value::Array(_)));
        let has_calls = m.get("tool_calls").is_some();
        if !has_content && !has_calls {
            return Err(format!("{field}[{i}] has no `content`"));
        }
    }
    Ok(messages.clone())
}

fn role(m: &Value) -> &str {
    m.get("role").and_then(Value::as_str).unwrap_or("")
}

fn prompt(obj: &serde_json::Map<String, Value>) -> Result<Prompt, String> {
    match obj.get("prompt") {
        Some(Value::String(p)) => Ok(Prompt::Text { system: string(obj, "system")?, prompt: p.clone() }),
        Some(v @ Value::Array(_)) => {
            if obj.contains_key("system") {
                return Err("`system` goes with a plain-text `prompt`; put a system message in the `prompt` list".into());
            }
            Ok(Prompt::Messages(messages(v, "prompt")?))
        }
        Some(other) => Err(format!("`prompt` must be a string or a list of messages, got {}", kind(other))),
        None => Err("missing `prompt`".into()),
    }
}

fn reply(obj: &serde_json::Map<String, Value>, field: &str) -> Result<Reply, String> {
    match obj.get(field) {
        Some(Value::String(s)) if s.is_empty() => Err(format!("`{field}` is empty")),
        Some(Value::String(s)) => Ok(Reply::Text(s.clone())),
        Some(v @ Value::Array(_)) => {
            let m = messages(v, field)?;
            if role(&m[0]) != "assistant" {
                return Err(format!("`{field}` must start with an assistant message, not `{}`", role(&m[0])));
            }
            Ok(Reply::Messages(m))
        }
        Some(other) => Err(format!("`{field}` must be a string or a list of messages, got {}", kind(other))),
        None => Err(format!("missing `{field}`")),
    }
}

/// `chosen`/`rejected` as two whole conversations (TRL's implicit prompt): the prompt is the messages they
/// share; both must go on with an assistant turn.
fn implicit_pair(obj: &serde_json::Map<String, Value>) -> Result<Row, String> {
    let (Some(c), Some(r)) = (obj.get("chosen"), obj.get("rejected")) else { return Err("a `chosen` row needs `rejected`".into()) };
    if c.is_string() || r.is_string() {
        return Err("plain-text `chosen`/`rejected` need a `prompt`".into());
    }
    let (chosen, rejected) = (messages(c, "chosen")?, messages(r, "rejected")?);
    if chosen == rejected {
        return Err("`chosen` and `rejected` are the same conversation".into());
    }
    let split = chosen.iter().zip(&rejected).take_while(|(a, b)| a == b).count();
    let both_assistant = chosen.get(split).is_some_and(|m| role(m) == "assistant") && rejected.get(split).is_some_and(|m| role(m) == "assistant");
    if split == 0 || !both_assistant {
        return Err("`chosen` and `rejected` without a `prompt` must be conversations that share their prompt messages and then differ from an assistant turn on".into());
    }
    Ok(Row::Preference {
        prompt: Prompt::Messages(chosen[..split].to_vec()),
        chosen: Reply::Messages(chosen[split..].to_vec()),
        rejected: Reply::Messages(rejected[split..].to_vec()),
    })
}

/// A GRPO prompt row: `prompt` (a string, with optional `system`, or chat messages) and any other columns the
/// rewards read (such as `answer`).
pub fn parse_prompt_row(text: &str) -> Result<Prompt, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(obj) = value else { return Err(format!("a row must be a JSON object, got {}", kind(&value))) };
    if !obj.contains_key("prompt") {
        let keys: Vec<&String> = obj.keys().collect();
        return Err(format!("a prompt row needs `prompt` (keys here: {keys:?})"));
    }
    let p = prompt(&obj)?;
    if let Prompt::Text { prompt, .. } = &p {
        if prompt.is_empty() {
            return Err("`prompt` is empty".into());
        }
    }
    Ok(p)
}

pub fn parse_row(text: &str) -> Result<Row, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(obj) = value else { return Err(format!("a row must be a JSON object, got {}", kind(&value))) };
    if obj.contains_key("chosen") || obj.contains_key("rejected") {
        if !obj.contains_key("prompt") {
            return implicit_pair(&obj);
        }
        let row = Row::Preference { prompt: prompt(&obj)?, chosen: reply(&obj, "chosen")?, rejected: reply(&obj, "rejected")? };
        if let Row::Preference { chosen, rejected, .. } = &row {
            if chosen == rejected {
                return Err("`chosen` and `rejected` are the same".into());
            }
        }
        return Ok(row);
    }
    if let Some(label) = obj.get("label") {
        let Value::Bool(label) = label else { return Err(format!("`label` must be true (desirable) or false (undesirable), got {}", kind(label))) };
        return Ok(Row::Labeled { prompt: prompt(&obj)?, completion: reply(&obj, "completion")?, label: *label });
    }
    if let Some(list) = obj.get("messages") {
        let messages = messages(list, "messages")?;
        let tools = match obj.get("tools") {
            None | Some(Value::Null) => None,
            Some(Value::Array(t)) => Some(t.clone()),
            Some(other) => return Err(format!("`tools` must be a list, got {}", kind(other))),
        };
        return Ok(Row::Chat { messages, tools });
    }
    match (string(&obj, "prompt")?, string(&obj, "completion")?) {
        (Some(prompt), Some(completion)) => {
            if completion.is_empty() {
                return Err("`completion` is empty".into());
            }
            return Ok(Row::Completion { system: string(&obj, "system")?, prompt, completion });
        }
        (Some(_), None) => return Err("a `prompt` row needs a `completion`".into()),
        (None, Some(_)) => return Err("a `completion` row needs a `prompt`".into()),
        (None, None) => {}
    }
    match string(&obj, "text")? {
        Some(t) if !t.is_empty() => Ok(Row::Text(t)),
        Some(_) => Err("`text` is empty".into()),
        None => {
            let keys: Vec<&String> = obj.keys().collect();
            Err(format!("unknown row format with keys {keys:?}: expected text, prompt/completion or messages"))
        }
    }
}

/// Every row of a JSONL file (blank lines skipped). Bad rows are errors, or with `skip_bad` collected as
/// (line, message) and left out.
pub fn read_rows(path: &Path, skip_bad: bool) -> Result<(Vec<SourcedRow>, Vec<(usize, String)>), DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::File { path: path.to_owned(), message: e.to_string() })?;
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_row(line) {
            Ok(row) => rows.push(SourcedRow { line: i + 1, row }),
            Err(message) if skip_bad => bad.push((i + 1, message)),
            Err(message) => return Err(DataError::Row { path: PathBuf::from(path), line: i + 1, message }),
        }
    }
    if rows.is_empty() {
        return Err(DataError::File { path: path.to_owned(), message: "no usable rows".into() });
    }
    Ok((rows, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_their_errors() {
        assert_eq!(parse_row(r#"{"text": "hi"}"#), Ok(Row::Text("hi".into())));
        assert_eq!(
            parse_row(r#"{"prompt": "p", "completion": "c", "system": "s"}"#),
            Ok(Row::Completion { system: Some("s".into()), prompt: "p".into(), completion: "c".into() })
        );
        assert!(matches!(parse_row(r#"{"messages": [{"role": "user", "content": "x"}]}"#), Ok(Row::Chat { .. })));
        let err = |t: &str| parse_row(t).unwrap_err();
        assert!(err("{nope").starts_with("invalid JSON"));
        assert_eq!(err("[1]"), "a row must be a JSON object, got a list");
        assert_eq!(err(r#"{"prompt": "p"}"#), "a `prompt` row needs a `completion`");
        assert_eq!(err(r#"{"text": 3}"#), "`text` must be a string, got a number");
        assert_eq!(err(r#"{"messages": [{"role": "robot", "content": "x"}]}"#), "messages[0]: unknown role `robot` (system, user, assistant, tool)");
        assert_eq!(err(r#"{"messages": [{"role": "user"}]}"#), "messages[0] has no `content`");
        assert!(err(r#"{"input": "x"}"#).starts_with("unknown row format with keys [\"input\"]"));
    }

    #[test]
    fn preference_and_labelled_rows() {
        let text = |s: &str| Reply::Text(s.into());
        assert_eq!(
            parse_row(r#"{"prompt": "2+2?", "chosen": "4", "rejected": "5", "system": "be brief"}"#),
            Ok(Row::Preference { prompt: Prompt::Text { system: Some("be brief".into()), prompt: "2+2?".into() }, chosen: text("4"), rejected: text("5") })
        );
        let user = serde_json::json!({"role": "user", "content": "2+2?"});
        let said = |s: &str| serde_json::json!({"role": "assistant", "content": s});
        let conversational = parse_row(r#"{"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}"#);
        let expected = Row::Preference { prompt: Prompt::Messages(vec![user.clone()]), chosen: Reply::Messages(vec![said("4")]), rejected: Reply::Messages(vec![said("5")]) };
        assert_eq!(conversational, Ok(expected.clone()));
        // TRL's implicit prompt: whole conversations that share the prompt.
        let implicit = parse_row(r#"{"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]}"#);
        assert_eq!(implicit, Ok(expected));
        assert_eq!(
            parse_row(r#"{"prompt": "2+2?", "completion": "4", "label": true}"#),
            Ok(Row::Labeled { prompt: Prompt::Text { system: None, prompt: "2+2?".into() }, completion: text("4"), label: true })
        );
        let err = |t: &str| parse_row(t).unwrap_err();
        assert_eq!(err(r#"{"prompt": "p", "chosen": "a"}"#), "missing `rejected`");
        assert_eq!(err(r#"{"prompt": "p", "chosen": "a", "rejected": "a"}"#), "`chosen` and `rejected` are the same");
        assert_eq!(err(r#"{"prompt": "p", "chosen": "", "rejected": "a"}"#), "`chosen` is empty");
        assert_eq!(err(r#"{"prompt": 3, "chosen": "a", "rejected": "b"}"#), "`prompt` must be a string or a list of messages, got a number");
        assert_eq!(err(r#"{"prompt": "p", "completion": "c", "label": 1}"#), "`label` must be true (desirable) or false (undesirable), got a number");
        assert_eq!(err(r#"{"prompt": "p", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"}"#), "`chosen` must start with an assistant message, not `user`");
        assert!(err(r#"{"chosen": "a", "rejected": "b"}"#).contains("need a `prompt`"));
    }
}
