//! The tokenizer a GGUF file describes (`tokenizer.ggml.*`), rebuilt as the `tokenizers` library's JSON, with
//! `tokenizer_config.json` (special tokens, BOS convention, `tokenizer.chat_template`) beside it. Byte-level
//! BPE (`tokenizer.ggml.model = "gpt2"`: GPT-2, Llama 3, Qwen 2/3, SmolLM...) takes its pre-tokenizer from
//! `tokenizer.ggml.pre`, llama.cpp's name for the split regex; SentencePiece BPE (`"llama"`: Gemma, Llama 2)
//! gets its merges back from the piece scores.

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
    let tokens = strings(gguf, "tokenizer.ggml.tokens")?;
    let types: Vec<i64> = match gguf.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(t) => t.iter().map(|v| v.as_u64().map_or(1, |x| x as i64)).collect(),
        None => vec![1; tokens.len()],
    };
    let (pre_tokenizer, normalizer, decoder, merges, byte_fallback) = match model {
        "gpt2" => {
            let pre = gguf.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
            let pre_tokenizer = match pre {
                "default" | "gpt-2" | "gpt2" => json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
                "llama-bpe" | "llama3" | "smaug-bpe" => split_then_bytes(LLAMA3),
                "qwen2" => split_then_bytes(QWEN2),
                other => return Err(unsupported(format!("tokenizer.ggml.pre = `{other}`: pre-tokenizers rebuilt: default, gpt-2, llama-bpe, qwen2"))),
            };
            let merges: Vec<Json> = strings(gguf, "tokenizer.ggml.merges")?
                .into_iter()
                .map(|m| m.split_once(' ').map(|(l, r)| json!([l, r])).ok_or_else(|| GgufError::Format { path: gguf.path.clone(), message: format!("merge `{m}` is not two tokens") }))
                .collect::<Result<_, _>>()?;
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (pre_tokenizer, Json::Null, decoder, merges, false)
        }
        "llama" => {
            let scores: Vec<f64> = gguf
                .get("tokenizer.ggml.scores")
                .and_then(Value::as_array)
                .ok_or_else(|| GgufError::Format { path: gguf.path.clone(), message: "a SentencePiece tokenizer without tokenizer.ggml.scores".into() })?
                .iter()
                .map(|v| v.as_f64().unwrap_or(0.0))
                .collect();
            let prefix = gguf.get("tokenizer.ggml.add_space_prefix").and_then(Value::as_bool).unwrap_or(true);
            let (normalizer, decoder) = sentencepiece_text(prefix);
            (Json::Null, normalizer, decoder, sentencepiece_merges(&tokens, &scores), true)
        }
        other => return Err(unsupported(format!("tokenizer.ggml.model = `{other}`: rebuilt are byte-level BPE (`gpt2`) and SentencePiece BPE (`llama`)"))),
    };
    let id = |k: &str| gguf.get(k).and_then(Value::as_u64);
    let (bos, eos, pad, unk) = (id("tokenizer.ggml.bos_token_id"), id("tokenizer.ggml.eos_token_id"), id("tokenizer.ggml.padding_token_id"), id("tokenizer.ggml.unknown_token_id"));
    let add_bos = gguf.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false);
    let name = |i: Option<u64>| i.and_then(|i| tokens.get(i as usize)).map(|s| (*s).to_owned());

    let mut vocab = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert((*t).to_owned(), json!(i));
    }
    // Unknown (2), control (3) and user-defined (4) tokens are matched before BPE, as HF's added tokens.
    let added: Vec<Json> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(2..=4)))
        .map(|(i, t)| json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": types[i] != 4}))
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
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": decoder,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": name(unk), "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": byte_fallback, "byte_fallback": byte_fallback, "ignore_merges": false,
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

/// SentencePiece's text handling: spaces become "▁" (with one prepended when the model adds a space prefix),
/// and back; unknown bytes come as `<0xNN>` tokens.
fn sentencepiece_text(prefix: bool) -> (Json, Json) {
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if prefix { json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]}) } else { replace };
    let mut steps = vec![json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}), json!({"type": "ByteFallback"}), json!({"type": "Fuse"})];
    if prefix {
        steps.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    (normalizer, json!({"type": "Sequence", "decoders": steps}))
}

/// The merges of a SentencePiece BPE model, which GGUF stores only as piece scores: SentencePiece joins the
/// adjacent pair whose concatenation is the highest-scoring piece, so every split of a piece into two pieces is
/// a merge ranked by that piece's score (ties in piece order, then by the halves' ids), as Hugging Face's
/// converter derives them.
pub fn sentencepiece_merges(tokens: &[&str], scores: &[f64]) -> Vec<Json> {
    let ids: std::collections::HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut merges: Vec<(f64, usize, usize, usize)> = Vec::new();
    for (piece, token) in tokens.iter().enumerate() {
        let mut local: Vec<(usize, usize)> = token
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| Some((*ids.get(&token[..at])?, *ids.get(&token[at..])?)))
            .collect();
        local.sort_unstable();
        let score = scores.get(piece).copied().unwrap_or(0.0);
        merges.extend(local.into_iter().map(|(l, r)| (score, piece, l, r)));
    }
    // Stable: equal scores keep piece order.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    // Pairs, not "l r" strings: a piece may contain a space.
    merges.into_iter().map(|(_, _, l, r)| json!([tokens[l], tokens[r]])).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokenizers::{
        models::bpe::{BpeTrainerBuilder, BPE},
        normalizers::{Prepend, Replace, Sequence},
        Tokenizer,
    };

    use super::*;

    fn corpus() -> Vec<String> {
        let words = ["what", "is", "the", "answer", "seven", "plus", "two", "nine", "model", "tokens", "merge", "piece", "score"];
        (0..400).map(|i| (0..6).map(|k| words[(i * 7 + k * 3 + i / 5) % words.len()]).collect::<Vec<_>>().join(" ")).collect()
    }

    #[test]
    fn a_sentencepiece_bpe_tokenizer_is_rebuilt_from_its_scores() {
        // A SentencePiece-style BPE (spaces as ▁ with a prefix, byte fallback) trained here, stored as GGUF
        // stores it: pieces with scores −(merge rank), no merges. The rebuilt tokenizer must encode alike.
        let mut original = Tokenizer::new(BPE::builder().byte_fallback(true).unk_token("<unk>".into()).build().unwrap());
        original.with_normalizer(Some(Sequence::new(vec![Prepend::new("\u{2581}".into()).into(), Replace::new(" ", "\u{2581}").unwrap().into()])));
        let mut trainer: tokenizers::models::TrainerWrapper = BpeTrainerBuilder::new().vocab_size(300).special_tokens(vec![tokenizers::AddedToken::from("<unk>", true)]).build().into();
        let lines = corpus();
        original.train(&mut trainer, lines.iter()).unwrap();
        let json: Json = serde_json::from_str(&original.to_string(false).unwrap()).unwrap();
        let vocab = json["model"]["vocab"].as_object().unwrap();
        let mut tokens = vec![String::new(); vocab.len()];
        for (t, id) in vocab {
            tokens[id.as_u64().unwrap() as usize] = t.clone();
        }
        let mut scores = vec![0.0f64; tokens.len()];
        for (rank, m) in json["model"]["merges"].as_array().unwrap().iter().enumerate() {
            let merged = format!("{}{}", m[0].as_str().unwrap(), m[1].as_str().unwrap());
            scores[vocab[&merged].as_u64().unwrap() as usize] = -(rank as f64) - 1.0;
        }
        let types: Vec<Value> = tokens.iter().map(|t| Value::Int(if t == "<unk>" { 2 } else { 1 })).collect();
        let mut meta = BTreeMap::new();
        meta.insert("tokenizer.ggml.model".to_owned(), Value::String("llama".into()));
        meta.insert("tokenizer.ggml.tokens".to_owned(), Value::Array(tokens.iter().cloned().map(Value::String).collect()));
        meta.insert("tokenizer.ggml.scores".to_owned(), Value::Array(scores.iter().map(|&s| Value::Float(s)).collect()));
        meta.insert("tokenizer.ggml.token_type".to_owned(), Value::Array(types));
        meta.insert("tokenizer.ggml.unknown_token_id".to_owned(), Value::Int(0));
        let files = rebuild(&Gguf::from_metadata(meta)).unwrap();
        let rebuilt: Tokenizer = serde_json::to_string(&files.tokenizer).unwrap().parse().unwrap();
        for text in lines.iter().take(50).map(String::as_str).chain(["the answer is nine", "seventwo plus"]) {
            let (a, b) = (original.encode(text, false).unwrap(), rebuilt.encode(text, false).unwrap());
            assert_eq!(a.get_ids(), b.get_ids(), "{text:?}");
            assert_eq!(rebuilt.decode(b.get_ids(), false).unwrap(), text, "decoding {text:?}");
        }
    }
}
