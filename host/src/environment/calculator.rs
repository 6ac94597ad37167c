//! `calculator`: the built-in tool environment. The model may call `calculator` with an arithmetic
//! `expression` (evaluated by `tools::calculator`, bounded and total) and gets the value back as a tool message;
//! a turn without a call is its answer, rewarded `correct` when its last number equals the row's `answer`
//! column and `wrong` otherwise. An episode that ends without an answer (turns or tokens ran out) gets
//! `no_answer`.

use sdk::{from_table, register_environment, EnvReply, EnvTurn, Environment, Plugin, PluginError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::tools::calculator;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "Settings::column")]
    column: String,
    #[serde(default = "Settings::one")]
    correct: f64,
    #[serde(default)]
    wrong: f64,
    #[serde(default)]
    no_answer: f64,
}

impl Settings {
    fn column() -> String {
        "answer".into()
    }
    fn one() -> f64 {
        1.0
    }
}

pub struct Calculator {
    settings: Settings,
}

impl Plugin for Calculator {
    const NAME: &'static str = "calculator";
    const SUMMARY: &'static str = "a calculator tool; rewards an answer whose last number equals the row's `answer`";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let settings: Settings = from_table(config)?;
        for (key, v) in [("correct", settings.correct), ("wrong", settings.wrong), ("no_answer", settings.no_answer)] {
            if !v.is_finite() {
                return Err(PluginError::Config(format!("`{key}` must be a finite number")));
            }
        }
        Ok(Calculator { settings })
    }
}

/// The schema the model sees, in OpenAI's function form.
pub fn schema() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluates arithmetic: + - * / % ^ and parentheses.",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}
        }
    })
}

/// The tool's reply to one call: the value, or an error the model can read.
pub fn answer_call(call: &Value) -> String {
    let function = call.get("function").unwrap_or(call);
    let name = function.get("name").and_then(Value::as_str).unwrap_or("");
    if name != "calculator" {
        return format!("error: there is no tool `{name}`; the only tool is `calculator`");
    }
    match function.get("arguments").and_then(|a| a.get("expression")).and_then(Value::as_str) {
        Some(expression) => match calculator::evaluate(expression) {
            Ok(v) => calculator::format(v),
            Err(e) => format!("error: {e}"),
        },
        None => "error: `calculator` takes {\"expression\": \"...\"}".into(),
    }
}

/// The last number written in `text` (digits with an optional sign and decimal point; commas ignored).
pub fn last_number(text: &str) -> Option<f64> {
    let cleaned: String = text.chars().filter(|&c| c != ',').collect();
    let bytes = cleaned.as_bytes();
    let mut end = bytes.len();
    while end > 0 && !bytes[end - 1].is_ascii_digit() {
        end -= 1;
    }
    if end == 0 {
        return None;
    }
    let mut start = end;
    while start > 0 && (bytes[start - 1].is_ascii_digit() || bytes[start - 1] == b'.') {
        start -= 1;
    }
    if start > 0 && bytes[start - 1] == b'-' {
        start -= 1;
    }
    cleaned[start..end].trim_start_matches('.').parse::<f64>().ok()
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().replace(',', "").parse::<f64>().ok(),
        _ => None,
    }
}

impl Calculator {
    fn reply(&self, turn: &EnvTurn) -> Result<EnvReply, PluginError> {
        let s = &self.settings;
        let last = turn.messages.last().ok_or_else(|| PluginError::Invalid("an episode without messages".into()))?;
        let calls = last.get("tool_calls").and_then(Value::as_array).filter(|c| !c.is_empty());
        match calls {
            Some(_) if turn.last => Ok(EnvReply::Done(Some(s.no_answer))),
            Some(calls) => Ok(EnvReply::Observe(calls.iter().map(answer_call).collect())),
            None if last.get("role").and_then(Value::as_str) != Some("assistant") => Ok(EnvReply::Done(Some(s.no_answer))),
            None => {
                let want = turn.row.get(&s.column).and_then(number).ok_or_else(|| {
                    PluginError::Invalid(format!("the row has no number in column `{}` (the calculator environment's `column`)", s.column))
                })?;
                let got = last.get("content").and_then(Value::as_str).and_then(last_number);
                let right = got.is_some_and(|g| (g - want).abs() <= 1e-9 * want.abs().max(1.0));
                Ok(EnvReply::Done(Some(if right { s.correct } else { s.wrong })))
            }
        }
    }
}

impl Environment for Calculator {
    fn tools(&mut self) -> Result<Vec<Value>, PluginError> {
        Ok(vec![schema()])
    }

    fn step(&mut self, turns: &[EnvTurn]) -> Result<Vec<EnvReply>, PluginError> {
        turns.iter().map(|t| self.reply(t)).collect()
    }
}

register_environment!(Calculator);

/// Keeps this file's registration in the binary (inventory collects only what is linked).
#[inline(never)]
pub fn keep_linked() {
    std::hint::black_box(Calculator::NAME);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(messages: Vec<Value>, last: bool) -> EnvTurn {
        EnvTurn { row: json!({"answer": "42"}), messages, turn: 1, last }
    }

    fn call(expression: &str) -> Value {
        json!({"type": "function", "function": {"name": "calculator", "arguments": {"expression": expression}}})
    }

    #[test]
    fn calls_are_evaluated_and_answers_rewarded() {
        let mut env = Calculator::from_config(&sdk::toml::Table::new()).unwrap();
        let asked = json!({"role": "assistant", "content": "<tool_call>…</tool_call>", "tool_calls": [call("6 * 7"), call("1/0"), json!({"type": "function", "function": {"name": "search", "arguments": {}}})]});
        let replies = env.step(&[turn(vec![asked.clone()], false)]).unwrap();
        let EnvReply::Observe(obs) = &replies[0] else { panic!("{replies:?}") };
        assert_eq!(obs[0], "42");
        assert!(obs[1].starts_with("error:"), "{}", obs[1]);
        assert!(obs[2].contains("no tool `search`"), "{}", obs[2]);
        // A call on the last turn: no answer.
        assert_eq!(env.step(&[turn(vec![asked], true)]).unwrap(), vec![EnvReply::Done(Some(0.0))]);
        let answer = |text: &str| turn(vec![json!({"role": "assistant", "content": text})], false);
        assert_eq!(env.step(&[answer("The answer is 42."), answer("The answer is 41.")]).unwrap(), vec![EnvReply::Done(Some(1.0)), EnvReply::Done(Some(0.0))]);
        let mut bad = answer("42");
        bad.row = json!({"solution": 42});
        assert!(env.step(&[bad]).unwrap_err().to_string().contains("column `answer`"));
    }

    #[test]
    fn the_last_number_is_the_answer() {
        assert_eq!(last_number("3 + 4 is 7."), Some(7.0));
        assert_eq!(last_number("it is -12.5!"), Some(-12.5));
        assert_eq!(last_number("1,234"), Some(1234.0));
        assert_eq!(last_number("none"), None);
    }
}
