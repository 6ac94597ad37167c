//! LoRA/DoRA on fixture models: targets and parameter counts, initial identity, adapter files in mlx-lm's
//! format, fusing, switching adapters off, QLoRA gradients.

use std::path::PathBuf;

use host::{
    fixture::{self, Family, Preset},
    lora::{self, LoraSettings},
    model::{self, CausalLm, LoadOptions},
    nn::Quant,
    plugins::Registry,
};
use mlx_rs::{module::ModuleParameters, Array, Dtype};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("host-lora-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn load(name: &str, family: Family, quantize: Option<Quant>) -> (CausalLm, PathBuf) {
    let dir = temp(name);
    fixture::write(&dir, family, Preset::Tiny, 2).unwrap();
    let loaded = model::load(&dir, &LoadOptions { dtype: Some(Dtype::Float32), quantize }).unwrap();
    (loaded.model, dir)
}

fn settings(rank: i32, dora: bool, last: Option<usize>) -> LoraSettings {
    LoraSettings { rank, scale: 2.0, dropout: 0.0, dora, last_n_layers: last }
}

fn mapper(kind: &str, config: &str) -> Box<dyn sdk::LoraTargetMapper> {
    Registry::builtin().unwrap().lora_target_mapper(kind, &config.parse().unwrap()).unwrap()
}

fn logits(m: &CausalLm) -> Vec<f32> {
    let ids: Vec<i32> = (0..8).map(|i| (i * 29 + 5) % 500).collect();
    let out = m.forward(&Array::from_slice(&ids, &[1, 8]), None).unwrap();
    out.contiguous().unwrap().to_vec_exact::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Gives every lora_b nonzero values so adapters change the output.
fn perturb(m: &mut CausalLm, seed: u64) {
    let key = mlx_rs::random::key(seed).unwrap();
    for (i, (_, l)) in m.linears_mut().into_iter().enumerate() {
        if let Some(b) = &mut *l.lora_b {
            let k = key.add(Array::from_slice(&[i as u32, 1], &[2])).unwrap();
            *b = mlx_rs::random::normal::<f32>(b.shape(), None, None, &k).unwrap().multiply(Array::from_f32(0.05)).unwrap();
        }
    }
}

// Tiny llama: hidden 64, 2 heads of 32, 1 KV head, intermediate 128, 2 layers, vocabulary 512.
const BASE_PARAMETERS: usize = 512 * 64 // embeddings
    + 2 * (64 * 64 + 32 * 64 + 32 * 64 + 64 * 64 + 128 * 64 * 3 + 2 * 64) // layers: q k v o, gate up down, 2 norms
    + 64 // final norm
    + 512 * 64; // lm_head

#[test]
fn parameter_counts_per_mapper() {
    let cases: [(&str, &str, Option<usize>, usize, usize); 4] = [
        // rank 4: A is in×4, B is 4×out.
        ("short_names", "targets = ['q_proj', 'v_proj']", None, 4, 2 * ((64 * 4 + 4 * 64) + (64 * 4 + 4 * 32))),
        ("all_linear", "", None, 14, 2 * (512 + 384 + 384 + 512 + 768 + 768 + 768)),
        ("all_linear", "", Some(1), 7, 512 + 384 + 384 + 512 + 768 + 768 + 768),
        ("regex", "pattern = 'model\\.layers\\.1\\.mlp\\..*'", None, 3, 768 * 3),
    ];
    for (i, (kind, config, last, modules, trainable)) in cases.into_iter().enumerate() {
        let (mut m, _) = load(&format!("counts{i}"), Family::Llama, None);
        let summary = lora::apply(&mut m, &*mapper(kind, config), &settings(4, false, last), 0).unwrap();
        assert_eq!(summary.targets.len(), modules, "{kind}");
        assert_eq!(summary.trainable, trainable, "{kind}");
        assert_eq!(summary.total, BASE_PARAMETERS + trainable, "{kind}");
        // Exactly the adapter tensors train.
        let names: Vec<String> = m.trainable_parameters().flatten().keys().map(|k| k.to_string()).collect();
        assert_eq!(names.len(), 2 * modules);
        assert!(names.iter().all(|n| n.ends_with(".lora_a") || n.ends_with(".lora_b")), "{names:?}");
    }
    let (mut m, _) = load("badlast", Family::Llama, None);
    let err = lora::apply(&mut m, &*mapper("all_linear", ""), &settings(4, false, Some(3)), 0).unwrap_err();
    assert_eq!(err.to_string(), "last_n_layers must be in 1..=2, got 3");
}

#[test]
fn fresh_adapters_leave_the_output_unchanged_and_can_be_switched_off() {
    for dora in [false, true] {
        let (mut m, _) = load(&format!("identity{dora}"), Family::Qwen2, None);
        let base = logits(&m);
        lora::apply(&mut m, &*mapper("all_linear", ""), &settings(4, dora, None), 1).unwrap();
        assert!(max_diff(&logits(&m), &base) < 1e-6, "dora={dora}");
        perturb(&mut m, 3);
        let adapted = logits(&m);
        assert!(max_diff(&adapted, &base) > 1e-3, "dora={dora}: adapters change the output");
        lora::set_enabled(&mut m, false);
        assert_eq!(logits(&m), base, "adapters off is the base model");
        lora::set_enabled(&mut m, true);
        assert_eq!(logits(&m), adapted);
    }
}

#[test]
fn adapter_files_use_mlx_lm_names_and_round_trip() {
    let (mut m, dir) = load("files", Family::Llama, None);
    lora::apply(&mut m, &*mapper("short_names", "targets = ['q_proj', 'v_proj', 'down_proj']"), &settings(4, false, Some(1)), 0).unwrap();
    perturb(&mut m, 5);
    let adapted = logits(&m);
    let out = temp("files-out");
    let mut extra = serde_json::Map::new();
    extra.insert("model".into(), serde_json::json!(dir.display().to_string()));
    lora::save_adapters(&mut m, &out, &extra).unwrap();

    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["fine_tune_type"], "lora");
    assert_eq!(config["num_layers"], 1);
    assert_eq!(config["lora_parameters"], serde_json::json!({"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": ["mlp.down_proj", "self_attn.q_proj", "self_attn.v_proj"]}));
    assert_eq!(config["model"], serde_json::json!(dir.display().to_string()));
    let tensors = Array::load_safetensors(out.join("adapters.safetensors")).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    assert_eq!(names.len(), 6);
    assert_eq!(names[0], "model.layers.1.mlp.down_proj.lora_a");
    assert_eq!(tensors["model.layers.1.self_attn.v_proj.lora_a"].shape(), &[64, 4], "lora_a is (in, rank)");
    assert_eq!(tensors["model.layers.1.self_attn.v_proj.lora_b"].shape(), &[4, 32], "lora_b is (rank, out)");

    let (mut fresh, _) = load("files-fresh", Family::Llama, None);
    let loaded = lora::load_adapters(&mut fresh, &out).unwrap();
    assert_eq!((loaded.rank, loaded.scale, loaded.dora), (4, 2.0, false));
    assert_eq!(logits(&fresh), adapted);

    // A tensor for a layer the model lacks, or of the wrong shape, is an error naming it.
    let mut bad = tensors.clone();
    bad.insert("model.layers.7.self_attn.q_proj.lora_a".into(), Array::zeros::<f32>(&[64, 4]).unwrap());
    mlx_rs::transforms::eval(bad.values()).unwrap();
    Array::save_safetensors(bad.iter().map(|(k, v)| (k.as_str(), v)), None, out.join("adapters.safetensors")).unwrap();
    let (mut fresh, _) = load("files-bad", Family::Llama, None);
    let err = lora::load_adapters(&mut fresh, &out).unwrap_err().to_string();
    assert!(err.contains("`model.layers.7.self_attn.q_proj` is not a linear layer of this model"), "{err}");
}

#[test]
fn fused_weights_reproduce_the_adapted_model() {
    for dora in [false, true] {
        let (mut m, _) = load(&format!("fuse{dora}"), Family::Mistral, None);
        lora::apply(&mut m, &*mapper("all_linear", ""), &settings(8, dora, None), 2).unwrap();
        perturb(&mut m, 7);
        let adapted = logits(&m);
        lora::fuse(&mut m, false).unwrap();
        assert!(m.linears_mut().iter().all(|(_, l)| l.adapter.is_none() && l.lora_a.is_none()));
        let d = max_diff(&logits(&m), &adapted);
        assert!(d < 1e-5, "dora={dora}: fused differs by {d}");
    }
}

#[test]
fn the_sampling_form_computes_the_adapted_model() {
    // Float32 (here the same sums: 0.0 observed), DoRA (which keeps its training form), and a bfloat16 model
    // whose float32 adapters the sampling form casts to bfloat16 (0.006 observed: bf16 rounding of x A).
    for (dtype, dora, tolerance) in [(Dtype::Float32, false, 1e-6), (Dtype::Float32, true, 0.0), (Dtype::Bfloat16, false, 0.02)] {
        let dir = temp(&format!("sampling-{dtype:?}-{dora}"));
        fixture::write(&dir, Family::Qwen2, Preset::Tiny, 3).unwrap();
        let mut m = model::load(&dir, &LoadOptions { dtype: Some(dtype), quantize: None }).unwrap().model;
        lora::apply(&mut m, &*mapper("all_linear", ""), &settings(8, dora, None), 2).unwrap();
        perturb(&mut m, 11);
        let ids = Array::from_slice(&[5i32, 77, 301, 12, 9, 450], &[1, 6]);
        let forward = |m: &CausalLm| m.forward(&ids, None).unwrap().as_dtype(Dtype::Float32).unwrap().to_vec_exact::<f32>().unwrap();
        let base = {
            lora::set_enabled(&mut m, false);
            let out = forward(&m);
            lora::set_enabled(&mut m, true);
            out
        };
        let training = forward(&m);
        assert!(max_diff(&training, &base) > 0.05, "the adapters must matter for this test to mean anything");
        lora::set_sampling(&mut m, true).unwrap();
        let in_form = m.linears_mut().iter().filter(|(_, l)| l.adapter.as_ref().is_some_and(|a| a.sampling.is_some())).count();
        assert_eq!(in_form, if dora { 0 } else { 14 }, "q k v o gate up down in 2 layers");
        let sampling = forward(&m);
        let d = max_diff(&sampling, &training);
        assert!(d <= tolerance, "{dtype:?} dora={dora}: sampling form differs by {d}");
        lora::set_sampling(&mut m, false).unwrap();
        assert_eq!(forward(&m), training, "switched off, the training form is back exactly");
    }
}

#[test]
fn qlora_trains_only_adapters_over_a_quantized_base() {
    let (mut m, _) = load("qlora", Family::Qwen3, Some(Quant::affine(4, 32)));
    let base = logits(&m);
    lora::apply(&mut m, &*mapper("short_names", "targets = ['attention']"), &settings(4, false, None), 0).unwrap();
    assert_eq!(logits(&m), base);
    let ids = Array::from_slice(&[3i32, 9, 27, 81], &[1, 4]);
    let loss = |model: &mut CausalLm, ids: &Array| -> Result<Vec<Array>, mlx_rs::error::Exception> {
        Ok(vec![model.forward(ids, None)?.square()?.mean(None)?])
    };
    let mut vg = mlx_rs::nn::value_and_grad(loss);
    let (_, grads) = vg(&mut m, &ids).unwrap();
    assert_eq!(grads.len(), 2 * 4 * 2);
    assert!(grads.keys().all(|k| k.ends_with("lora_a") || k.ends_with("lora_b")));
    // With B = 0 only B gets a gradient at first; it is nonzero.
    let gb = &grads["model.layers.0.self_attn.q_proj.lora_b"];
    assert!(gb.abs().unwrap().sum(None).unwrap().item_exact::<f32>() > 0.0);
    // Fusing into a quantized base re-quantizes (the adapters are folded in approximately); --dequantize keeps
    // the fused float weights exactly.
    perturb(&mut m, 9);
    let adapted = logits(&m);
    let mut dq = m.clone();
    lora::fuse(&mut dq, true).unwrap();
    assert!(dq.linears_mut().iter().all(|(_, l)| l.quant.is_none()));
    assert!(max_diff(&logits(&dq), &adapted) < 1e-5);
    lora::fuse(&mut m, false).unwrap();
    assert_eq!(m.model.layers[0].self_attn.q_proj.as_ref().unwrap().quant, Some(Quant::affine(4, 32)));
}

#[test]
fn host_fuse_writes_a_model_equal_to_base_plus_adapters() {
    let (mut m, dir) = load("cli-fuse", Family::Llama, None);
    lora::apply(&mut m, &*mapper("all_linear", ""), &settings(4, false, None), 0).unwrap();
    perturb(&mut m, 11);
    let adapted = logits(&m);
    let adapters = temp("cli-fuse-adapters");
    lora::save_adapters(&mut m, &adapters, &serde_json::Map::new()).unwrap();
    let out = temp("cli-fuse-out");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_host"))
        .args(["fuse", "--model", dir.to_str().unwrap(), "--adapter", adapters.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let fused = model::load(&out, &LoadOptions { dtype: Some(Dtype::Float32), quantize: None }).unwrap().model;
    assert!(max_diff(&logits(&fused), &adapted) < 1e-5);
    assert!(out.join("tokenizer.json").is_file());
}

#[test]
fn host_generate_applies_adapters_unfused_or_fused() {
    let (mut m, dir) = load("cli-generate", Family::Llama, None);
    lora::apply(&mut m, &*mapper("all_linear", ""), &settings(4, true, None), 0).unwrap();
    perturb(&mut m, 5);
    let adapters = temp("cli-generate-adapters");
    lora::save_adapters(&mut m, &adapters, &serde_json::Map::new()).unwrap();
    // The reference: greedy first token and its log-probability from the adapted model in this process.
    let ids: Vec<i32> = (0..8).map(|i| (i * 29 + 5) % 500).collect();
    let all = logits(&m);
    let last = &all[all.len() - 512..];
    let max = last.iter().cloned().fold(f32::MIN, f32::max);
    let log_z = max + last.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
    let (first, best) = last.iter().enumerate().fold((0, f32::MIN), |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc });

    let run = |extra: &[&str]| -> serde_json::Value {
        let prompt = serde_json::to_string(&ids).unwrap();
        let mut args = vec!["generate", "--model", dir.to_str().unwrap(), "--prompt-ids", &prompt, "--max-tokens", "6"];
        args.extend(["--json", "--ignore-eos", "--dtype", "f32"]);
        args.extend(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_host")).args(&args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let adapted = run(&["--adapter", adapters.to_str().unwrap()]);
    assert_eq!(adapted["tokens"][0].as_u64(), Some(first as u64));
    let logprob = adapted["logprobs"][0].as_f64().unwrap() as f32;
    assert!((logprob - (best - log_z)).abs() < 1e-4, "{logprob} vs {}", best - log_z);
    let fused = run(&["--adapter", adapters.to_str().unwrap(), "--fuse"]);
    assert_eq!(fused["tokens"], adapted["tokens"]);
    let base = run(&[]);
    let base_logprob = base["logprobs"][0].as_f64().unwrap() as f32;
    assert!((base_logprob - logprob).abs() > 1e-3 || base["tokens"] != adapted["tokens"], "the adapters changed nothing");
}

/// Log-probs through the output head in chunks (what a 262k vocabulary needs) equal the one-piece
/// computation, values and gradients, the head's own adapter included: the chunks recompute their logits in
/// the backward pass instead of keeping them.
#[test]
fn chunked_log_probs_and_their_gradients_equal_the_unchunked() {
    let (mut m, _) = load("chunked", Family::Llama, None);
    lora::apply(&mut m, &*mapper("regex", "pattern = '.*(q_proj|down_proj|lm_head)'"), &settings(4, false, None), 0).unwrap();
    perturb(&mut m, 4);
    let ids: Vec<i32> = (0..2 * 9).map(|i| (i * 37 + 11) % 500).collect();
    let inputs = Array::from_slice(&ids, &[2, 9]);
    let targets = Array::from_slice(&ids.iter().map(|t| (t + 1) % 500).collect::<Vec<_>>(), &[2, 9]);
    let run = |m: &mut CausalLm, chunk: usize| {
        let loss = move |model: &mut CausalLm, (x, y): (&Array, &Array)| -> Result<Vec<Array>, mlx_rs::error::Exception> {
            let hidden = model.model.forward(x, None)?;
            let (lp, ent) = host::train::logps_from_hidden(model, &hidden, y, true, chunk)?;
            Ok(vec![lp.sum(None)?.add(ent.unwrap().sum(None)?.multiply(Array::from_f32(0.1))?)?, lp])
        };
        let mut vg = mlx_rs::nn::value_and_grad(loss);
        vg(m, (&inputs, &targets)).unwrap()
    };
    let diff = |a: &Array, b: &Array| a.subtract(b).unwrap().abs().unwrap().max(None).unwrap().item_exact::<f32>();
    let (whole, whole_grads) = run(&mut m, 1000);
    // 18 positions in chunks of 5: four chunks, the last one short.
    let (chunked, chunked_grads) = run(&mut m, 5);
    assert!(diff(&whole[1], &chunked[1]) < 1e-6, "log-probs differ by {}", diff(&whole[1], &chunked[1]));
    assert!((whole[0].item_exact::<f32>() - chunked[0].item_exact::<f32>()).abs() < 1e-4);
    assert!(whole_grads.contains_key("lm_head.lora_b"), "the head's adapter trains");
    assert_eq!(whole_grads.len(), chunked_grads.len());
    for (name, g) in &whole_grads {
        // Matmuls over 5 rows instead of 18 block differently: float rounding, relative to the gradient.
        let scale = g.abs().unwrap().max(None).unwrap().item_exact::<f32>().max(1e-6);
        let d = diff(g, &chunked_grads[name]);
        assert!(d <= 1e-5 * scale.max(1.0), "{name}: gradient differs by {d} (max {scale})");
    }
}

/// A 4-bit base (group 32) written to disk with adapters on every linear layer whose B is normal(0, σ).
fn quantized_base_with_adapters(name: &str, sigma: Option<f32>) -> (PathBuf, PathBuf) {
    let dir = temp(name);
    fixture::write(&dir.join("float"), Family::Llama, Preset::Tiny, 4).unwrap();
    let q = model::load(&dir.join("float"), &LoadOptions { dtype: Some(Dtype::Float32), quantize: Some(Quant::affine(4, 32)) }).unwrap();
    model::save(&q, &dir.join("base")).unwrap();
    let mut m = model::load(&dir.join("base"), &LoadOptions::default()).unwrap().model;
    lora::apply(&mut m, &*mapper("all_linear", ""), &LoraSettings { rank: 4, scale: 10.0, dropout: 0.0, dora: false, last_n_layers: None }, 1).unwrap();
    if let Some(sigma) = sigma {
        perturb(&mut m, 9);
        for (_, l) in m.linears_mut() {
            if let Some(b) = &mut *l.lora_b {
                *b = b.multiply(Array::from_f32(sigma / 0.05)).unwrap();
            }
        }
    }
    lora::save_adapters(&mut m, &dir.join("adapters"), &Default::default()).unwrap();
    (dir.join("base"), dir.join("adapters"))
}

#[test]
fn fuse_checks_that_the_fused_model_reproduces_the_adapters() {
    // Adapters of a trained size survive re-quantization with the base's 4 bits: the fused model carries
    // their change to the logits, plus rounding noise well below it.
    let (base, adapters) = quantized_base_with_adapters("fuse-ok", Some(0.05));
    let out = base.with_file_name("fused");
    let report = lora::fuse_verified(&base, &adapters, &out, false).unwrap();
    eprintln!("4-bit, trained-size adapters: {report:?}");
    assert!(report.requantized && report.kept > 0.9 && report.noise < 0.5, "{report:?}");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization"]["bits"], 4, "re-quantized with the base's settings");

    // An update far below a 4-bit step is rounded away by re-quantization: refused, naming --dequantize,
    // and nothing is left at the output path. Fused in float it is kept (float32 error only).
    let (base, adapters) = quantized_base_with_adapters("fuse-tiny", Some(2e-5));
    let out = base.with_file_name("fused");
    let err = lora::fuse_verified(&base, &adapters, &out, false).unwrap_err().to_string();
    eprintln!("tiny adapters re-quantized: {err}");
    assert!(err.contains("does not reproduce the adapters") && err.contains("--dequantize"), "{err}");
    assert!(!out.exists(), "a refused fuse leaves no directory");
    let report = lora::fuse_verified(&base, &adapters, &out, true).unwrap();
    eprintln!("tiny adapters fused in float: {report:?}");
    assert!(!report.requantized && (report.kept - 1.0).abs() < 1e-3 && report.noise < 1e-3, "{report:?}");

    // Untrained adapters (B = 0) change nothing: fusing them is refused too.
    let (base, adapters) = quantized_base_with_adapters("fuse-zero", None);
    let err = lora::fuse_verified(&base, &adapters, &base.with_file_name("fused"), true).unwrap_err().to_string();
    assert!(err.contains("change no logit"), "{err}");
}
