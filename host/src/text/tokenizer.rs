//! A model directory's tokenizer: `tokenizer.json`, the chat template and special tokens of
//! `tokenizer_config.json` (or `chat_template.jinja`), and the EOS ids of `generation_config.json` and
//! `config.json`.

use std::{collections::BTreeSet, path::Path};

use serde_json::Value;
use tokenizers::Tokenizer;

use super::ChatTemplate;
use crate::model::{ModelError, TokenIds};

pub struct TextTokenizer {
    pub inner: Tokenizer,
    template: Option<ChatTemplate>,
    template_source: Option<String>,
    /// Ids that end generation.
    pub eos_ids: Vec<u32>,
    pub bos_token: Option<String>,
    /// The id of `tokenizer_config.json`'s `eos_token` (what text examples end with), else the first EOS id.
    pub eos_id: Option<u32>,
}

fn read_json(path: &Path) -> Result<Option<Value>, ModelError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::file(path, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| ModelError::file(path, format!("invalid JSON: {e}")))
}

/// A special token written either as a string or as an AddedToken object `{content: ...}`.
fn token_string(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned).or_else(|| v.get("content").and_then(|c| c.as_str()).map(str::to_owned))
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    v.and_then(|v| serde_json::from_value::<TokenIds>(v.clone()).ok()).map(|t| t.to_vec()).unwrap_or_default()
}

impl TextTokenizer {
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::file(&path, "missing (the tokenizer of this model)"));
        }
        let inner = Tokenizer::from_file(&path).map_err(|e| ModelError::file(&path, e))?;
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json(&config_path)?.unwrap_or(Value::Null);
        let special = |name: &str| config.get(name).and_then(token_string);

        let source = match config.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: the default one.
            Some(Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or_else(|| named.first())
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_owned),
            _ => None,
        };
        let source = match source {
            Some(s) => Some(s),
            None => {
                let jinja = dir.join("chat_template.jinja");
                if jinja.is_file() { Some(std::fs::read_to_string(&jinja).map_err(|e| ModelError::file(&jinja, e))?) } else { None }
            }
        };
        let tokens: Vec<(String, String)> = ["bos_token", "eos_token", "pad_token", "unk_token"]
            .iter()
            .filter_map(|name| special(name).map(|t| ((*name).to_owned(), t)))
            .collect();
        let template = source
            .clone()
            .map(|s| ChatTemplate::new(s, tokens).map_err(|e| ModelError::file(&config_path, e)))
            .transpose()?;

        let eos_token_id = special("eos_token").and_then(|t| inner.token_to_id(&t));
        let mut eos: BTreeSet<u32> = BTreeSet::new();
        eos.extend(ids(read_json(&dir.join("generation_config.json"))?.as_ref().and_then(|g| g.get("eos_token_id"))));
        eos.extend(ids(read_json(&dir.join("config.json"))?.as_ref().and_then(|c| c.get("eos_token_id"))));
        if let Some(id) = eos_token_id {
            eos.insert(id);
        }
        let eos_id = eos_token_id.or_else(|| eos.iter().next().copied());
        Ok(TextTokenizer { inner, template, template_source: source, eos_ids: eos.into_iter().collect(), bos_token: special("bos_token"), eos_id })
    }

    /// Token ids of `text`; `special` adds what the tokenizer's post-processor adds (BOS for Llama-style).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, String> {
        self.inner.encode(text, special).map(|e| e.get_ids().to_vec()).map_err(|e| format!("tokenizing: {e}"))
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, String> {
        self.inner.decode(ids, skip_special).map_err(|e| format!("detokenizing: {e}"))
    }

    /// Token ids of `text` with the byte range of each token in `text` (no special tokens added).
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<(usize, usize)>), String> {
        let e = self.inner.encode(text, false).map_err(|e| format!("tokenizing: {e}"))?;
        Ok((e.get_ids().to_vec(), e.get_offsets().to_vec()))
    }

    /// The chat template's source, for cache keys.
    pub fn template_source(&self) -> Option<&str> {
        self.template_source.as_deref()
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// The prompt text for a conversation, as `apply_chat_template(..., tokenize=False)` renders it.
    pub fn render_chat(&self, messages: &[Value], tools: Option<&[Value]>, add_generation_prompt: bool) -> Result<String, String> {
        let template = self.template.as_ref().ok_or("this model has no chat template")?;
        template.render(messages, tools, add_generation_prompt)
    }

    /// Token ids of a rendered conversation (the template itself supplies BOS, so none is added).
    pub fn encode_chat(&self, messages: &[Value], tools: Option<&[Value]>, add_generation_prompt: bool) -> Result<Vec<u32>, String> {
        self.encode(&self.render_chat(messages, tools, add_generation_prompt)?, false)
    }
}
