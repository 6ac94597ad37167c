//! Prompt sets for GRPO: JSONL rows with a `prompt` and whatever columns the rewards read, tokenized for
//! generation (the chat template with its generation prompt when the model has one, else the text with BOS).

use std::path::{Path, PathBuf};

use super::{rows::parse_prompt_row, DataError, Prompt};
use crate::text::TextTokenizer;

/// One prompt, ready to generate from.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRow {
    pub line: usize,
    /// The prompt as the model sees it (rendered template).
    pub text: String,
    pub tokens: Vec<u32>,
    /// The row as written, for rewards.
    pub row: String,
    /// The prompt as chat messages (where multi-turn episodes start).
    pub messages: Vec<serde_json::Value>,
}

pub struct PromptSet {
    pub path: PathBuf,
    pub rows: Vec<PromptRow>,
    /// Rows left out as malformed: (line, why).
    pub bad_rows: Vec<(usize, String)>,
}

/// The text and tokens a prompt is generated from.
pub fn render_prompt(p: &Prompt, t: &TextTokenizer, tools: Option<&[serde_json::Value]>) -> Result<(String, Vec<u32>), String> {
    if t.has_chat_template() {
        let text = t.render_chat(&p.messages(), tools, true)?;
        // The template writes its special tokens itself.
        let tokens = t.encode(&text, false)?;
        return Ok((text, tokens));
    }
    if tools.is_some() {
        return Err("tools (an [environment]) need a model with a chat template".into());
    }
    let text = p.plain_text().ok_or("chat messages need a model with a chat template")?;
    let tokens = t.encode(&text, true)?;
    Ok((text, tokens))
}

impl PromptSet {
    /// Reads and tokenizes every row; prompts longer than `max_tokens` are errors (or skipped with `skip_bad`).
    /// `budget` says where that limit comes from, for the message. `tools` (an environment's) are rendered
    /// through the chat template with every prompt.
    pub fn load(path: &Path, t: &TextTokenizer, max_tokens: usize, budget: &str, skip_bad: bool, tools: Option<&[serde_json::Value]>) -> Result<PromptSet, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::File { path: path.to_owned(), message: e.to_string() })?;
        let mut set = PromptSet { path: path.to_owned(), rows: Vec::new(), bad_rows: Vec::new() };
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed = parse_prompt_row(line).and_then(|p| {
                let (text, tokens) = render_prompt(&p, t, tools)?;
                if tokens.len() > max_tokens {
                    Err(format!("the prompt has {} tokens, over {max_tokens} ({budget})", tokens.len()))
                } else {
                    Ok((text, tokens, p.messages()))
                }
            });
            match parsed {
                Ok((text, tokens, messages)) => set.rows.push(PromptRow { line: i + 1, text, tokens, row: line.to_owned(), messages }),
                Err(message) if skip_bad => set.bad_rows.push((i + 1, message)),
                Err(message) => return Err(DataError::Row { path: path.to_owned(), line: i + 1, message }),
            }
        }
        if set.rows.is_empty() {
            return Err(DataError::File { path: path.to_owned(), message: "no usable prompt rows".into() });
        }
        Ok(set)
    }

    /// Prompt token counts, for batching.
    pub fn lengths(&self) -> Vec<usize> {
        self.rows.iter().map(|r| r.tokens.len()).collect()
    }
}
