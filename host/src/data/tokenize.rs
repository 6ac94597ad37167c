//! Rows to token ids with a per-token supervision mask, following each format's conventions (mlx-lm's and
//! TRL's): text gets EOS appended; prompt/completion pairs and conversations are rendered with the chat
//! template; supervised spans are found as byte ranges of the rendered text, so a BPE merge across a span
//! boundary cannot shift them.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::rows::Row;
use crate::text::TextTokenizer;

/// Which tokens the loss sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Masking {
    /// Every token.
    None,
    /// The completion only (the last assistant turn of a conversation).
    Prompt,
    /// Every assistant turn of a conversation (the completion of a prompt/completion row).
    Assistant,
}

/// A tokenized row: `supervised[i]` says whether token i is a target of the loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub supervised: Vec<bool>,
    pub truncated: bool,
}

impl Example {
    /// Supervised targets: token i counts when predicted from tokens before it (so never token 0).
    pub fn supervised_targets(&self) -> usize {
        self.supervised.iter().skip(1).filter(|&&s| s).count()
    }
}

fn append_eos(tokens: &mut Vec<u32>, supervised: &mut Vec<bool>, eos: Option<u32>, mark: bool) {
    if let Some(eos) = eos {
        if tokens.last() != Some(&eos) {
            tokens.push(eos);
            supervised.push(mark);
        }
    }
}

/// Renders `messages[..end]` and checks it is where the whole conversation's text begins.
fn prefix_len(t: &TextTokenizer, messages: &[Value], tools: Option<&[Value]>, end: usize, generation_prompt: bool, full: &str) -> Result<usize, String> {
    let prefix = t.render_chat(&messages[..end], tools, generation_prompt)?;
    if !full.starts_with(&prefix) {
        return Err(format!(
            "the chat template renders the first {end} messages differently from the start of the whole conversation, \
             so the assistant turns cannot be located; use mask = \"none\""
        ));
    }
    Ok(prefix.len())
}

/// Tokens of a rendered conversation; tokens starting inside a span are supervised.
fn tokenize_spans(t: &TextTokenizer, text: &str, spans: &[(usize, usize)]) -> Result<(Vec<u32>, Vec<bool>), String> {
    let (tokens, offsets) = t.encode_with_offsets(text)?;
    let supervised = offsets.iter().map(|&(start, _)| spans.iter().any(|&(s, e)| start >= s && start < e)).collect();
    Ok((tokens, supervised))
}

fn chat(t: &TextTokenizer, messages: &[Value], tools: Option<&[Value]>, masking: Masking) -> Result<(Vec<u32>, Vec<bool>), String> {
    if !t.has_chat_template() {
        return Err("conversation rows need a model with a chat template".into());
    }
    let full = t.render_chat(messages, tools, false)?;
    let role = |i: usize| messages[i].get("role").and_then(Value::as_str).unwrap_or("");
    let spans = match masking {
        Masking::None => vec![(0, full.len())],
        Masking::Prompt => {
            let last = messages.len() - 1;
            if role(last) != "assistant" {
                return Err("mask = \"prompt\" needs the conversation to end with an assistant message".into());
            }
            vec![(prefix_len(t, messages, tools, last, true, &full)?, full.len())]
        }
        Masking::Assistant => {
            let mut spans = Vec::new();
            for i in (0..messages.len()).filter(|&i| role(i) == "assistant") {
                let start = prefix_len(t, messages, tools, i, true, &full)?;
                let end = prefix_len(t, messages, tools, i + 1, false, &full)?;
                spans.push((start, end));
            }
            if spans.is_empty() {
                return Err("mask = \"assistant\" needs at least one assistant message".into());
            }
            spans
        }
    };
    tokenize_spans(t, &full, &spans)
}

pub fn tokenize(row: &Row, t: &TextTokenizer, masking: Masking, max_len: usize) -> Result<Example, String> {
    let (mut tokens, mut supervised) = match row {
        Row::Text(text) => {
            if masking != Masking::None {
                return Err(format!("mask = \"{}\" needs prompt/completion or messages rows, not text", serde_json::to_value(masking).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()));
            }
            let mut tokens = t.encode(text, true)?;
            let mut supervised = vec![true; tokens.len()];
            append_eos(&mut tokens, &mut supervised, t.eos_id, true);
            (tokens, supervised)
        }
        Row::Completion { system, prompt, completion } if t.has_chat_template() => {
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(json!({"role": "system", "content": s}));
            }
            messages.push(json!({"role": "user", "content": prompt}));
            messages.push(json!({"role": "assistant", "content": completion}));
            chat(t, &messages, None, if masking == Masking::None { Masking::None } else { Masking::Prompt })?
        }
        Row::Completion { system, prompt, completion } => {
            // No template: the plain concatenation, as mlx-lm does for models without one.
            let head = match system {
                Some(s) => format!("{s}\n{prompt}"),
                None => prompt.clone(),
            };
            let mut tokens = t.encode(&head, true)?;
            let mut supervised = vec![masking == Masking::None; tokens.len()];
            let tail = t.encode(completion, false)?;
            supervised.extend(std::iter::repeat_n(true, tail.len()));
            tokens.extend(tail);
            append_eos(&mut tokens, &mut supervised, t.eos_id, true);
            (tokens, supervised)
        }
        Row::Chat { messages, tools } => chat(t, messages, tools.as_deref(), masking)?,
    };
    let truncated = tokens.len() > max_len;
    tokens.truncate(max_len);
    supervised.truncate(max_len);
    Ok(Example { tokens, supervised, truncated })
}
