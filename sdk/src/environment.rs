//! Environments for multi-turn GRPO: after each assistant turn an environment sees the conversation and
//! answers with tool messages (generation continues after them) or ends the episode, with or without a reward.
//!
//! The host owns the model and its KV cache: it parses the tool calls in the model family's format, renders
//! the environment's messages through the chat template, appends them to the cache and never trains on them.
//! Turns cross as JSON (the same objects a child process receives, see `plugins/command`), so an environment
//! in a cdylib or another process sees exactly what a built-in one sees.

use serde_json::{json, Value};

use crate::PluginError;

/// One episode after an assistant turn.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvTurn {
    /// The dataset row, a JSON object (columns such as `answer`).
    pub row: Value,
    /// The conversation so far as chat messages (`role`, `content`); the assistant turns carry their parsed
    /// calls as `tool_calls` (OpenAI's form, `{"type": "function", "function": {"name", "arguments"}}`), the
    /// latest assistant turn is last.
    pub messages: Vec<Value>,
    /// Assistant turns so far (1 after the first).
    pub turn: u32,
    /// The episode cannot continue (the turn limit, the token budget, or a turn cut off by `max_tokens`): any
    /// messages returned are not used, only `Done`'s reward.
    pub last: bool,
}

/// What an environment answers for one episode.
#[derive(Debug, Clone, PartialEq)]
pub enum EnvReply {
    /// Tool messages to append (each one's `content`, in the order of the calls); the model continues.
    Observe(Vec<String>),
    /// The episode is over, with the environment's reward (`None`: the environment does not score it; the
    /// `[[reward]]` functions still do).
    Done(Option<f64>),
}

pub trait Environment {
    /// The tools offered to the model, as OpenAI function schemas (`{"type": "function", "function": {"name",
    /// "description", "parameters"}}`), rendered through the chat template's `tools`.
    fn tools(&mut self) -> Result<Vec<Value>, PluginError>;
    /// One reply per turn, in order.
    fn step(&mut self, turns: &[EnvTurn]) -> Result<Vec<EnvReply>, PluginError>;
}

impl EnvTurn {
    /// The turn as it crosses to a cdylib or a child process.
    pub fn to_json(&self) -> Value {
        json!({"row": self.row, "messages": self.messages, "turn": self.turn, "last": self.last})
    }

    pub fn from_json(v: &Value) -> Result<EnvTurn, PluginError> {
        let bad = |what: &str| PluginError::Invalid(format!("an environment turn has no valid `{what}`"));
        Ok(EnvTurn {
            row: v.get("row").cloned().ok_or_else(|| bad("row"))?,
            messages: v.get("messages").and_then(Value::as_array).cloned().ok_or_else(|| bad("messages"))?,
            turn: v.get("turn").and_then(Value::as_u64).and_then(|t| u32::try_from(t).ok()).ok_or_else(|| bad("turn"))?,
            last: v.get("last").and_then(Value::as_bool).ok_or_else(|| bad("last"))?,
        })
    }
}

impl EnvReply {
    /// `{"observations": ["..."]}` or `{"done": true, "reward": 1.0 | null}`.
    pub fn to_json(&self) -> Value {
        match self {
            EnvReply::Observe(messages) => json!({"observations": messages}),
            EnvReply::Done(reward) => json!({"done": true, "reward": reward}),
        }
    }

    /// Reads a reply; anything else (a missing key, a non-string observation, a reward that is not a finite
    /// number or null) is an error saying what was wrong.
    pub fn from_json(v: &Value) -> Result<EnvReply, PluginError> {
        let invalid = |m: String| PluginError::Invalid(m);
        let short = |v: &Value| {
            let t = v.to_string();
            if t.len() > 120 { format!("{}…", &t[..t.char_indices().nth(120).map_or(t.len(), |(i, _)| i)]) } else { t }
        };
        let Some(object) = v.as_object() else {
            return Err(invalid(format!("a reply is {}, not an object", short(v))));
        };
        match (object.get("observations"), object.get("done")) {
            (Some(Value::Array(list)), None) => list
                .iter()
                .enumerate()
                .map(|(i, m)| m.as_str().map(str::to_owned).ok_or_else(|| invalid(format!("observation {i} is {}, not a string", short(m)))))
                .collect::<Result<Vec<String>, PluginError>>()
                .and_then(|list| if list.is_empty() { Err(invalid("a reply has an empty `observations` list; end the episode with {\"done\": true} instead".into())) } else { Ok(EnvReply::Observe(list)) }),
            (Some(other), None) => Err(invalid(format!("`observations` is {}, not a list of strings", short(other)))),
            (None, Some(Value::Bool(true))) => match object.get("reward") {
                None | Some(Value::Null) => Ok(EnvReply::Done(None)),
                Some(Value::Number(n)) => {
                    n.as_f64().filter(|x| x.is_finite()).map(|x| EnvReply::Done(Some(x))).ok_or_else(|| invalid(format!("reward {n} is not a finite number")))
                }
                Some(other) => Err(invalid(format!("reward is {}, not a number or null", short(other)))),
            },
            (None, Some(other)) => Err(invalid(format!("`done` is {}; it is `true` when present", short(other)))),
            (Some(_), Some(_)) => Err(invalid("a reply has both `observations` and `done`".into())),
            (None, None) => Err(invalid(format!("a reply {} has neither `observations` nor `done`", short(v)))),
        }
    }
}

/// Replies from a JSON list, one per turn.
pub fn replies_from_json(v: &Value, expected: usize) -> Result<Vec<EnvReply>, PluginError> {
    let list = v.as_array().ok_or_else(|| PluginError::Invalid("the replies are not a list".into()))?;
    if list.len() != expected {
        return Err(PluginError::Invalid(format!("returned {} replies for {expected} turns", list.len())));
    }
    list.iter().map(EnvReply::from_json).collect()
}

/// Tool schemas from a JSON list of objects.
pub fn tools_from_json(v: &Value) -> Result<Vec<Value>, PluginError> {
    let list = v.as_array().ok_or_else(|| PluginError::Invalid("the tools are not a list".into()))?;
    if let Some((i, _)) = list.iter().enumerate().find(|(_, t)| !t.is_object()) {
        return Err(PluginError::Invalid(format!("tool {i} is not an object (an OpenAI function schema)")));
    }
    Ok(list.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_and_bad_ones_say_why() {
        for r in [EnvReply::Observe(vec!["4".into(), "x".into()]), EnvReply::Done(Some(0.5)), EnvReply::Done(None)] {
            assert_eq!(EnvReply::from_json(&r.to_json()).unwrap(), r);
        }
        let err = |v: Value| EnvReply::from_json(&v).unwrap_err().to_string();
        assert!(err(json!({"observations": [1]})).contains("observation 0 is 1"));
        assert!(err(json!({"observations": []})).contains("empty"));
        assert!(err(json!({"done": true, "reward": "1"})).contains("not a number or null"));
        assert!(err(json!({"done": false})).contains("`done` is false"));
        assert!(err(json!({"x": 1})).contains("neither"));
        assert!(err(json!([1])).contains("not an object"));
        assert!(replies_from_json(&json!([{"done": true}]), 2).unwrap_err().to_string().contains("1 replies for 2 turns"));
        let t = EnvTurn { row: json!({"a": 1}), messages: vec![json!({"role": "user", "content": "hi"})], turn: 2, last: true };
        assert_eq!(EnvTurn::from_json(&t.to_json()).unwrap(), t);
    }
}
