//! Rows to token ids with a per-token supervision mask, following each format's conventions (mlx-lm's and
//! TRL's): text gets EOS appended; prompt/completion pairs and conversations are rendered with the chat
//! template; supervised spans are found as byte ranges of the rendered text, so a BPE merge across a span
//! boundary cannot shift them.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::rows::{Prompt, Reply, Row};
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

impl Masking {
    pub fn name(self) -> &'static str {
        match self {
            Masking::None => "none",
            Masking::Prompt => "prompt",
            Masking::Assistant => "assistant",
        }
    }
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

/// What one row becomes: one sequence, a preference pair (chosen, rejected), or a labelled sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub examples: Vec<Example>,
    pub label: Option<bool>,
}

impl Item {
    fn single(example: Example) -> Self {
        Item { examples: vec![example], label: None }
    }

    /// The batching key: the longest sequence (a pair is padded to its longer side).
    pub fn len(&self) -> usize {
        self.examples.iter().map(|e| e.tokens.len()).max().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn truncated(&self) -> bool {
        self.examples.iter().any(|e| e.truncated)
    }

    /// Every sequence has a supervised target (a pair whose completion was cut away cannot be compared).
    pub fn usable(&self) -> bool {
        self.examples.iter().all(|e| e.supervised_targets() > 0)
    }
}

impl Example {
    /// Where the completion starts: the first supervised token (the prompt is everything before it).
    pub fn completion_start(&self) -> usize {
        self.supervised.iter().position(|&s| s).unwrap_or(self.tokens.len())
    }

    /// This example's prompt followed by `other`'s completion (KTO's mismatched pairs), cut at `max_len`.
    pub fn with_completion_of(&self, other: &Example, max_len: usize) -> Example {
        let (head, tail) = (self.completion_start(), other.completion_start());
        let mut tokens = self.tokens[..head].to_vec();
        let mut supervised = vec![false; head];
        tokens.extend_from_slice(&other.tokens[tail..]);
        supervised.extend_from_slice(&other.supervised[tail..]);
        let truncated = tokens.len() > max_len;
        tokens.truncate(max_len);
        supervised.truncate(max_len);
        Example { tokens, supervised, truncated }
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

/// A prompt and its completion; with `supervise_prompt` false only the completion is supervised.
fn prompted(t: &TextTokenizer, prompt: &Prompt, reply: &Reply, supervise_prompt: bool) -> Result<(Vec<u32>, Vec<bool>), String> {
    if let (Some(head), Reply::Text(completion), false) = (prompt.plain_text(), reply, t.has_chat_template()) {
        // No template: the plain concatenation, as mlx-lm does for models without one.
        let mut tokens = t.encode(&head, true)?;
        let mut supervised = vec![supervise_prompt; tokens.len()];
        let tail = t.encode(completion, false)?;
        supervised.extend(std::iter::repeat_n(true, tail.len()));
        tokens.extend(tail);
        append_eos(&mut tokens, &mut supervised, t.eos_id, true);
        return Ok((tokens, supervised));
    }
    if !t.has_chat_template() {
        return Err("chat messages need a model with a chat template".into());
    }
    let mut messages = prompt.messages();
    let prompt_count = messages.len();
    match reply {
        Reply::Text(c) => messages.push(json!({"role": "assistant", "content": c})),
        Reply::Messages(m) => messages.extend(m.iter().cloned()),
    }
    let full = t.render_chat(&messages, None, false)?;
    let start = if supervise_prompt { 0 } else { prefix_len(t, &messages, None, prompt_count, true, &full)? };
    tokenize_spans(t, &full, &[(start, full.len())])
}

fn finish(mut tokens: Vec<u32>, mut supervised: Vec<bool>, max_len: usize) -> Example {
    let truncated = tokens.len() > max_len;
    tokens.truncate(max_len);
    supervised.truncate(max_len);
    Example { tokens, supervised, truncated }
}

pub fn tokenize(row: &Row, t: &TextTokenizer, masking: Masking, max_len: usize) -> Result<Item, String> {
    let (tokens, supervised) = match row {
        Row::Text(text) => {
            if masking != Masking::None {
                return Err(format!("mask = \"{}\" needs prompt/completion or messages rows, not text", masking.name()));
            }
            let mut tokens = t.encode(text, true)?;
            let mut supervised = vec![true; tokens.len()];
            append_eos(&mut tokens, &mut supervised, t.eos_id, true);
            (tokens, supervised)
        }
        Row::Completion { system, prompt, completion } => {
            let p = Prompt::Text { system: system.clone(), prompt: prompt.clone() };
            prompted(t, &p, &Reply::Text(completion.clone()), masking == Masking::None)?
        }
        Row::Chat { messages, tools } => chat(t, messages, tools.as_deref(), masking)?,
        Row::Preference { prompt, chosen, rejected } => {
            completions_only(masking)?;
            let (c, cs) = prompted(t, prompt, chosen, false)?;
            let (r, rs) = prompted(t, prompt, rejected, false)?;
            return Ok(Item { examples: vec![finish(c, cs, max_len), finish(r, rs, max_len)], label: None });
        }
        Row::Labeled { prompt, completion, label } => {
            completions_only(masking)?;
            let (c, cs) = prompted(t, prompt, completion, false)?;
            return Ok(Item { examples: vec![finish(c, cs, max_len)], label: Some(*label) });
        }
    };
    Ok(Item::single(finish(tokens, supervised, max_len)))
}

fn completions_only(masking: Masking) -> Result<(), String> {
    if masking != Masking::Prompt {
        return Err(format!("preference and labelled rows are scored on their completions only, so mask must be \"prompt\", not \"{}\"", masking.name()));
    }
    Ok(())
}
