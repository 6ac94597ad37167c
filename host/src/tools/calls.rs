//! Tool calls in an assistant turn, in the format each model family was trained to emit:
//! - `hermes` (Qwen2.5, Qwen3, Qwen3-MoE and most Hermes-style templates): one or more
//!   `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks;
//! - `llama3_json` (Llama 3.1-3.3 JSON tool calling): the turn is one JSON object `{"name": ..., "parameters":
//!   {...}}` (or `"arguments"`), optionally after `<|python_tag|>`;
//! - `mistral` (Mistral and Mixtral instruct v3+): `[TOOL_CALLS]` followed by a JSON list of
//!   `{"name": ..., "arguments": {...}}`, or the v11 form `[TOOL_CALLS]name[ARGS]{...}`.
//!
//! A turn with no call marker is a final answer; a turn with a marker whose payload does not parse is
//! malformed, with the reason (the caller turns it into a "malformed call" observation, never a silent zero).

use serde_json::Value;

/// One call: the tool's name and its arguments (a JSON object).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

/// What an assistant turn holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// No tool call: the turn is the model's answer.
    Answer,
    Calls(Vec<ToolCall>),
    /// A call marker whose payload is not a well-formed call; the reason says what is wrong.
    Malformed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFormat {
    Hermes,
    Llama3Json,
    Mistral,
}

impl CallFormat {
    pub fn parse_name(name: &str) -> Option<CallFormat> {
        match name {
            "hermes" => Some(CallFormat::Hermes),
            "llama3_json" => Some(CallFormat::Llama3Json),
            "mistral" => Some(CallFormat::Mistral),
            _ => None,
        }
    }

    /// The format a `model_type` emits (None: the family has no tool-call format we know of).
    pub fn of_model_type(model_type: &str) -> Option<CallFormat> {
        match model_type {
            "qwen2" | "qwen3" | "qwen3_moe" | "smollm3" => Some(CallFormat::Hermes),
            "llama" => Some(CallFormat::Llama3Json),
            "mistral" | "mixtral" => Some(CallFormat::Mistral),
            _ => None,
        }
    }

    pub fn parse(self, text: &str) -> Parsed {
        match self {
            CallFormat::Hermes => hermes(text),
            CallFormat::Llama3Json => llama3_json(text),
            CallFormat::Mistral => mistral(text),
        }
    }
}

/// A call object: `name` a non-empty string, arguments under `key` (or `alt`) an object (absent: `{}`).
fn call_of(v: &Value, key: &str, alt: &str) -> Result<ToolCall, String> {
    let obj = v.as_object().ok_or_else(|| format!("a call is {v}, not a JSON object"))?;
    let name = obj.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()).ok_or("a call without a `name` string")?;
    let arguments = match obj.get(key).or_else(|| obj.get(alt)) {
        None => Value::Object(Default::default()),
        // Some templates emit the arguments as a JSON string.
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).map_err(|e| format!("`{name}`: arguments are a string that is not JSON: {e}"))?,
        Some(v) => v.clone(),
    };
    if !arguments.is_object() {
        return Err(format!("`{name}`: arguments are {arguments}, not a JSON object"));
    }
    Ok(ToolCall { name: name.to_owned(), arguments })
}

fn hermes(text: &str) -> Parsed {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    if !text.contains(OPEN) {
        return Parsed::Answer;
    }
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find(CLOSE) else {
            return Parsed::Malformed("`<tool_call>` without `</tool_call>`".into());
        };
        let payload = after[..end].trim();
        match serde_json::from_str::<Value>(payload).map_err(|e| format!("the call is not JSON ({e}): {payload:?}")).and_then(|v| call_of(&v, "arguments", "parameters")) {
            Ok(call) => calls.push(call),
            Err(e) => return Parsed::Malformed(e),
        }
        rest = &after[end + CLOSE.len()..];
    }
    Parsed::Calls(calls)
}

fn llama3_json(text: &str) -> Parsed {
    let t = text.trim();
    let t = t.strip_prefix("<|python_tag|>").unwrap_or(t).trim();
    if !t.starts_with('{') {
        return Parsed::Answer;
    }
    // Several calls may follow each other, `;`-separated (Llama 3.2's template allows it).
    let mut calls = Vec::new();
    let mut rest = t;
    while !rest.is_empty() {
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        match stream.next() {
            Some(Ok(v)) => match call_of(&v, "parameters", "arguments") {
                Ok(c) => calls.push(c),
                Err(e) => return Parsed::Malformed(e),
            },
            Some(Err(e)) => return Parsed::Malformed(format!("the call is not JSON ({e})")),
            None => break,
        }
        rest = rest[stream.byte_offset()..].trim_start_matches(|c: char| c == ';' || c.is_whitespace());
    }
    Parsed::Calls(calls)
}

fn mistral(text: &str) -> Parsed {
    const MARK: &str = "[TOOL_CALLS]";
    let Some(at) = text.find(MARK) else { return Parsed::Answer };
    let payload = text[at + MARK.len()..].trim();
    if let Some((name, args)) = payload.split_once("[ARGS]") {
        let arguments = match serde_json::from_str::<Value>(args.trim()) {
            Ok(v) if v.is_object() => v,
            Ok(v) => return Parsed::Malformed(format!("`{}`: arguments are {v}, not a JSON object", name.trim())),
            Err(e) => return Parsed::Malformed(format!("`{}`: arguments are not JSON ({e})", name.trim())),
        };
        let name = name.trim();
        if name.is_empty() {
            return Parsed::Malformed("a call without a name before `[ARGS]`".into());
        }
        return Parsed::Calls(vec![ToolCall { name: name.to_owned(), arguments }]);
    }
    match serde_json::from_str::<Value>(payload) {
        Ok(Value::Array(items)) if !items.is_empty() => match items.iter().map(|v| call_of(v, "arguments", "parameters")).collect::<Result<Vec<_>, _>>() {
            Ok(calls) => Parsed::Calls(calls),
            Err(e) => Parsed::Malformed(e),
        },
        Ok(v) => Parsed::Malformed(format!("`[TOOL_CALLS]` is followed by {v}, not a non-empty list of calls")),
        Err(e) => Parsed::Malformed(format!("`[TOOL_CALLS]` is not followed by JSON ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn call(name: &str, arguments: Value) -> ToolCall {
        ToolCall { name: name.into(), arguments }
    }

    #[test]
    fn hermes_blocks_one_or_many() {
        let one = "Let me compute.\n<tool_call>\n{\"name\": \"calculator\", \"arguments\": {\"expression\": \"2+3\"}}\n</tool_call>";
        assert_eq!(CallFormat::Hermes.parse(one), Parsed::Calls(vec![call("calculator", json!({"expression": "2+3"}))]));
        let two = "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"b\", \"arguments\": \"{\\\"x\\\": 1}\"}</tool_call>";
        assert_eq!(CallFormat::Hermes.parse(two), Parsed::Calls(vec![call("a", json!({})), call("b", json!({"x": 1}))]));
        assert_eq!(CallFormat::Hermes.parse("The answer is 5."), Parsed::Answer);
        let unclosed = CallFormat::Hermes.parse("<tool_call>{\"name\": \"a\"");
        assert!(matches!(&unclosed, Parsed::Malformed(m) if m.contains("without `</tool_call>`")), "{unclosed:?}");
        let bad = CallFormat::Hermes.parse("<tool_call>{name: a}</tool_call>");
        assert!(matches!(&bad, Parsed::Malformed(m) if m.contains("not JSON")), "{bad:?}");
        let nameless = CallFormat::Hermes.parse("<tool_call>{\"arguments\": {}}</tool_call>");
        assert!(matches!(&nameless, Parsed::Malformed(m) if m.contains("without a `name`")), "{nameless:?}");
        let array_args = CallFormat::Hermes.parse("<tool_call>{\"name\": \"a\", \"arguments\": [1]}</tool_call>");
        assert!(matches!(&array_args, Parsed::Malformed(m) if m.contains("not a JSON object")), "{array_args:?}");
    }

    #[test]
    fn llama3_json_objects_with_parameters() {
        let t = "{\"name\": \"calculator\", \"parameters\": {\"expression\": \"7*6\"}}";
        assert_eq!(CallFormat::Llama3Json.parse(t), Parsed::Calls(vec![call("calculator", json!({"expression": "7*6"}))]));
        let tagged = "<|python_tag|>{\"name\": \"f\", \"arguments\": {\"a\": 1}}";
        assert_eq!(CallFormat::Llama3Json.parse(tagged), Parsed::Calls(vec![call("f", json!({"a": 1}))]));
        let two = "{\"name\": \"f\", \"parameters\": {}}; {\"name\": \"g\", \"parameters\": {\"b\": 2}}";
        assert_eq!(CallFormat::Llama3Json.parse(two), Parsed::Calls(vec![call("f", json!({})), call("g", json!({"b": 2}))]));
        assert_eq!(CallFormat::Llama3Json.parse("It is 42."), Parsed::Answer);
        assert!(matches!(CallFormat::Llama3Json.parse("{\"name\": \"f\", \"parameters\": "), Parsed::Malformed(_)));
    }

    #[test]
    fn mistral_lists_and_the_args_form() {
        let t = "[TOOL_CALLS][{\"name\": \"calculator\", \"arguments\": {\"expression\": \"1+1\"}}]";
        assert_eq!(CallFormat::Mistral.parse(t), Parsed::Calls(vec![call("calculator", json!({"expression": "1+1"}))]));
        let v11 = "[TOOL_CALLS]calculator[ARGS]{\"expression\": \"9-4\"}";
        assert_eq!(CallFormat::Mistral.parse(v11), Parsed::Calls(vec![call("calculator", json!({"expression": "9-4"}))]));
        assert_eq!(CallFormat::Mistral.parse("Two."), Parsed::Answer);
        assert!(matches!(CallFormat::Mistral.parse("[TOOL_CALLS][]"), Parsed::Malformed(m) if m.contains("non-empty list")));
        assert!(matches!(CallFormat::Mistral.parse("[TOOL_CALLS]f[ARGS]nope"), Parsed::Malformed(m) if m.contains("not JSON")));
    }

    #[test]
    fn each_tool_family_has_its_format() {
        assert_eq!(CallFormat::of_model_type("qwen3_moe"), Some(CallFormat::Hermes));
        assert_eq!(CallFormat::of_model_type("llama"), Some(CallFormat::Llama3Json));
        assert_eq!(CallFormat::of_model_type("mixtral"), Some(CallFormat::Mistral));
        assert_eq!(CallFormat::of_model_type("gemma2"), None);
        assert_eq!(CallFormat::parse_name("hermes"), Some(CallFormat::Hermes));
    }
}
