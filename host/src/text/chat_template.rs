//! Chat templates rendered with Hugging Face's semantics: Jinja with `trim_blocks` and `lstrip_blocks`, the
//! variables `messages`, `tools`, `add_generation_prompt`, `bos_token`, `eos_token` (and the other special
//! tokens), plus `raise_exception` and `strftime_now`; Python string methods (`.strip()`, `.startswith()`...)
//! through minijinja's pycompat layer.

use minijinja::{Environment, Error, ErrorKind};
use serde_json::Value;

pub struct ChatTemplate {
    env: Environment<'static>,
    /// Special-token strings offered to the template by name (`bos_token`, `eos_token`, `pad_token` ...).
    special_tokens: Vec<(String, String)>,
}

impl ChatTemplate {
    pub fn new(source: String, special_tokens: Vec<(String, String)>) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", |format: String| -> String {
            strftime_now(&format)
        });
        env.add_template_owned("chat", source).map_err(|e| format!("invalid chat template: {e}"))?;
        Ok(ChatTemplate { env, special_tokens })
    }

    /// Renders `messages` (a list of `{role, content, ...}` objects) with optional `tools`.
    pub fn render(&self, messages: &[Value], tools: Option<&[Value]>, add_generation_prompt: bool) -> Result<String, String> {
        let mut ctx = serde_json::Map::new();
        ctx.insert("messages".into(), Value::Array(messages.to_vec()));
        ctx.insert("add_generation_prompt".into(), Value::Bool(add_generation_prompt));
        if let Some(tools) = tools {
            ctx.insert("tools".into(), Value::Array(tools.to_vec()));
        }
        for (name, token) in &self.special_tokens {
            ctx.insert(name.clone(), Value::String(token.clone()));
        }
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template.render(Value::Object(ctx)).map_err(|e| {
            let mut message = format!("chat template: {e}");
            if let Some(detail) = e.detail() {
                message = format!("{message} ({detail})");
            }
            message
        })
    }
}

/// Today's date in the few strftime fields chat templates use (%d %b %B %Y %m), in UTC.
fn strftime_now(format: &str) -> String {
    let days = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const NAMES: [&str; 12] =
        ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    let name = NAMES[(month - 1) as usize];
    format
        .replace("%d", &format!("{day:02}"))
        .replace("%m", &format!("{month:02}"))
        .replace("%Y", &year.to_string())
        .replace("%B", name)
        .replace("%b", &name[..3])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tokens() -> Vec<(String, String)> {
        vec![("bos_token".into(), "<s>".into()), ("eos_token".into(), "</s>".into())]
    }

    #[test]
    fn renders_with_hf_whitespace_rules_and_generation_prompt() {
        // trim_blocks drops the newline after a block tag, lstrip_blocks the indentation before one; text and
        // variable tags keep theirs.
        let source = "{{ bos_token }}\n{% for m in messages %}\n    {% if m.role == 'user' %}\n<u>{{ m.content | trim }}\n    {% else %}\n<a>{{ m.content }}\n    {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}<a>{% endif %}";
        let t = ChatTemplate::new(source.into(), tokens()).unwrap();
        let messages = [json!({"role": "user", "content": " hi "}), json!({"role": "assistant", "content": "yo"})];
        assert_eq!(t.render(&messages, None, true).unwrap(), "<s>\n<u>hi\n<a>yo\n<a>");
        assert_eq!(t.render(&messages, None, false).unwrap(), "<s>\n<u>hi\n<a>yo\n");
    }

    #[test]
    fn python_string_methods_tools_and_raise_exception() {
        let source = "{% if tools %}{% for t in tools %}{{ t | tojson }};{% endfor %}{% endif %}{% for m in messages %}{% if m.content.startswith('!') %}{{ raise_exception('no bangs') }}{% endif %}{{ m.content.upper() }}{% endfor %}";
        let t = ChatTemplate::new(source.into(), tokens()).unwrap();
        let tools = [json!({"name": "add", "parameters": {"a": 1}})];
        let rendered = t.render(&[json!({"role": "user", "content": "go"})], Some(&tools), false).unwrap();
        assert_eq!(rendered, "{\"name\":\"add\",\"parameters\":{\"a\":1}};GO");
        let err = t.render(&[json!({"role": "user", "content": "!x"})], None, false).unwrap_err();
        assert!(err.contains("no bangs"), "{err}");
    }

    #[test]
    fn strftime_now_fills_the_date_fields() {
        let s = strftime_now("%d %b %Y");
        assert_eq!(s.len(), 11, "{s}");
        assert!(s[7..].parse::<i32>().unwrap() >= 2024);
    }
}
