//! The tokenizer a GGUF file describes (`tokenizer.ggml.*`), rebuilt as the `tokenizers` library's JSON, with
//! `tokenizer_config.json` (special tokens, BOS convention, `tokenizer.chat_template`) beside it. Byte-level
//! BPE (`tokenizer.ggml.model = "gpt2"`: GPT-2, Llama 3, Qwen 2/3, SmolLM...) is rebuilt; its pre-tokenizer
//! comes from `tokenizer.ggml.pre`, llama.cpp's name for the split regex.

use serde_json::{json, Map, Value as Json};

use super::{
    container::{Gguf, Value},
    GgufError,
};

/// The split regexes of the pre-tokenizers llama.cpp names, as the models' own tokenizer.json files hold them.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The files a model directory needs for its tokenizer.
pub struct TokenizerFiles {
    pub tokenizer: Json,
    pub config: Json,
    pub vocab_size: usize,
    pub bos: Option<u64>,
    pub eos: Option<u64>,
}

fn strings<'a>(gguf: &'a Gguf, key: &str) -> Result<Vec<&'a str>, GgufError> {
    let bad = |m: String| GgufError::Format { path: gguf.path.clone(), message: m };
    let items = gguf.get(key).and_then(Value::as_array).ok_or_else(|| bad(format!("missing {key}")))?;
    items.iter().map(|v| v.as_str().ok_or_else(|| bad(format!("{key}: not all strings")))).collect()
}

pub fn rebuild(gguf: &Gguf) -> Result<TokenizerFiles, GgufError> {
    let unsupported = |m: String| GgufError::Unsupported { path: gguf.path.clone(), message: m };
    let model = gguf.get("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or("");
    if model != "gpt2" {
        return Err(unsupported(format!(
            "tokenizer.ggml.model = `{model}`: only byte-level BPE (`gpt2`) tokenizers are rebuilt; SentencePiece (`llama`) ones are not yet"
        )));
    }
    let tokens = strings(gguf, "tokenizer.ggml.tokens")?;
    let merges = strings(gguf, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match gguf.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(t) => t.iter().map(|v| v.as_u64().map_or(1, |x| x as i64)).collect(),
        None => vec![1; tokens.len()],
    };
    let pre = gguf.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
    let pre_tokenizer = match pre {
        "default" | "gpt-2" | "gpt2" => json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
        "llama-bpe" | "llama3" | "smaug-bpe" => split_then_bytes(LLAMA3),
        "qwen2" => split_then_bytes(QWEN2),
        other => return Err(unsupported(format!("tokenizer.ggml.pre = `{other}`: pre-tokenizers rebuilt: default, gpt-2, llama-bpe, qwen2"))),
    };
    let id = |k: &str| gguf.get(k).and_then(Value::as_u64);
    let (bos, eos, pad, unk) = (id("tokenizer.ggml.bos_token_id"), id("tokenizer.ggml.eos_token_id"), id("tokenizer.ggml.padding_token_id"), id("tokenizer.ggml.unknown_token_id"));
    let add_bos = gguf.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false);
    let name = |i: Option<u64>| i.and_then(|i| tokens.get(i as usize)).map(|s| (*s).to_owned());

    let mut vocab = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert((*t).to_owned(), json!(i));
    }
    // Control (3) and user-defined (4) tokens are matched before BPE, as HF's added tokens.
    let added: Vec<Json> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3 | 4)))
        .map(|(i, t)| json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": types[i] == 3}))
        .collect();
    let post = match (add_bos, name(bos)) {
        (true, Some(b)) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {b.clone(): {"id": b, "ids": [bos], "tokens": [b]}}
        }),
        _ => Json::Null,
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": name(unk), "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        }
    });
    let mut config = Map::new();
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    config.insert("add_bos_token".into(), json!(add_bos));
    for (key, token) in [("bos_token", name(bos)), ("eos_token", name(eos)), ("pad_token", name(pad)), ("unk_token", name(unk))] {
        if let Some(t) = token {
            config.insert(key.into(), json!(t));
        }
    }
    if let Some(template) = gguf.get("tokenizer.chat_template").and_then(Value::as_str) {
        config.insert("chat_template".into(), json!(template));
    }
    Ok(TokenizerFiles { tokenizer, config: Json::Object(config), vocab_size: tokens.len(), bos, eos })
}

fn split_then_bytes(regex: &str) -> Json {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
    ]})
}
