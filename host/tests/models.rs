//! Model runtime against itself and against hand-made breakage, on fixture models of every family.

use std::path::{Path, PathBuf};

use host::{
    cache::{self, KvCache},
    fixture::{self, Family, Preset},
    generate::{generate, Control, GenerateOptions, Sampler, SamplerConfig},
    model::{self, LoadOptions, ModelError},
    nn::Quant,
};
use mlx_rs::{ops::indexing::IndexOp, Array, Dtype};
use sdk::KvCacheSpec;

const FAMILIES: [Family; 4] = [Family::Llama, Family::Qwen2, Family::Qwen3, Family::Mistral];

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("host-models-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn fixture_dir(family: Family, name: &str) -> PathBuf {
    let dir = temp(&format!("{family:?}-{name}"));
    fixture::write(&dir, family, Preset::Tiny, 3).unwrap();
    dir
}

fn f32_options() -> LoadOptions {
    LoadOptions { dtype: Some(Dtype::Float32), quantize: None }
}

fn values(a: &Array) -> Vec<f32> {
    a.as_dtype(Dtype::Float32).unwrap().contiguous().unwrap().to_vec_exact::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn tokens(n: usize, seed: u32) -> Vec<i32> {
    (0..n).map(|i| ((i as u32 * 37 + seed * 11) % 400 + 10) as i32).collect()
}

/// Logits of each position computed by prefilling `split` tokens through `caches`, then decoding the rest one
/// at a time, against one uncached forward over all tokens: the largest |Δlogit|, relative to the largest
/// |logit| when `relative`.
fn cached_vs_uncached(model: &model::CausalLm, caches: &mut [Box<dyn KvCache>], ids: &[i32], split: usize, relative: bool) -> f32 {
    let all = Array::from_slice(ids, &[1, ids.len() as i32]);
    let full = model.forward(&all, None).unwrap();
    let prefill = model.forward(&all.index((.., ..split as i32)), Some(caches)).unwrap();
    let mut worst = max_diff(&values(&prefill.index((0, -1))), &values(&full.index((0, split as i32 - 1))));
    for pos in split..ids.len() {
        let step = model.forward(&all.index((.., pos as i32..pos as i32 + 1)), Some(caches)).unwrap();
        worst = worst.max(max_diff(&values(&step.index((0, 0))), &values(&full.index((0, pos as i32)))));
    }
    let scale = values(&full).iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if relative { worst / scale } else { worst }
}

#[test]
fn cached_decode_equals_the_uncached_forward_for_every_family() {
    for family in FAMILIES {
        let dir = fixture_dir(family, "cached");
        let loaded = model::load(&dir, &f32_options()).unwrap();
        let m = &loaded.model;
        let ids = tokens(12, 1);
        let layers = m.num_layers();
        let mut standard: Vec<Box<dyn KvCache>> = (0..layers).map(|_| cache::make(KvCacheSpec::Standard { step: 4 })).collect();
        let d = cached_vs_uncached(m, &mut standard, &ids, 5, false);
        assert!(d < 2e-5, "{family:?} standard cache: max |Δlogit| {d}");
        // A window at least as long as the sequence changes nothing.
        let mut rotating: Vec<Box<dyn KvCache>> = (0..layers).map(|_| cache::make(KvCacheSpec::Rotating { max_size: 32, keep: 2 })).collect();
        let d = cached_vs_uncached(m, &mut rotating, &ids, 5, false);
        assert!(d < 2e-5, "{family:?} rotating cache: max |Δlogit| {d}");
        // Quantized from the start: 8-bit keys and values cost a bounded error.
        let mut quantized: Vec<Box<dyn KvCache>> =
            (0..layers).map(|_| cache::make(KvCacheSpec::Quantized { bits: 8, group_size: 32, start: 0 })).collect();
        let d = cached_vs_uncached(m, &mut quantized, &ids, 5, true);
        eprintln!("{family:?} 8-bit quantized cache: max |Δlogit| / max |logit| = {d}");
        assert!(d < 1e-2 && d > 0.0, "{family:?} 8-bit quantized cache: max |Δlogit| / max |logit| = {d}");
        // Dense before `start`, quantized after: exact while dense.
        let mut late: Vec<Box<dyn KvCache>> =
            (0..layers).map(|_| cache::make(KvCacheSpec::Quantized { bits: 8, group_size: 32, start: 64 })).collect();
        let d = cached_vs_uncached(m, &mut late, &ids, 5, false);
        assert!(d < 2e-5, "{family:?} quantized cache below its start: max |Δlogit| {d}");
    }
}

fn greedy(m: &model::CausalLm, prompts: &[Vec<u32>], max_tokens: usize) -> Vec<host::generate::Completion> {
    let mut caches: Vec<Box<dyn KvCache>> = (0..m.num_layers()).map(|_| cache::make(KvCacheSpec::Standard { step: 256 })).collect();
    let mut sampler = Sampler::new(SamplerConfig::default(), 0).unwrap();
    let options = GenerateOptions { max_tokens, ..Default::default() };
    let mut sink = |_: usize, _: u32| Control::Continue;
    generate(m, prompts, &mut caches, &mut sampler, &options, &mut sink).unwrap().0
}

#[test]
fn batched_generation_equals_one_prompt_at_a_time() {
    for family in FAMILIES {
        let dir = fixture_dir(family, "batched");
        let m = model::load(&dir, &f32_options()).unwrap().model;
        let prompts: Vec<Vec<u32>> = [5usize, 9, 7].iter().enumerate().map(|(i, &n)| tokens(n, i as u32 + 2).iter().map(|&t| t as u32).collect()).collect();
        let batched = greedy(&m, &prompts, 8);
        for (i, p) in prompts.iter().enumerate() {
            let single = greedy(&m, std::slice::from_ref(p), 8);
            assert_eq!(batched[i].tokens, single[0].tokens, "{family:?} row {i}");
            let d = max_diff(&batched[i].logprobs, &single[0].logprobs);
            assert!(d < 1e-4, "{family:?} row {i}: logprobs differ by {d}");
        }
    }
}

#[test]
fn logprobs_are_the_models_own() {
    let dir = fixture_dir(Family::Qwen2, "logprobs");
    let m = model::load(&dir, &f32_options()).unwrap().model;
    let prompt: Vec<u32> = tokens(6, 4).iter().map(|&t| t as u32).collect();
    let out = &greedy(&m, std::slice::from_ref(&prompt), 3)[0];
    // Re-score prompt + generated tokens with one forward: log_softmax at each generated position.
    let all: Vec<i32> = prompt.iter().chain(&out.tokens).map(|&t| t as i32).collect();
    let logits = m.forward(&Array::from_slice(&all, &[1, all.len() as i32]), None).unwrap();
    for (k, &tok) in out.tokens.iter().enumerate() {
        let row = values(&logits.index((0, (prompt.len() + k - 1) as i32)));
        let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let z: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
        let expected = row[tok as usize] as f64 - z;
        assert!((out.logprobs[k] as f64 - expected).abs() < 1e-4, "token {k}: {} vs {expected}", out.logprobs[k]);
        // Greedy: the argmax.
        let argmax = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32);
        assert_eq!(Some(tok), argmax);
    }
}

/// ‖a − b‖ / ‖b‖ over the logits of a batch of positions.
fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn quantized_models_stay_within_a_stated_bound_of_float() {
    for family in [Family::Llama, Family::Qwen2] {
        let dir = fixture_dir(family, "quant");
        let float = model::load(&dir, &f32_options()).unwrap().model;
        let ids = tokens(10, 5);
        let input = Array::from_slice(&ids, &[1, ids.len() as i32]);
        let reference = values(&float.forward(&input, None).unwrap());
        for (bits, bound) in [(8, 0.02), (4, 0.25)] {
            let options = LoadOptions { dtype: Some(Dtype::Float32), quantize: Some(Quant::affine(bits, 32)) };
            let q = model::load(&dir, &options).unwrap();
            assert!(q.model.model.layers[0].self_attn.q_proj.as_ref().is_some_and(|p| p.quant.is_some()));
            let err = relative_error(&values(&q.model.forward(&input, None).unwrap()), &reference);
            assert!(err < bound && err > 0.0, "{family:?} {bits}-bit: relative logit error {err}");
        }
    }
}

#[test]
fn a_model_loads_from_the_hugging_face_cache_layout() {
    let hub = temp("hub");
    let snapshot = hub.join("models--fixture-org--tiny-qwen3/snapshots/0123abcd");
    fixture::write(&snapshot, Family::Qwen3, Preset::Tiny, 1).unwrap();
    std::fs::create_dir_all(hub.join("models--fixture-org--tiny-qwen3/refs")).unwrap();
    std::fs::write(hub.join("models--fixture-org--tiny-qwen3/refs/main"), "0123abcd\n").unwrap();
    // Only this test reads the variable.
    std::env::set_var("HF_HUB_CACHE", &hub);
    let dir = model::hub::resolve("fixture-org/tiny-qwen3").unwrap();
    assert_eq!(dir, snapshot);
    assert!(model::load(&dir, &f32_options()).is_ok());
    let err = model::hub::resolve("fixture-org/absent").unwrap_err().to_string();
    assert!(err.contains("not in the Hugging Face cache"), "{err}");
}

fn load_err(dir: &Path) -> String {
    match model::load(dir, &f32_options()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn broken_directories_give_clear_errors() {
    let dir = fixture_dir(Family::Llama, "broken");
    std::fs::rename(dir.join("config.json"), dir.join("config.bak")).unwrap();
    assert!(load_err(&dir).contains("config.json: No such file"), "{}", load_err(&dir));
    std::fs::rename(dir.join("config.bak"), dir.join("config.json")).unwrap();

    edit_config(&dir, |c| c["model_type"] = "gpt_neox".into());
    let err = load_err(&dir);
    let supported = model::supported_model_types();
    assert!(supported.len() >= 11 && supported.contains(&"phi3".to_owned()) && supported.contains(&"gemma3".to_owned()), "{supported:?}");
    let expected = format!("model_type `gpt_neox` is not supported; supported: {} (a family is added as one file in host/src/model/", supported.join(", "));
    assert!(err.contains(&expected), "{err}");

    // A different width: every projection is mis-shaped, all are reported.
    edit_config(&dir, |c| {
        c["model_type"] = "llama".into();
        c["intermediate_size"] = 96.into();
    });
    let err = load_err(&dir);
    for layer in 0..2 {
        for proj in ["gate_proj", "up_proj", "down_proj"] {
            assert!(err.contains(&format!("wrong shape: model.layers.{layer}.mlp.{proj}.weight")), "{err}");
        }
    }
    edit_config(&dir, |c| c["intermediate_size"] = 128.into());

    // Tensors missing and unexpected, reported together.
    let weights = dir.join("model.safetensors");
    let mut tensors = Array::load_safetensors(&weights).unwrap();
    let moved = tensors.remove("model.norm.weight").unwrap();
    tensors.insert("model.final_norm.weight".to_owned(), moved);
    tensors.remove("model.layers.1.self_attn.k_proj.weight");
    // Loaded lazily from the file about to be rewritten: read everything first.
    mlx_rs::transforms::eval(tensors.values()).unwrap();
    Array::save_safetensors(tensors.iter().map(|(k, v)| (k.as_str(), v)), None, &weights).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("missing: model.layers.1.self_attn.k_proj.weight"), "{err}");
    assert!(err.contains("missing: model.norm.weight"), "{err}");
    assert!(err.contains("unexpected: model.final_norm.weight"), "{err}");

    // Truncated file.
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model.safetensors: cannot read safetensors"), "{err}");
    std::fs::remove_file(&weights).unwrap();
    assert!(load_err(&dir).contains("no model.safetensors or model.safetensors.index.json"));
    assert!(matches!(model::hub::resolve("/no/such/dir"), Err(ModelError::NotFound { .. })));
}

#[test]
fn quantized_checkpoints_round_trip_with_per_module_overrides() {
    use mlx_rs::module::ModuleParameters;
    let dir = fixture_dir(Family::Llama, "roundtrip");
    let options = LoadOptions { dtype: Some(Dtype::Float32), quantize: Some(Quant::affine(4, 32)) };
    let mut loaded = model::load(&dir, &options).unwrap();
    // mlx-lm's mixed recipes: one projection at 8 bits, the embeddings left in float.
    let eight = Quant::affine(8, 64);
    let down = loaded.model.model.layers[0].mlp.as_mut().and_then(|m| m.down_proj.as_mut()).expect("a dense layer");
    let dense = down.dense_weight(Dtype::Float32).unwrap();
    *down = host::nn::Linear::placeholder(down.in_dims, down.out_dims, false, None, Dtype::Float32).unwrap();
    *down.weight = dense;
    down.quantize(eight).unwrap();
    let embed = &mut loaded.model.model.embed_tokens;
    let q = embed.quant.unwrap();
    let dense = q.dequantize(&embed.weight, (*embed.scales).as_ref().unwrap(), (*embed.biases).as_ref(), Dtype::Float32).unwrap();
    *embed = host::nn::Embedding::placeholder(dense.shape()[0], embed.dims, None, Dtype::Float32).unwrap();
    *embed.weight = dense;
    let plan = loaded.quantization.as_mut().unwrap();
    plan.overrides.insert("model.layers.0.mlp.down_proj".into(), Some(eight));
    plan.overrides.insert("model.embed_tokens".into(), None);

    let out = temp("roundtrip-out");
    model::save(&loaded, &out).unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert!(out.join(file).is_file(), "{file} copied");
    }
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization"]["bits"], 4);
    assert_eq!(config["quantization"]["model.layers.0.mlp.down_proj"], serde_json::json!({"group_size": 64, "bits": 8, "mode": "affine"}));
    assert_eq!(config["quantization"]["model.embed_tokens"], false);
    assert_eq!(config["quantization_config"], config["quantization"]);

    let reloaded = model::load(&out, &f32_options()).unwrap();
    assert_eq!(reloaded.model.model.layers[0].mlp.as_ref().and_then(|m| m.down_proj.as_ref()).and_then(|d| d.quant), Some(eight));
    assert_eq!(reloaded.model.model.embed_tokens.quant, None);
    assert_eq!(reloaded.model.model.layers[1].mlp.as_ref().and_then(|m| m.down_proj.as_ref()).and_then(|d| d.quant), Some(Quant::affine(4, 32)));
    let ids = tokens(9, 6);
    let input = Array::from_slice(&ids, &[1, 9]);
    assert_eq!(values(&reloaded.model.forward(&input, None).unwrap()), values(&loaded.model.forward(&input, None).unwrap()));
    assert_eq!(reloaded.model.parameters().flatten().len(), loaded.model.parameters().flatten().len());

    let again = LoadOptions { dtype: Some(Dtype::Float32), quantize: Some(Quant::affine(8, 64)) };
    let err = model::load(&out, &again).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("already quantized"), "{err}");
}

#[test]
fn fixture_tokenizers_render_their_chat_templates_and_know_their_eos() {
    use host::text::TextTokenizer;
    use serde_json::json;
    let messages = [json!({"role": "system", "content": "Be brief."}), json!({"role": "user", "content": "What is 2 + 3?"})];
    let cases = [
        (Family::Qwen2, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>"),
        (Family::Llama, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 3?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
        (Family::Mistral, "<s>Be brief.\n\n[INST] What is 2 + 3? [/INST]", "</s>"),
    ];
    for (family, expected, eos) in cases {
        let dir = fixture_dir(family, "template");
        let t = TextTokenizer::load(&dir).unwrap();
        assert_eq!(t.render_chat(&messages, None, true).unwrap(), expected, "{family:?}");
        let eos_id = t.inner.token_to_id(eos).unwrap();
        assert!(t.eos_ids.contains(&eos_id), "{family:?}: {eos} is an EOS id");
        // Round trip through the BPE, special tokens included.
        let ids = t.encode_chat(&messages, None, true).unwrap();
        assert_eq!(t.decode(&ids, false).unwrap(), expected);
    }
    let dir = fixture_dir(Family::Qwen3, "tools");
    let t = TextTokenizer::load(&dir).unwrap();
    let tools = [json!({"type": "function", "function": {"name": "add"}})];
    let rendered = t.render_chat(&messages[1..], Some(&tools), false).unwrap();
    assert!(rendered.starts_with("<|im_start|>system\nYou may call these tools:\n{\"function\":{\"name\":\"add\"},\"type\":\"function\"}<|im_end|>"), "{rendered}");
    let err = TextTokenizer::load(&fixture_dir(Family::Mistral, "raise")).unwrap().render_chat(&[json!({"role": "tool", "content": "x"})], None, false).unwrap_err();
    assert!(err.contains("Only user, assistant and system roles are supported"), "{err}");
}
