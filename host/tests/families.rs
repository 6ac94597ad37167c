//! Every model family beyond the first four trains end to end on a tiny fixture of its own architecture:
//! SFT and DPO lower their loss, GRPO samples, scores and steps. (Their logits against mlx-lm's are in
//! mlx_lm_reference.rs.)

use std::path::{Path, PathBuf};

use host::{
    cache, lora,
    config::{Override, RunConfig},
    fixture::{self, Family, Preset},
    generate::{generate, Control, GenerateOptions, Sampler, SamplerConfig},
    model::{self, LoadOptions},
    plugins::Registry,
    train,
};
use mlx_rs::{Array, Dtype};

const FAMILIES: [Family; 9] = [Family::Smollm3, Family::Olmo2, Family::Granite, Family::Gemma3Text, Family::Gemma2, Family::Phi3, Family::Qwen3Moe, Family::Mixtral, Family::GptOss];

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("host-families-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Where [`temp`] put `name`, without clearing it.
fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("host-families-{}-{name}", std::process::id()))
}

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data").join(name).join("train.jsonl").display().to_string()
}

/// Decoding through each KV cache policy gives the log-probs of one forward over the whole sequence: the
/// cache offsets, NoPE layers, multipliers, soft-capping (also over quantized keys) and sliding windows
/// (Gemma's local layers get a rotating cache of their window whatever the policy; the fixture's window is 4,
/// the sequence 12) all agree with the uncached, masked forward used in training.
#[test]
fn cached_decoding_equals_the_full_forward_for_every_family() {
    let registry = Registry::builtin().unwrap();
    for family in Family::ALL {
        let dir = temp(&format!("{family:?}-cache"));
        fixture::write(&dir, family, Preset::Tiny, 9).unwrap();
        let m = model::load(&dir, &LoadOptions { dtype: Some(Dtype::Float32), quantize: None }).unwrap().model;
        let prompt: Vec<u32> = vec![5, 17, 99, 200, 33, 41];
        for kind in ["standard", "rotating", "quantized"] {
            let table: sdk::toml::Table = match kind {
                "rotating" => "max_size = 16".parse().unwrap(),
                "quantized" => "bits = 8\ngroup_size = 32".parse().unwrap(),
                _ => sdk::toml::Table::new(),
            };
            let policy = registry.kv_cache_policy(kind, &table).unwrap();
            let mut caches = cache::for_layers(&*policy, &m.attention_windows()).unwrap();
            let greedy = SamplerConfig { temperature: 0.0, ..Default::default() };
            let options = GenerateOptions { max_tokens: 6, ..Default::default() };
            let (out, _) = generate(&m, &[prompt.clone()], &mut caches, &mut Sampler::new(greedy, 0).unwrap(), &options, &mut |_: usize, _: u32| Control::Continue).unwrap();
            let tokens = &out[0].tokens;
            assert_eq!(tokens.len(), 6, "{family:?} {kind}");
            let ids: Vec<i32> = prompt.iter().chain(tokens).map(|&t| t as i32).collect();
            let logits = m.forward(&Array::from_slice(&ids, &[1, ids.len() as i32]), None).unwrap();
            let logprobs = logits.subtract(mlx_rs::ops::logsumexp_axis(&logits, -1, true).unwrap()).unwrap();
            let v = m.config.vocab_size as usize;
            let flat = logprobs.as_slice::<f32>();
            for (i, (&t, &lp)) in tokens.iter().zip(&out[0].logprobs).enumerate() {
                let position = prompt.len() - 1 + i;
                let row = &flat[position * v..(position + 1) * v];
                // Greedy: the token is the full forward's argmax, and its log-prob matches to float rounding
                // (incremental and whole-sequence attention sum in different orders; |log p| ≈ 6).
                // An 8-bit cache changes keys and values by up to half a quantization step (range/255 of a
                // group): its tokens may differ where the top two are that close, so it is held to the full
                // forward's log-probs of its own tokens within 1e-2 (measured up to 2.6e-3), the float caches to
                // argmax and 1e-4. That is coarse: it catches a wrong offset or mask, not a dropped soft-cap
                // (2.7e-4 on the gemma2 fixture, tried), which the float caches and mlx-lm parity cover.
                if kind == "quantized" {
                    assert!((row[t as usize] - lp).abs() < 1e-2, "{family:?} {kind}: step {i}: {} vs {lp}", row[t as usize]);
                    continue;
                }
                let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(j, _)| j).unwrap();
                assert_eq!(t as usize, best, "{family:?} {kind}: step {i}");
                assert!((row[t as usize] - lp).abs() < 1e-4, "{family:?} {kind}: step {i}: {} vs {lp}", row[t as usize]);
            }
        }
    }
}

/// Runs `sections` (everything but [model] and [output]) on a fresh fixture of `family`; the metrics records.
fn run(family: Family, name: &str, sections: &str, steps: u64) -> Vec<serde_json::Value> {
    try_run(family, name, sections, steps).unwrap_or_else(|e| panic!("{family:?} {name}: {e}"))
}

/// [`run`], its error as text.
fn try_run(family: Family, name: &str, sections: &str, steps: u64) -> Result<Vec<serde_json::Value>, String> {
    let dir = temp(&format!("{family:?}-{name}"));
    fixture::write(&dir.join("model"), family, Preset::Tiny, 5).unwrap();
    // A trailing `[train]` table in `sections` joins the one written here.
    let (sections, train_keys) = sections.split_once("[train]\n").unwrap_or((sections, ""));
    let text = format!(
        "[model]\npath = {:?}\n{sections}\n[train]\nsteps = {steps}\nsave_every = {steps}\nseed = 2\n{train_keys}\n[output]\ndir = {:?}\n",
        dir.join("model").display().to_string(),
        dir.join("run").display().to_string()
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    let mut registry = Registry::builtin().unwrap();
    let cfg = RunConfig::load(&path, &[] as &[Override], &mut registry).map_err(|e| e.to_string())?;
    let outcome = train::run(&cfg, &registry, None).map_err(|e| e.to_string())?;
    assert_eq!(outcome.steps, steps, "{family:?} {name}");
    Ok(std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect())
}

fn losses(log: &[serde_json::Value]) -> Vec<f64> {
    log.iter().filter_map(|r| r.get("loss")?.as_f64()).collect()
}

/// Mean of the first and of the last `n` values.
fn ends(v: &[f64], n: usize) -> (f64, f64) {
    (v[..n].iter().sum::<f64>() / n as f64, v[v.len() - n..].iter().sum::<f64>() / n as f64)
}

#[test]
fn sft_lowers_the_loss_for_every_family() {
    for family in FAMILIES {
        let sections = format!(
            "[lora]\nrank = 8\nscale = 20.0\n[data]\ntrain = {:?}\nmask = \"prompt\"\nbatch_size = 4\npad_multiple = 8\ncache = {{ kind = \"none\" }}\n[optimizer]\nlr = 3e-3",
            data("sft")
        );
        let l = losses(&run(family, "sft", &sections, 20));
        let (first, last) = ends(&l, 4);
        if family == Family::Qwen3Moe {
            // The experts' own adapters trained (B starts at zero).
            let adapters = Array::load_safetensors(temp_path(&format!("{family:?}-sft")).join("run/adapters.safetensors")).unwrap();
            let b = &adapters["model.layers.1.mlp.switch_mlp.down_proj.lora_b"];
            assert_eq!(b.shape(), &[8, 64, 8]);
            assert!(b.abs().unwrap().max(None).unwrap().item_exact::<f32>() > 0.0, "expert adapters moved");
        }
        // A random fixture starts near ln(512) = 6.24 on every batch alike, so 0.1 nat lower is learning (Phi-3,
        // with four adapted modules a layer instead of seven, gets the least: 0.17 in 20 steps).
        assert!(last < first - 0.1, "{family:?}: loss {first:.3} -> {last:.3}");
    }
}

#[test]
fn dpo_lowers_the_loss_for_every_family() {
    for family in FAMILIES {
        let sections = format!(
            "[lora]\nrank = 8\nscale = 20.0\n[data]\ntrain = {:?}\nbatch_size = 4\npad_multiple = 8\ncache = {{ kind = \"none\" }}\n[loss]\nkind = \"dpo\"\nbeta = 0.1\n[optimizer]\nlr = 2e-3",
            data("preference")
        );
        let log = run(family, "dpo", &sections, 20);
        let l = losses(&log);
        // Step 1: the policy is its reference, so the loss is ln 2 up to rounding.
        assert!((l[0] - std::f64::consts::LN_2).abs() < 1e-4, "{family:?}: {}", l[0]);
        // 20 steps: at lr 2e-3 a step's loss moves by ±0.05 on these four-pair batches, and Gemma 2 (soft-capped
        // scores) learns slowest: over 12 steps its margin was within that noise and a rounding-level change
        // (the adapters' addmm) tipped it; over 20 it falls 0.05, the others 0.08-0.31.
        let (first, last) = ends(&l, 3);
        assert!(last < first - 0.02, "{family:?}: loss {first:.4} -> {last:.4}");
        assert!(log.iter().all(|r| r.get("rewards/accuracies").is_some()), "{family:?}");
    }
}

#[test]
fn grpo_samples_scores_and_steps_for_every_family() {
    for family in FAMILIES {
        let sections = format!(
            "[lora]\nrank = 4\nscale = 20.0\n[data]\ntrain = {:?}\nbatch_size = 2\nmax_seq_length = 96\n[rollout]\nnum_generations = 4\nmax_tokens = 8\n[[reward]]\nkind = \"length_penalty\"\nper_token = 0.01\n[loss]\nkind = \"grpo\"\n[optimizer]\nlr = 1e-3",
            data("grpo")
        );
        let log = run(family, "grpo", &sections, 3);
        for r in &log {
            let mean = r["completions/mean_length"].as_f64().unwrap();
            assert!(mean > 0.0 && mean <= 8.0, "{family:?}: {r}");
            // The length penalty is exactly -0.01 per completion token.
            assert!((r["reward"].as_f64().unwrap() + 0.01 * mean).abs() < 1e-9, "{family:?}: {r}");
            assert!(r["loss"].as_f64().unwrap().is_finite(), "{family:?}: {r}");
        }
    }
}

/// The routers' load-balancing loss joins the training loss times `router_aux_loss_coef` and is logged as
/// `router_aux_loss`, in SFT (with and without checkpointed layers), DPO and GRPO.
#[test]
fn moe_training_adds_the_weighted_router_loss_and_logs_it() {
    let sft = |extra: &str| {
        format!(
            "[lora]\nrank = 8\nscale = 20.0\n[data]\ntrain = {:?}\nmask = \"prompt\"\nbatch_size = 4\npad_multiple = 8\ncache = {{ kind = \"none\" }}\n[optimizer]\nlr = 3e-3\n[train]\n{extra}",
            data("sft")
        )
    };
    let first = |log: &[serde_json::Value], key: &str| log[0][key].as_f64().unwrap_or_else(|| panic!("no {key} in {}", log[0]));
    for family in [Family::Qwen3Moe, Family::Mixtral, Family::GptOss] {
        let plain = run(family, "aux0", &sft("router_aux_loss_coef = 0.0"), 2);
        let routed = run(family, "aux1", &sft("router_aux_loss_coef = 0.5"), 2);
        assert!(plain[0].get("router_aux_loss").is_none(), "off by default: {}", plain[0]);
        let aux = first(&routed, "router_aux_loss");
        // Two experts per token: exactly 2 when balanced, up to 2·E/… when not; a random router is near 2.
        assert!((1.5..4.0).contains(&aux), "{family:?}: {aux}");
        // Step 1 starts from the same weights: the losses differ by exactly 0.5 × the router loss.
        let (l0, l1) = (first(&plain, "loss"), first(&routed, "loss"));
        assert!((l1 - l0 - 0.5 * aux).abs() < 1e-5, "{family:?}: {l1} - {l0} vs 0.5 × {aux}");
        // Checkpointed layers compute the same loss and the same update (Mixtral: both layers sparse).
        if family != Family::Mixtral {
            continue;
        }
        let ckpt = run(family, "aux-ckpt", &sft("router_aux_loss_coef = 0.5\ngradient_checkpointing = \"on\""), 2);
        for key in ["loss", "router_aux_loss"] {
            for step in 0..2 {
                let (a, b) = (routed[step][key].as_f64().unwrap(), ckpt[step][key].as_f64().unwrap());
                assert!((a - b).abs() < 1e-5, "{family:?} step {} {key}: {a} vs {b}", step + 1);
            }
        }
    }
    let dpo = format!(
        "[lora]\nrank = 8\nscale = 20.0\n[data]\ntrain = {:?}\nbatch_size = 4\npad_multiple = 8\ncache = {{ kind = \"none\" }}\n[loss]\nkind = \"dpo\"\nbeta = 0.1\n[optimizer]\nlr = 2e-3\n[train]\nrouter_aux_loss_coef = 0.01",
        data("preference")
    );
    let log = run(Family::Qwen3Moe, "aux-dpo", &dpo, 2);
    // Step 1: DPO's ln 2 plus 0.01 × the router loss.
    assert!((first(&log, "loss") - std::f64::consts::LN_2 - 0.01 * first(&log, "router_aux_loss")).abs() < 1e-4, "{}", log[0]);
    let grpo = format!(
        "[lora]\nrank = 4\nscale = 20.0\n[data]\ntrain = {:?}\nbatch_size = 2\nmax_seq_length = 96\n[rollout]\nnum_generations = 4\nmax_tokens = 8\n[[reward]]\nkind = \"length_penalty\"\nper_token = 0.01\n[loss]\nkind = \"grpo\"\n[optimizer]\nlr = 1e-3\n[train]\nrouter_aux_loss_coef = 0.01",
        data("grpo")
    );
    let log = run(Family::GptOss, "aux-grpo", &grpo, 2);
    assert!(log.iter().all(|r| r["router_aux_loss"].as_f64().is_some_and(|a| a > 1.0)), "{log:?}");

    // A dense model has no router: the setting is refused, not ignored.
    let err = try_run(Family::Smollm3, "aux-dense", &sft("router_aux_loss_coef = 0.5"), 1).unwrap_err();
    assert!(err.contains("router_aux_loss_coef") && err.contains("no mixture-of-experts"), "{err}");
    let err = try_run(Family::Mixtral, "aux-negative", &sft("router_aux_loss_coef = -1.0"), 1).unwrap_err();
    assert!(err.contains("router_aux_loss_coef") && err.contains("positive"), "{err}");
}

#[test]
fn a_multimodal_gemma3_checkpoint_loads_its_language_model_and_saves_as_gemma3_text() {
    let dir = temp("gemma3-multimodal");
    fixture::write(&dir.join("text"), Family::Gemma3Text, Preset::Tiny, 3).unwrap();
    fixture::wrap_gemma3(&dir.join("text"), &dir.join("multimodal")).unwrap();
    let options = LoadOptions { dtype: Some(Dtype::Float32), quantize: None };
    let ids = Array::from_slice(&[5i32, 17, 99, 200, 33, 41, 7], &[1, 7]);
    let logits = |m: &model::CausalLm| m.forward(&ids, None).unwrap().as_slice::<f32>().to_vec();
    let text = model::load(&dir.join("text"), &options).unwrap();
    let multimodal = model::load(&dir.join("multimodal"), &options).unwrap();
    assert_eq!(multimodal.args.model_type, "gemma3_text");
    assert_eq!(logits(&multimodal.model), logits(&text.model));
    // Saved (here quantized on load), it is a text-only gemma3_text directory.
    let q = LoadOptions { dtype: Some(Dtype::Float32), quantize: Some(host::nn::Quant::affine(8, 32)) };
    model::save(&model::load(&dir.join("multimodal"), &q).unwrap(), &dir.join("saved")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("saved/config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "gemma3_text");
    let saved = model::load(&dir.join("saved"), &options).unwrap();
    let quantized_on_load = model::load(&dir.join("multimodal"), &q).unwrap();
    assert_eq!(logits(&saved.model), logits(&quantized_on_load.model));
    // A multimodal config without its text part is an error naming the key.
    let mut bad: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("multimodal/config.json")).unwrap()).unwrap();
    bad.as_object_mut().unwrap().remove("text_config");
    std::fs::write(dir.join("multimodal/config.json"), bad.to_string()).unwrap();
    let err = model::load(&dir.join("multimodal"), &options).err().unwrap().to_string();
    assert!(err.contains("text_config"), "{err}");
}

/// For every family: adapters on every linear (short names, so Phi-3's fused projections are adapted
/// through the names of their parts), fused into the weights, give the adapted model's logits; the fused
/// model saved and reloaded gives them again; and a 4-bit quantized copy saved by us reloads to the logits
/// it had before saving.
#[test]
fn fuse_and_quantize_round_trip_for_every_family() {
    let registry = Registry::builtin().unwrap();
    let mapper = registry.lora_target_mapper("short_names", &"targets = ['q_proj', 'v_proj', 'up_proj', 'down_proj']".parse().unwrap()).unwrap();
    let settings = lora::LoraSettings { rank: 4, scale: 2.0, dropout: 0.0, dora: false, last_n_layers: None };
    let ids = Array::from_slice(&[5i32, 17, 99, 200, 33, 41, 7], &[1, 7]);
    let logits = |m: &model::CausalLm| m.forward(&ids, None).unwrap().as_slice::<f32>().to_vec();
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let f32_options = LoadOptions { dtype: Some(Dtype::Float32), quantize: None };
    for family in Family::ALL {
        let dir = temp(&format!("{family:?}-fuse"));
        fixture::write(&dir.join("model"), family, Preset::Tiny, 8).unwrap();
        let mut loaded = model::load(&dir.join("model"), &f32_options).unwrap();
        let summary = lora::apply(&mut loaded.model, &*mapper, &settings, 1).unwrap();
        assert!(!summary.targets.is_empty(), "{family:?}");
        for (i, (_, l)) in loaded.model.linears_mut().into_iter().enumerate() {
            if let Some(b) = &mut *l.lora_b {
                let key = mlx_rs::random::key(i as u64).unwrap();
                *b = mlx_rs::random::normal::<f32>(b.shape(), None, None, &key).unwrap().multiply(Array::from_f32(0.05)).unwrap();
            }
        }
        let adapted = logits(&loaded.model);
        lora::fuse(&mut loaded.model, false).unwrap();
        let fused = logits(&loaded.model);
        // W + s·B·Aᵀ summed once instead of x·W + s·(x·A)·B: float rounding only.
        assert!(max_diff(&fused, &adapted) < 1e-5, "{family:?}: fused differs by {}", max_diff(&fused, &adapted));
        model::save(&loaded, &dir.join("fused")).unwrap();
        let reloaded = model::load(&dir.join("fused"), &f32_options).unwrap();
        assert_eq!(logits(&reloaded.model), fused, "{family:?}: the saved fused model");
        let q = LoadOptions { dtype: Some(Dtype::Float32), quantize: Some(host::nn::Quant::affine(4, 32)) };
        let quantized = model::load(&dir.join("model"), &q).unwrap();
        model::save(&quantized, &dir.join("q4")).unwrap();
        assert_eq!(logits(&model::load(&dir.join("q4"), &f32_options).unwrap().model), logits(&quantized.model), "{family:?}: 4-bit");
    }
}

/// Sliding windows are read as transformers reads them: Qwen only with `use_sliding_window` (from
/// `max_window_layers` on) or per `layer_types`, Mistral's on every layer; a window without a size is an error.
#[test]
fn sliding_window_keys_resolve_as_transformers_reads_them() {
    let resolve = |extra: serde_json::Value| {
        let mut c = serde_json::json!({
            "model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 3, "intermediate_size": 128,
            "num_attention_heads": 2, "vocab_size": 512, "sliding_window": 4
        });
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let args: model::HfArgs = serde_json::from_value(c).unwrap();
        model::family_config(&args).map(|c| c.layer_window)
    };
    assert_eq!(resolve(serde_json::json!({})).unwrap(), vec![None; 3]);
    assert_eq!(resolve(serde_json::json!({"use_sliding_window": true, "max_window_layers": 1})).unwrap(), vec![None, Some(4), Some(4)]);
    assert_eq!(resolve(serde_json::json!({"model_type": "qwen3", "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]})).unwrap(), vec![Some(4), None, Some(4)]);
    assert_eq!(resolve(serde_json::json!({"model_type": "mistral"})).unwrap(), vec![Some(4); 3]);
    assert_eq!(resolve(serde_json::json!({"model_type": "mistral", "sliding_window": null})).unwrap(), vec![None; 3]);
    // A window no shorter than the context never binds: no window (and no rotating cache) at all.
    assert_eq!(resolve(serde_json::json!({"model_type": "mistral", "max_position_embeddings": 4})).unwrap(), vec![None; 3]);
    assert_eq!(resolve(serde_json::json!({"model_type": "mistral", "max_position_embeddings": 5})).unwrap(), vec![Some(4); 3]);
    let err = resolve(serde_json::json!({"use_sliding_window": true, "max_window_layers": 0, "sliding_window": null})).unwrap_err();
    assert!(err.contains("sliding_window"), "{err}");
}

/// Quantized experts (`gather_qmm`) with LoRA adapters of their own (QLoRA on the experts) compute what their
/// dequantized weights with the same adapters compute through `gather_mm`, on few tokens (unsorted pairs) and
/// on many (sorted by expert), and the quantized model stays close to the float one. (mlx-lm 0.32.2 cannot run quantized experts on mlx 0.32.2, so this stands in for parity.)
#[test]
fn quantized_experts_compute_with_their_dequantized_weights() {
    let dir = temp("moe-q4");
    fixture::write(&dir, Family::Qwen3Moe, Preset::Tiny, 3).unwrap();
    let f32_options = LoadOptions { dtype: Some(Dtype::Float32), quantize: None };
    let float = model::load(&dir, &f32_options).unwrap().model;
    let q = LoadOptions { dtype: Some(Dtype::Float32), quantize: Some(host::nn::Quant::affine(4, 32)) };
    let mut quantized = model::load(&dir, &q).unwrap().model;
    // QLoRA: adapters on the quantized experts too (B nonzero so they act), kept through dequantization.
    let mapper = Registry::builtin().unwrap().lora_target_mapper("all_linear", &toml::Table::new()).unwrap();
    let settings = lora::LoraSettings { rank: 4, scale: 2.0, dropout: 0.0, dora: false, last_n_layers: None };
    let summary = lora::apply(&mut quantized, &*mapper, &settings, 1).unwrap();
    assert!(summary.targets.iter().any(|t| t.ends_with("switch_mlp.gate_proj")), "{:?}", summary.targets);
    for (i, (_, s)) in quantized.switches_mut().into_iter().enumerate() {
        let b = (*s.lora_b).clone().unwrap();
        *s.lora_b = Some(mlx_rs::random::normal::<f32>(b.shape(), None, Some(0.05), &mlx_rs::random::key(i as u64).unwrap()).unwrap());
    }
    let mut dequantized = quantized.clone();
    let switches = dequantized.switches_mut();
    assert!(switches.iter().any(|(_, s)| s.quant.is_some()), "experts are quantized");
    for (_, s) in switches {
        if let (Some(qu), Some(sc), Some(bi)) = (s.quant, (*s.scales).clone(), (*s.biases).clone()) {
            *s.weight = qu.dequantize(&s.weight, &sc, Some(&bi), Dtype::Float32).unwrap();
            *s.scales = None;
            *s.biases = None;
            s.quant = None;
        }
    }
    // Dequantize only the base weights of the linear layers, adapters kept.
    for (_, l) in dequantized.linears_mut() {
        if let (Some(qu), Some(sc), Some(bi)) = (l.quant, (*l.scales).clone(), (*l.biases).clone()) {
            *l.weight = qu.dequantize(&l.weight, &sc, Some(&bi), Dtype::Float32).unwrap();
            *l.scales = None;
            *l.biases = None;
            l.quant = None;
        }
    }
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    for len in [5usize, 48] {
        // 5 tokens × 2 experts = 10 pairs (unsorted); 48 × 2 = 96 pairs (sorted by expert).
        let ids: Vec<i32> = (0..len as i32).map(|i| (i * 37 + 11) % 500).collect();
        let ids = Array::from_slice(&ids, &[1, len as i32]);
        let run = |m: &model::CausalLm| m.forward(&ids, None).unwrap().as_slice::<f32>().to_vec();
        let (a, b, f) = (run(&quantized), run(&dequantized), run(&float));
        let scale = f.iter().fold(0f32, |m, v| m.max(v.abs()));
        // The same products in float32 through two kernels: ~1e-7 of the logits; a wrong expert, transpose
        // or unsort is of their whole size.
        assert!(max_diff(&a, &b) <= 1e-5 * scale.max(1.0), "{len} tokens: quantized vs dequantized {}", max_diff(&a, &b));
        // 4-bit groups of random Gaussian weights move the tiny model's logits by ~20% of their peak (measured
        // 0.104 of 0.514): a loose bound, which a model computing something else (|Δ| ≈ 2× peak) still fails.
        assert!(max_diff(&a, &f) <= 0.4 * scale, "{len} tokens: quantized vs float {} of {scale}", max_diff(&a, &f));
    }
}

/// OpenAI's gpt-oss layout (experts in MXFP4 as `gate_up_proj_blocks` [E, 2I, H/32, 16] uint8 with gate and
/// up rows alternating, `_scales`, `_bias`; `quantization_config.quant_method = "mxfp4"`; the rest float)
/// loads to exactly the model whose experts were packed here; and transformers' float layout
/// (`gate_up_proj` [E, H, 2I] used as x·W) loads to the float model.
#[test]
fn gpt_oss_loads_openai_mxfp4_and_transformers_float_experts() {
    use host::nn::{Quant, QuantMode};
    use mlx_rs::ops;
    let dir = temp("gpt-oss-layouts");
    fixture::write(&dir.join("mlx"), Family::GptOss, Preset::Tiny, 21).unwrap();
    let f32_options = LoadOptions { dtype: Some(Dtype::Float32), quantize: None };
    let ids = Array::from_slice(&[5i32, 17, 99, 200, 33, 41, 7, 300, 2, 8, 9, 10], &[1, 12]);
    let logits = |m: &model::CausalLm| m.forward(&ids, None).unwrap().as_slice::<f32>().to_vec();
    let mut packed = model::load(&dir.join("mlx"), &f32_options).unwrap();
    let float_logits = logits(&packed.model);
    let mxfp4 = Quant::checked(4, 32, QuantMode::Mxfp4, "test").unwrap();
    for (_, s) in packed.model.switches_mut() {
        s.quantize(mxfp4).unwrap();
    }
    let want = logits(&packed.model);
    // The experts' 4-bit rounding moves the logits, but not beyond what MXFP4 does to small weights.
    let moved = want.iter().zip(&float_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(moved > 0.0 && moved < 0.05, "{moved}");

    let interleave = |gate: &Array, up: &Array, axis: i32| {
        // [.., n, ..] twice → [.., 2n, ..] with gate rows at even indices.
        let both = ops::stack(&[gate, up], axis).unwrap();
        let mut shape = gate.shape().to_vec();
        let a = (shape.len() as i32 + axis) as usize;
        shape[a] *= 2;
        both.reshape(&shape).unwrap()
    };
    let config = |quant: Option<serde_json::Value>| {
        let mut c: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("mlx/config.json")).unwrap()).unwrap();
        if let Some(q) = quant {
            c.insert("quantization_config".into(), q);
        }
        serde_json::Value::Object(c).to_string()
    };
    for layout in ["openai", "transformers"] {
        let out = dir.join(layout);
        std::fs::create_dir_all(&out).unwrap();
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(dir.join("mlx").join(f), out.join(f)).unwrap();
        }
        let mut tensors: Vec<(String, Array)> = Vec::new();
        let source = if layout == "openai" { &mut packed.model } else { &mut model::load(&dir.join("mlx"), &f32_options).unwrap().model };
        let params: std::collections::HashMap<String, Array> =
            mlx_rs::module::ModuleParameters::parameters(source).flatten().into_iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        for (name, v) in &params {
            if !name.contains(".mlp.experts.") {
                tensors.push((name.clone(), v.clone()));
            }
        }
        for l in 0..2 {
            let p = |proj: &str, kind: &str| params[&format!("model.layers.{l}.mlp.experts.{proj}.{kind}")].clone();
            let head = format!("model.layers.{l}.mlp.experts");
            let bias = interleave(&p("gate_proj", "bias"), &p("up_proj", "bias"), -1);
            tensors.push((format!("{head}.gate_up_proj_bias"), bias));
            tensors.push((format!("{head}.down_proj_bias"), p("down_proj", "bias")));
            if layout == "openai" {
                let blocks = |w: Array| {
                    let s = w.shape().to_vec();
                    w.view::<u8>().unwrap().reshape(&[s[0], s[1], s[2] * 4 / 16, 16]).unwrap()
                };
                tensors.push((format!("{head}.gate_up_proj_blocks"), blocks(interleave(&p("gate_proj", "weight"), &p("up_proj", "weight"), -2))));
                tensors.push((format!("{head}.gate_up_proj_scales"), interleave(&p("gate_proj", "scales"), &p("up_proj", "scales"), -2)));
                tensors.push((format!("{head}.down_proj_blocks"), blocks(p("down_proj", "weight"))));
                tensors.push((format!("{head}.down_proj_scales"), p("down_proj", "scales")));
            } else {
                let gate_up = interleave(&p("gate_proj", "weight"), &p("up_proj", "weight"), -2).swap_axes(1, 2).unwrap();
                tensors.push((format!("{head}.gate_up_proj"), gate_up));
                tensors.push((format!("{head}.down_proj"), p("down_proj", "weight").swap_axes(1, 2).unwrap()));
            }
        }
        let quant = (layout == "openai").then(|| serde_json::json!({"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}));
        std::fs::write(out.join("config.json"), config(quant)).unwrap();
        let contiguous: Vec<(String, Array)> = tensors.into_iter().map(|(k, v)| (k, v.contiguous().unwrap())).collect();
        Array::save_safetensors(contiguous.iter().map(|(k, v)| (k.as_str(), v)).collect::<std::collections::HashMap<_, _>>(), None, out.join("model.safetensors")).unwrap();
        let loaded = model::load(&out, &f32_options).unwrap();
        if layout == "openai" {
            assert_eq!(logits(&loaded.model), want, "{layout} layout: the same packed bits");
        } else {
            // The transposed copy is a strided view of other memory: the matmul may sum in another order.
            let diff = logits(&loaded.model).iter().zip(&float_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-5, "{layout} layout: {diff}");
        }
        if layout == "openai" {
            let experts = loaded.model.model.layers[1].mlp.as_ref().and_then(|m| m.experts.as_ref()).unwrap();
            assert_eq!(experts.down_proj.quant, Some(mxfp4));
            assert_eq!(loaded.model.model.layers[1].self_attn.o_proj.quant, None);
            // Saved, it is mlx-lm's layout with the experts' mode recorded per module.
            model::save(&loaded, &dir.join("resaved")).unwrap();
            assert_eq!(&logits(&model::load(&dir.join("resaved"), &f32_options).unwrap().model), &want);
        }
    }
}

/// Each MLX quantization mode: `[model] quantize`-style loading packs the layers in that mode (scales as 8-bit
/// codes, no biases), the saved model reloads to the same logits with `mode` in config.json, and a fuse on
/// that base re-quantizes in the base's own mode and is verified to carry the adapters' effect.
#[test]
fn every_quantization_mode_round_trips_and_fuses_in_its_own_format() {
    use host::nn::{Quant, QuantMode};
    let registry = Registry::builtin().unwrap();
    let dir = temp("modes");
    fixture::write(&dir.join("float"), Family::Qwen3Moe, Preset::Tiny, 5).unwrap();
    let f32_options = LoadOptions { dtype: Some(Dtype::Float32), quantize: None };
    let ids = Array::from_slice(&[5i32, 17, 99, 200, 33, 41, 7], &[1, 7]);
    let logits = |m: &model::CausalLm| m.forward(&ids, None).unwrap().as_slice::<f32>().to_vec();
    for mode in [QuantMode::Mxfp4, QuantMode::Nvfp4, QuantMode::Mxfp8, QuantMode::Affine] {
        // Affine in groups of 32: the experts' width (32) takes no larger group.
        let (bits, group) = if mode == QuantMode::Affine { (4, 32) } else { mode.defaults() };
        let quant = Quant::checked(bits, group, mode, "test").unwrap();
        let base = dir.join(mode.name());
        let q = model::load(&dir.join("float"), &LoadOptions { dtype: Some(Dtype::Float32), quantize: Some(quant) }).unwrap();
        let down = q.model.model.layers[1].mlp.as_ref().and_then(|m| m.switch_mlp.as_ref()).unwrap();
        assert_eq!(down.down_proj.quant, Some(quant), "{mode:?}");
        assert_eq!((*down.down_proj.biases).is_some(), mode == QuantMode::Affine, "{mode:?}");
        let scales = (*down.down_proj.scales).as_ref().unwrap().dtype();
        assert_eq!(scales == Dtype::Uint8, mode != QuantMode::Affine, "{mode:?}: scales {scales:?}");
        // The router keeps mlx-lm's 8-bit affine override.
        assert_eq!(q.model.model.layers[1].mlp.as_ref().and_then(|m| m.gate.as_ref()).unwrap().quant, Some(Quant::affine(8, 64)));
        model::save(&q, &base).unwrap();
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["quantization"]["mode"], mode.name());
        assert_eq!(config["quantization"]["model.layers.1.mlp.gate"]["bits"], 8);
        assert_eq!(logits(&model::load(&base, &f32_options).unwrap().model), logits(&q.model), "{mode:?}: reloaded");

        // Adapters with a visible effect, fused onto this base.
        let mut m = model::load(&base, &f32_options).unwrap();
        let mapper = registry.lora_target_mapper("all_linear", &sdk::toml::Table::new()).unwrap();
        let settings = lora::LoraSettings { rank: 4, scale: 2.0, dropout: 0.0, dora: false, last_n_layers: None };
        lora::apply(&mut m.model, &*mapper, &settings, 3).unwrap();
        for (i, (_, l)) in m.model.adaptable_mut().into_iter().enumerate() {
            let b = match l {
                host::nn::AdaptedLayer::Linear(l) => &mut *l.lora_b,
                host::nn::AdaptedLayer::Switch(s) => &mut *s.lora_b,
            };
            if let Some(b) = b {
                let key = mlx_rs::random::key(i as u64).unwrap();
                *b = mlx_rs::random::normal::<f32>(b.shape(), None, None, &key).unwrap().multiply(Array::from_f32(0.05)).unwrap();
            }
        }
        lora::save_adapters(&mut m.model, &dir.join(format!("{}-adapters", mode.name())), &serde_json::Map::new()).unwrap();
        let fused_dir = dir.join(format!("{}-fused", mode.name()));
        lora::fuse_verified(&base, &dir.join(format!("{}-adapters", mode.name())), &fused_dir, false).unwrap();
        let fused = model::load(&fused_dir, &f32_options).unwrap();
        let experts = fused.model.model.layers[1].mlp.as_ref().and_then(|m| m.switch_mlp.as_ref()).unwrap();
        assert_eq!(experts.up_proj.quant, Some(quant), "{mode:?}: the fused experts keep the base's format");
        assert_eq!(fused.model.model.layers[0].self_attn.q_proj.as_ref().unwrap().quant, Some(quant), "{mode:?}");
    }
    // Settings no mode packs are refused, naming the setting.
    let err = Quant::checked(4, 64, QuantMode::Mxfp4, "quantize").unwrap_err();
    assert!(err.contains("mxfp4 packs 4 bits in groups of 32"), "{err}");
    assert!(QuantMode::parse("int4", "--mode").unwrap_err().contains("unknown quantization mode `int4`"));
}

/// Settings the mixture-of-experts families do not implement are refused naming the key, and so are
/// checkpoint quantizations other than MLX's and MXFP4/MXFP8.
#[test]
fn moe_settings_and_quantizations_not_implemented_are_refused_by_key() {
    let resolve = |extra: serde_json::Value| {
        let mut c = serde_json::json!({
            "model_type": "mixtral", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
            "num_attention_heads": 2, "vocab_size": 512, "num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 32
        });
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let args: model::HfArgs = serde_json::from_value(c).unwrap();
        model::family_config(&args).and_then(|_| args.quantization().map(|_| ()))
    };
    assert!(resolve(serde_json::json!({"router_jitter_noise": 0.0})).is_ok());
    let err = resolve(serde_json::json!({"router_jitter_noise": 0.1})).unwrap_err();
    assert!(err.contains("router_jitter_noise"), "{err}");
    let err = resolve(serde_json::json!({"model_type": "gpt_oss", "hidden_act": "gelu"})).unwrap_err();
    assert!(err.contains("hidden_act `gelu`"), "{err}");
    let err = resolve(serde_json::json!({"num_experts_per_tok": 5})).unwrap_err();
    assert!(err.contains("num_experts_per_tok (5)"), "{err}");
    let err = resolve(serde_json::json!({"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}})).unwrap_err();
    assert!(err.contains("quant_method `gptq` is not supported"), "{err}");
    let err = resolve(serde_json::json!({"quantization": {"bits": 4, "group_size": 32, "mode": "fp4"}})).unwrap_err();
    assert!(err.contains("unknown quantization mode `fp4`"), "{err}");
    let err = resolve(serde_json::json!({"model_type": "gpt_oss", "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "truncate": "no"}})).unwrap_err();
    assert!(err.contains("rope_scaling.truncate"), "{err}");
}
