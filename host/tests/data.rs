//! Data pipeline on fixture tokenizers: exact masks per format and masking mode, truncation and bad-row
//! accounting, the data cache policies and their keys.

use std::path::{Path, PathBuf};

use host::{
    data::{assemble, collate, plan_epoch, tokenize, BatchSize, DataOptions, Dataset, Masking, Prompt, Reply, Row, RowShape},
    fixture::{self, Family, Preset},
    plugins::Registry,
    text::TextTokenizer,
};
use serde_json::json;


/// The one sequence a text, prompt/completion or messages row becomes.
fn single(row: &Row, t: &TextTokenizer, masking: Masking, max_len: usize) -> Result<host::data::Example, String> {
    host::data::tokenize(row, t, masking, max_len).map(|mut item| item.examples.remove(0))
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("host-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn qwen(name: &str) -> (TextTokenizer, PathBuf) {
    let dir = temp(name).join("model");
    fixture::write(&dir, Family::Qwen2, Preset::Tiny, 1).unwrap();
    (TextTokenizer::load(&dir).unwrap(), dir)
}

/// The text of the supervised tokens, runs joined with `|`.
fn supervised_text(t: &TextTokenizer, tokens: &[u32], supervised: &[bool]) -> String {
    let mut runs = Vec::new();
    let mut current = Vec::new();
    for (tok, &s) in tokens.iter().zip(supervised) {
        if s {
            current.push(*tok);
        } else if !current.is_empty() {
            runs.push(t.decode(&current, false).unwrap());
            current.clear();
        }
    }
    if !current.is_empty() {
        runs.push(t.decode(&current, false).unwrap());
    }
    runs.join("|")
}

fn options(masking: Masking) -> DataOptions {
    DataOptions { masking, max_seq_length: 512, skip_bad_rows: false, shape: RowShape::Single }
}

#[test]
fn masks_are_exact_for_every_format() {
    let (t, _) = qwen("masks");
    let completion = Row::Completion { system: None, prompt: "What is 2 + 3?".into(), completion: "5".into() };
    let e = single(&completion, &t, Masking::Prompt, 512).unwrap();
    assert_eq!(t.decode(&e.tokens, false).unwrap(), "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n");
    assert_eq!(supervised_text(&t, &e.tokens, &e.supervised), "5<|im_end|>\n");
    let e = single(&completion, &t, Masking::None, 512).unwrap();
    assert!(e.supervised.iter().all(|&s| s));

    let chat = Row::Chat {
        messages: vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "Hi"}),
            json!({"role": "assistant", "content": "Hello"}),
            json!({"role": "user", "content": "Sum 2 and 2"}),
            json!({"role": "assistant", "content": "4"}),
        ],
        tools: None,
    };
    let e = single(&chat, &t, Masking::Assistant, 512).unwrap();
    assert_eq!(supervised_text(&t, &e.tokens, &e.supervised), "Hello<|im_end|>\n|4<|im_end|>\n");
    let e = single(&chat, &t, Masking::Prompt, 512).unwrap();
    assert_eq!(supervised_text(&t, &e.tokens, &e.supervised), "4<|im_end|>\n");

    let text = Row::Text("the cat reads".into());
    let e = single(&text, &t, Masking::None, 512).unwrap();
    assert_eq!(t.decode(&e.tokens, false).unwrap(), "the cat reads<|im_end|>", "EOS appended");
    assert!(e.supervised.iter().all(|&s| s));
    assert_eq!(single(&text, &t, Masking::Prompt, 512).unwrap_err(), "mask = \"prompt\" needs prompt/completion or messages rows, not text");

    // Truncation keeps the head and says so.
    let e = single(&completion, &t, Masking::Prompt, 6).unwrap();
    assert_eq!(e.tokens.len(), 6);
    assert!(e.truncated);
    assert_eq!(e.supervised_targets(), 0);
}

#[test]
fn a_hand_built_batch_supervises_exactly_the_completions() {
    let (t, _) = qwen("batch");
    let a = single(&Row::Completion { system: None, prompt: "2 + 2".into(), completion: "4".into() }, &t, Masking::Prompt, 512).unwrap();
    let b = single(&Row::Text("one two".into()), &t, Masking::None, 512).unwrap();
    let batch = collate(&[&a, &b], 8, 0);
    let width = batch.inputs.shape()[1] as usize;
    assert_eq!(width % 8, 0);
    let mask = batch.mask.as_slice::<f32>();
    let targets = batch.targets.as_slice::<i32>();
    // Row 0: the targets under the mask are exactly the completion tokens after the prompt.
    let picked: Vec<u32> = (0..width).filter(|&j| mask[j] == 1.0).map(|j| targets[j] as u32).collect();
    let expected: Vec<u32> = a.tokens.iter().zip(&a.supervised).skip(1).filter(|(_, &s)| s).map(|(&t, _)| t).collect();
    assert_eq!(picked, expected);
    assert_eq!(t.decode(&picked, false).unwrap(), "4<|im_end|>\n");
    // Row 1: every real target, no padding.
    let row1: Vec<usize> = (0..width).filter(|&j| mask[width + j] == 1.0).collect();
    assert_eq!(row1, (0..b.tokens.len() - 1).collect::<Vec<_>>());
    assert_eq!(batch.supervised, picked.len() + b.tokens.len() - 1);
}

fn write_jsonl(dir: &Path, name: &str, rows: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, rows.join("\n") + "\n").unwrap();
    path
}

fn policy(kind: &str, config: &str) -> Box<dyn sdk::DataCachePolicy> {
    Registry::builtin().unwrap().data_cache_policy(kind, &config.parse().unwrap()).unwrap()
}

#[test]
fn bad_rows_name_file_and_line_or_are_counted() {
    let (t, model) = qwen("bad");
    let dir = temp("bad-data");
    let path = write_jsonl(&dir, "train.jsonl", &[r#"{"text": "fine"}"#, "", r#"{"text": 5}"#, r#"{"prompt": "p", "completion": "c"}"#, "{oops"]);
    let mut none = policy("none", "");
    let err = Dataset::load(&path, &t, options(Masking::None), &mut *none, &model.join("tokenizer.json")).err().unwrap().to_string();
    assert_eq!(err, format!("{}:3: `text` must be a string, got a number", path.display()));
    let skip = DataOptions { skip_bad_rows: true, ..options(Masking::None) };
    let d = Dataset::load(&path, &t, skip, &mut *none, &model.join("tokenizer.json")).unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d.stats.bad_rows.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![3, 5]);
    assert!(d.stats.describe().contains("2 malformed rows skipped (lines 3, 5)"), "{}", d.stats.describe());
}

#[test]
fn disk_cache_hits_and_misses_on_every_input() {
    let (t, model) = qwen("disk");
    let dir = temp("disk-data");
    let cache_dir = dir.join("cache");
    let path = write_jsonl(&dir, "train.jsonl", &[r#"{"prompt": "1 + 1", "completion": "2"}"#, r#"{"prompt": "3 + 4", "completion": "7 is the sum"}"#]);
    let tok_file = model.join("tokenizer.json");
    let mut disk = policy("disk", &format!("dir = {:?}", cache_dir.display().to_string()));
    let first = Dataset::load(&path, &t, options(Masking::Prompt), &mut *disk, &tok_file).unwrap();
    assert!(!first.cache_hit);
    assert_eq!(std::fs::read_dir(&cache_dir).unwrap().count(), 1);
    let mut again = Dataset::load(&path, &t, options(Masking::Prompt), &mut *disk, &tok_file).unwrap();
    assert!(again.cache_hit);
    let mut first = first;
    for i in 0..2 {
        assert_eq!(again.item(i, &t).unwrap(), first.item(i, &t).unwrap());
    }
    // Different masking, data or template: a different key.
    assert!(!Dataset::load(&path, &t, options(Masking::None), &mut *disk, &tok_file).unwrap().cache_hit);
    write_jsonl(&dir, "train.jsonl", &[r#"{"prompt": "1 + 1", "completion": "2"}"#]);
    assert!(!Dataset::load(&path, &t, options(Masking::Prompt), &mut *disk, &tok_file).unwrap().cache_hit);
    let config_path = model.join("tokenizer_config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    // Another spelling of the same template: its text is part of the key even when the output is equal.
    config["chat_template"] = json!(config["chat_template"].as_str().unwrap().replace("message.role", "message['role']"));
    std::fs::write(&config_path, config.to_string()).unwrap();
    let t2 = TextTokenizer::load(&model).unwrap();
    assert!(!Dataset::load(&path, &t2, options(Masking::Prompt), &mut *disk, &tok_file).unwrap().cache_hit);
}

#[test]
fn lazy_and_none_policies_give_the_same_tokens_on_every_use_and_count_them_at_load() {
    let (t, model) = qwen("lazy");
    let dir = temp("lazy-data");
    let path = write_jsonl(&dir, "train.jsonl", &[r#"{"text": "a b c d e f"}"#, r#"{"text": "a"}"#]);
    for kind in ["lazy", "none"] {
        let mut p = policy(kind, "");
        let mut d = Dataset::load(&path, &t, options(Masking::None), &mut *p, &model.join("tokenizer.json")).unwrap();
        let e = d.item(0, &t).unwrap();
        assert_eq!(t.decode(&e.examples[0].tokens, false).unwrap(), "a b c d e f<|im_end|>");
        assert_eq!(d.item(0, &t).unwrap(), e);
        // Batching counts tokens, not bytes, though the tokens are not kept.
        let second = d.item(1, &t).unwrap().len();
        assert_eq!(d.lengths(), &[e.len(), second]);
    }
}

#[test]
fn every_cache_policy_batches_by_the_same_token_counts() {
    // max_batch_tokens is a token budget: with bytes as the key (what the lazy and none policies used),
    // multi-byte text and chat templates gave batches of a fraction of the budget.
    let (t, model) = qwen("plans");
    let dir = temp("plans-data");
    let rows: Vec<String> = (0..40)
        .map(|i| {
            let words = "zwölf größere Häuser × ".repeat(1 + i % 7);
            json!({"messages": [{"role": "user", "content": format!("{i}: {words}")}, {"role": "assistant", "content": "ok ".repeat(1 + i % 5)}]}).to_string()
        })
        .collect();
    let path = write_jsonl(&dir, "train.jsonl", &rows.iter().map(String::as_str).collect::<Vec<_>>());
    let size = BatchSize { rows: 8, max_tokens: Some(160) };
    let mut plans = Vec::new();
    for (kind, table) in [("disk", format!("dir = {:?}", dir.join("cache").display().to_string())), ("lazy", String::new()), ("none", String::new())] {
        let mut p = policy(kind, &table);
        let mut d = Dataset::load(&path, &t, options(Masking::Assistant), &mut *p, &model.join("tokenizer.json")).unwrap();
        let exact: Vec<usize> = (0..d.len()).map(|i| d.item(i, &t).unwrap().len()).collect();
        assert_eq!(d.lengths(), &exact[..], "{kind}");
        plans.push((kind, plan_epoch(d.lengths(), size, 7, 0), d.stats.describe()));
    }
    assert_eq!(plans[0].1, plans[1].1, "disk vs lazy");
    assert_eq!(plans[0].1, plans[2].1, "disk vs none");
    assert_eq!(plans[0].2, plans[1].2, "the same statistics");
    // The plan fills the budget with tokens: every batch but the last ones holds rows × longest ≤ 160.
    let (_, plan, _) = &plans[0];
    assert!(plan.len() > 40 / 8, "the token budget splits batches: {plan:?}");
}

#[test]
fn preference_pairs_and_labelled_rows_supervise_their_completions_only() {
    let (t, model) = qwen("pairs");
    let pair = Row::Preference {
        prompt: Prompt::Text { system: Some("Be exact.".into()), prompt: "What is 2 + 3?".into() },
        chosen: Reply::Text("5".into()),
        rejected: Reply::Text("6, I think".into()),
    };
    let item = tokenize(&pair, &t, Masking::Prompt, 512).unwrap();
    assert_eq!(item.examples.len(), 2);
    let (c, r) = (&item.examples[0], &item.examples[1]);
    assert_eq!(
        t.decode(&c.tokens, false).unwrap(),
        "<|im_start|>system\nBe exact.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n"
    );
    assert_eq!(supervised_text(&t, &c.tokens, &c.supervised), "5<|im_end|>\n");
    assert_eq!(supervised_text(&t, &r.tokens, &r.supervised), "6, I think<|im_end|>\n");
    assert_eq!(c.tokens[..c.completion_start()], r.tokens[..r.completion_start()], "one prompt, two completions");
    assert_eq!(tokenize(&pair, &t, Masking::None, 512).unwrap_err(), "preference and labelled rows are scored on their completions only, so mask must be \"prompt\", not \"none\"");

    // A conversational pair gives the same tokens as its plain form.
    let conversational = host::data::parse_row(
        r#"{"prompt": [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "What is 2 + 3?"}], "chosen": [{"role": "assistant", "content": "5"}], "rejected": [{"role": "assistant", "content": "6, I think"}]}"#,
    )
    .unwrap();
    assert_eq!(tokenize(&conversational, &t, Masking::Prompt, 512).unwrap(), item);

    // Labelled rows keep their label; the batch pairs each prompt with another row's completion.
    let a = tokenize(&host::data::parse_row(r#"{"prompt": "2 + 2", "completion": "4", "label": true}"#).unwrap(), &t, Masking::Prompt, 512).unwrap();
    let b = tokenize(&host::data::parse_row(r#"{"prompt": "9 - 1", "completion": "seven", "label": false}"#).unwrap(), &t, Masking::Prompt, 512).unwrap();
    assert_eq!((a.label, b.label), (Some(true), Some(false)));
    let batch = assemble(&[&a, &b], Some(&[&b, &a]), 8, 512, None);
    assert_eq!(batch.labels.as_ref().unwrap().as_slice::<f32>(), &[1.0, 0.0]);
    let kl = batch.kl.as_ref().unwrap();
    let width = kl.inputs.shape()[1] as usize;
    let row0: Vec<u32> = kl.inputs.as_slice::<i32>()[..width].iter().map(|&v| v as u32).collect();
    let text = t.decode(&row0, false).unwrap();
    assert!(text.starts_with("<|im_start|>user\n2 + 2<|im_end|>\n<|im_start|>assistant\nseven<|im_end|>"), "{text}");

    // A file of pairs loads for a pair loss and is refused, naming the line, for a single-sequence loss.
    let dir = temp("pairs-data");
    let path = write_jsonl(&dir, "train.jsonl", &[r#"{"prompt": "2 + 3", "chosen": "5", "rejected": "6"}"#]);
    let mut none = policy("none", "");
    let pairs = DataOptions { shape: RowShape::Pair, ..options(Masking::Prompt) };
    assert_eq!(Dataset::load(&path, &t, pairs, &mut *none, &model.join("tokenizer.json")).unwrap().len(), 1);
    let err = Dataset::load(&path, &t, options(Masking::Prompt), &mut *none, &model.join("tokenizer.json")).err().unwrap().to_string();
    assert_eq!(
        err,
        format!("{}:1: this is one of the preference rows (prompt/chosen/rejected), but the loss trains on text, prompt/completion or messages rows", path.display())
    );
}
