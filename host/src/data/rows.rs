//! JSONL rows in the formats mlx-lm and TRL read: `{"text"}`, `{"prompt", "completion"}` (optional
//! `"system"`), `{"messages", "tools"?}`. A malformed row is an error naming its file and line.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::DataError;

#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Text(String),
    Completion { system: Option<String>, prompt: String, completion: String },
    Chat { messages: Vec<Value>, tools: Option<Vec<Value>> },
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

pub fn parse_row(text: &str) -> Result<Row, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(obj) = value else { return Err(format!("a row must be a JSON object, got {}", kind(&value))) };
    if let Some(messages) = obj.get("messages") {
        let Value::Array(messages) = messages else { return Err(format!("`messages` must be a list, got {}", kind(messages))) };
        if messages.is_empty() {
            return Err("`messages` is empty".into());
        }
        for (i, m) in messages.iter().enumerate() {
            let role = m.get("role").and_then(Value::as_str).ok_or_else(|| format!("messages[{i}] has no string `role`"))?;
            if !ROLES.contains(&role) {
                return Err(format!("messages[{i}]: unknown role `{role}` (system, user, assistant, tool)"));
            }
            let has_content = matches!(m.get("content"), Some(Value::String(_)) | Some(Value::Array(_)));
            let has_calls = m.get("tool_calls").is_some();
            if !has_content && !has_calls {
                return Err(format!("messages[{i}] has no `content`"));
            }
        }
        let tools = match obj.get("tools") {
            None | Some(Value::Null) => None,
            Some(Value::Array(t)) => Some(t.clone()),
            Some(other) => return Err(format!("`tools` must be a list, got {}", kind(other))),
        };
        return Ok(Row::Chat { messages: messages.clone(), tools });
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
}
