//! Our forward pass against mlx-lm's on the same checkpoints: the reference implementation users compare with.
//! Needs a Python with mlx-lm (and mlx 0.32.2) in MLX_LM_PYTHON; `.ci/run` sets one up and runs these.

use std::{path::Path, process::Command};

use host::{
    fixture::{self, Family, Preset},
    model::{self, LoadOptions},
    nn::Quant,
};
use mlx_rs::{Array, Dtype};

const IDS: [i32; 9] = [5, 17, 99, 200, 33, 41, 7, 300, 2];

fn python(script: &str, args: &[&str]) -> Vec<u8> {
    let python = std::env::var("MLX_LM_PYTHON").expect("MLX_LM_PYTHON: a python with mlx-lm installed");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python").join(script);
    let out = Command::new(python).arg(script).args(args).output().expect("run python");
    assert!(out.status.success(), "mlx-lm failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn reference(dir: &Path, adapters: Option<&Path>) -> Vec<Vec<f32>> {
    let ids = format!("{IDS:?}");
    let mut args = vec![dir.to_str().unwrap(), ids.as_str()];
    if let Some(a) = adapters {
        args.push(a.to_str().unwrap());
    }
    serde_json::from_slice(&python("mlx_lm_logits.py", &args)).expect("JSON logits")
}

fn forward(m: &model::CausalLm) -> Vec<Vec<f32>> {
    let logits = m.forward(&Array::from_slice(&IDS, &[1, IDS.len() as i32]), None).unwrap();
    let flat = logits.contiguous().unwrap().to_vec_exact::<f32>().unwrap();
    flat.chunks(m.config.vocab_size as usize).map(<[f32]>::to_vec).collect()
}

fn load(dir: &Path) -> model::CausalLm {
    model::load(dir, &LoadOptions { dtype: Some(Dtype::Float32), quantize: None }).unwrap().model
}

fn ours(dir: &Path) -> Vec<Vec<f32>> {
    forward(&load(dir))
}

fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>], what: &str) {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().flatten().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    eprintln!("{what}: max |Δlogit| {diff:e} (max |logit| {scale})");
    assert!(diff <= 1e-5 * scale.max(1.0), "{what}: max |Δlogit| {diff} against mlx-lm");
}

fn compare(dir: &Path, what: &str) {
    assert_close(&ours(dir), &reference(dir, None), what);
}

#[test]
#[ignore = "needs MLX_LM_PYTHON, a python with mlx-lm (CI provides one)"]
fn adapters_cross_between_host_and_mlx_lm() {
    use host::{lora, plugins::Registry};
    // DoRA on one family; plain LoRA on every family (Phi-3's on its fused projections).
    let cases = std::iter::once((Family::Qwen2, "dora")).chain(Family::ALL.into_iter().map(|f| (f, "lora")));
    for (family, kind) in cases {
        let dir = std::env::temp_dir().join(format!("mlx-lm-adapters-{}-{family:?}-{kind}", std::process::id()));
        fixture::write(&dir, family, Preset::Tiny, 4).unwrap();
        // mlx-lm's adapters, loaded here.
        let theirs = dir.with_extension("theirs");
        // The MoE families' last layer is sparse: its router and experts (mlx-lm's LoRASwitchLinear).
        let keys = match family {
            Family::Phi3 => r#"["self_attn.qkv_proj", "mlp.gate_up_proj", "mlp.down_proj"]"#,
            Family::Qwen3Moe => r#"["self_attn.q_proj", "mlp.gate", "mlp.switch_mlp.gate_proj", "mlp.switch_mlp.up_proj", "mlp.switch_mlp.down_proj"]"#,
            Family::Mixtral => r#"["self_attn.q_proj", "block_sparse_moe.gate", "block_sparse_moe.switch_mlp.gate_proj", "block_sparse_moe.switch_mlp.down_proj"]"#,
            Family::GptOss => r#"["self_attn.q_proj", "self_attn.o_proj", "mlp.router", "mlp.experts.gate_proj", "mlp.experts.up_proj", "mlp.experts.down_proj"]"#,
            _ => r#"["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]"#,
        };
        python("mlx_lm_make_adapters.py", &[dir.to_str().unwrap(), theirs.to_str().unwrap(), kind, keys]);
        let mut m = load(&dir);
        lora::load_adapters(&mut m, &theirs).unwrap();
        assert_close(&forward(&m), &reference(&dir, Some(&theirs)), &format!("{family:?}: mlx-lm {kind} adapters in host"));
        // Ours, loaded by mlx-lm.
        let mut m = load(&dir);
        let mapper = Registry::builtin().unwrap().lora_target_mapper("all_linear", &toml::Table::new()).unwrap();
        let settings = lora::LoraSettings { rank: 4, scale: 1.5, dropout: 0.0, dora: kind == "dora", last_n_layers: None };
        lora::apply(&mut m, &*mapper, &settings, 0).unwrap();
        for (i, (_, l)) in m.linears_mut().into_iter().enumerate() {
            if let Some(b) = &mut *l.lora_b {
                let key = mlx_rs::random::key(i as u64).unwrap();
                *b = mlx_rs::random::normal::<f32>(b.shape(), None, None, &key).unwrap().multiply(Array::from_f32(0.05)).unwrap();
            }
        }
        for (i, (_, s)) in m.switches_mut().into_iter().enumerate() {
            if let Some(b) = &mut *s.lora_b {
                let key = mlx_rs::random::key(100 + i as u64).unwrap();
                *b = mlx_rs::random::normal::<f32>(b.shape(), None, None, &key).unwrap().multiply(Array::from_f32(0.05)).unwrap();
            }
        }
        let ours_dir = dir.with_extension("ours");
        lora::save_adapters(&mut m, &ours_dir, &serde_json::Map::new()).unwrap();
        if family == Family::Qwen3Moe {
            let saved = Array::load_safetensors(ours_dir.join("adapters.safetensors")).unwrap();
            let a = &saved["model.layers.1.mlp.switch_mlp.gate_proj.lora_a"];
            assert_eq!(a.shape(), &[8, 4, 64], "per-expert A, mlx-lm's layout");
        }
        assert_close(&forward(&m), &reference(&dir, Some(&ours_dir)), &format!("{family:?}: host {kind} adapters in mlx-lm"));
    }
}

#[test]
#[ignore = "needs MLX_LM_PYTHON, a python with mlx-lm (CI provides one)"]
fn every_family_matches_mlx_lm() {
    for family in Family::ALL {
        let dir = std::env::temp_dir().join(format!("mlx-lm-ref-{}-{family:?}", std::process::id()));
        fixture::write(&dir, family, Preset::Tiny, 11).unwrap();
        compare(&dir, &format!("{family:?}"));
        // mlx-lm 0.32.2 cannot run quantized experts on mlx 0.32.2 (its QuantizedSwitchLinear passes
        // `global_scale`, which that mlx's gather_qmm does not take: a TypeError), so the 4-bit MoE model is
        // checked against its own dequantized weights in tests/families.rs instead.
        if matches!(family, Family::Qwen3Moe | Family::Mixtral | Family::GptOss) {
            continue;
        }
        // The same model quantized here and written for mlx-lm: both sides read one checkpoint.
        let quantized = dir.with_extension("q4");
        let options = LoadOptions { dtype: Some(Dtype::Float32), quantize: Some(Quant::affine(4, 32)) };
        model::save(&model::load(&dir, &options).unwrap(), &quantized).unwrap();
        compare(&quantized, &format!("{family:?} 4-bit"));
    }
}

/// MLX's microscaling formats (and affine at 3 and 6 bits), quantized and written here, read by mlx-lm: the
/// `quantization` block (with `mode`), the uint8 scales and the packing agree, and so do the logits. Two dense
/// families: one with tied embeddings (quantized embeddings serve as the output projection), one without.
#[test]
#[ignore = "needs MLX_LM_PYTHON, a python with mlx-lm (CI provides one)"]
fn quantization_modes_match_mlx_lm() {
    use host::nn::QuantMode;
    for family in [Family::Qwen2, Family::Llama] {
        let dir = std::env::temp_dir().join(format!("mlx-lm-modes-{}-{family:?}", std::process::id()));
        fixture::write(&dir, family, Preset::Tiny, 12).unwrap();
        let quants = [
            Quant::checked(4, 32, QuantMode::Mxfp4, "test").unwrap(),
            Quant::checked(4, 16, QuantMode::Nvfp4, "test").unwrap(),
            Quant::checked(8, 32, QuantMode::Mxfp8, "test").unwrap(),
            Quant::affine(3, 32),
            Quant::affine(6, 64),
        ];
        for quant in quants {
            let out = dir.with_extension(format!("{}{}", quant.mode.name(), quant.bits));
            let options = LoadOptions { dtype: Some(Dtype::Float32), quantize: Some(quant) };
            model::save(&model::load(&dir, &options).unwrap(), &out).unwrap();
            compare(&out, &format!("{family:?} {} {}-bit", quant.mode.name(), quant.bits));
        }
    }
}

#[test]
#[ignore = "needs MLX_LM_PYTHON, a python with mlx-lm (CI provides one)"]
fn router_load_balancing_loss_matches_the_transformers_formula_on_mlx_lm_router_logits() {
    // Two rows, the second right-padded by three positions that must not count. Qwen3-MoE's fixture has a
    // dense layer beside its sparse ones (mlp_only_layers), so only sparse layers may enter the means.
    let ids: [[i32; 9]; 2] = [IDS, [9, 8, 7, 6, 5, 4, 0, 0, 0]];
    let real: [[f32; 9]; 2] = [[1.0; 9], [1., 1., 1., 1., 1., 1., 0., 0., 0.]];
    for family in [Family::Qwen3Moe, Family::Mixtral, Family::GptOss] {
        let dir = std::env::temp_dir().join(format!("mlx-lm-router-{}-{family:?}", std::process::id()));
        fixture::write(&dir, family, Preset::Tiny, 21).unwrap();
        let m = load(&dir);
        let tokens = Array::from_slice(ids.as_flattened(), &[2, 9]);
        let mask = Array::from_slice(real.as_flattened(), &[2, 9]);
        let (_, aux) = m.model.forward_routed(&tokens, None, Some(&mask), None).unwrap();
        let ours = aux.expect("a sparse model has a router loss").item_exact::<f32>();
        let want: f64 = serde_json::from_slice(&python("router_aux_loss.py", &[dir.to_str().unwrap(), &format!("{ids:?}"), &format!("{real:?}")])).unwrap();
        eprintln!("{family:?}: router loss {ours} vs {want}");
        // Means of float32 softmaxes over 15 positions: ~1e-7 apart. Counting a padded position moves it by
        // ~1e-2 (one of 15 tokens), as does averaging per layer instead of over the concatenated layers.
        assert!((f64::from(ours) - want).abs() < 1e-5 * want, "{family:?}: {ours} vs {want}");
    }
}

/// Our greedy tokens after `IDS` with a KV cache policy, and how many of them to compare: up to (not
/// including) the first step whose top two logits (from one uncached forward) are within 1e-4 of each other,
/// where float rounding (~1e-7 between the two implementations) could legitimately pick either.
fn greedy(m: &model::CausalLm, policy: &str, options: &str, steps: usize) -> (Vec<u32>, Vec<f32>, usize) {
    use host::{
        cache,
        generate::{generate, Control, GenerateOptions, Sampler, SamplerConfig},
        plugins::Registry,
    };
    let policy = Registry::builtin().unwrap().kv_cache_policy(policy, &options.parse().unwrap()).unwrap();
    let mut caches = cache::for_layers(&*policy, &m.attention_windows()).unwrap();
    let prompt: Vec<u32> = IDS.iter().map(|&t| t as u32).collect();
    let greedy = SamplerConfig { temperature: 0.0, ..Default::default() };
    let options = GenerateOptions { max_tokens: steps, ..Default::default() };
    let (out, _) = generate(m, &[prompt.clone()], &mut caches, &mut Sampler::new(greedy, 0).unwrap(), &options, &mut |_: usize, _: u32| Control::Continue).unwrap();
    let tokens = out[0].tokens.clone();
    let logprobs = out[0].logprobs.clone();
    let ids: Vec<i32> = prompt.iter().chain(&tokens).map(|&t| t as i32).collect();
    let logits = forward_ids(m, &ids);
    let clear = (0..tokens.len())
        .take_while(|&i| {
            let mut row = logits[IDS.len() - 1 + i].clone();
            row.sort_by(|a, b| b.total_cmp(a));
            row[0] - row[1] > 1e-4
        })
        .count();
    (tokens, logprobs, clear)
}

fn forward_ids(m: &model::CausalLm, ids: &[i32]) -> Vec<Vec<f32>> {
    let logits = m.forward(&Array::from_slice(ids, &[1, ids.len() as i32]), None).unwrap();
    let flat = logits.contiguous().unwrap().to_vec_exact::<f32>().unwrap();
    flat.chunks(m.config.vocab_size as usize).map(<[f32]>::to_vec).collect()
}

#[test]
#[ignore = "needs MLX_LM_PYTHON, a python with mlx-lm (CI provides one)"]
fn greedy_tokens_equal_mlx_lm_with_each_cache() {
    const STEPS: usize = 32;
    for family in Family::ALL {
        // A fixture whose greedy path has no near-tie in its first half (seed 13 for most families; random
        // tiny models sometimes tie early, and a tie says nothing about either implementation).
        let dir = std::env::temp_dir().join(format!("mlx-lm-greedy-{}-{family:?}", std::process::id()));
        let mut seed = 13;
        let m = loop {
            fixture::write(&dir, family, Preset::Tiny, seed).unwrap();
            let m = load(&dir);
            if greedy(&m, "standard", "", STEPS).2 >= STEPS / 2 || seed == 20 {
                break m;
            }
            seed += 1;
        };
        let ids = format!("{IDS:?}");
        let steps = STEPS.to_string();
        // Standard caches (Gemma 3's local layers: rotating of their window on both sides), then a rotating
        // cache of 16 keeping 4, smaller than the 41 positions (mlx-lm gives Gemma 3 its own caches whatever
        // the size asked, so it is left out there).
        // Then 8-bit quantized caches from the start (mlx-lm's kv_bits 8, group 32, quantized_kv_start 0),
        // except for Gemma 3, whose rotating local caches mlx-lm does not quantize, and Gemma 2, whose
        // soft-capped attention in mlx-lm 0.32.2 fails on a quantized cache (a TypeError in expand_dims);
        // ours is checked against the uncached forward in tests/models.rs.
        // gpt-oss is left out of both: mlx-lm puts its 16-slot cache on the sliding layers too (ours keep a
        // rotating cache of their 8-token window, as its own make_cache does), and its quantized attention
        // refuses sinks. Its standard case has both kinds of layer over 41 positions; its quantized cache
        // is checked against the uncached forward in tests/families.rs.
        let mut cases: Vec<(&str, String, Vec<&str>)> = vec![("standard", String::new(), vec![])];
        if family != Family::Gemma3Text && family != Family::GptOss {
            cases.push(("rotating", "max_size = 16\nkeep = 4".to_owned(), vec!["16"]));
        }
        if family != Family::Gemma3Text && family != Family::Gemma2 && family != Family::GptOss {
            cases.push(("quantized", "bits = 8\ngroup_size = 32\nstart = 0".to_owned(), vec!["q", "8", "32", "0"]));
        }
        for (policy, options, extra) in cases {
            let mut args = vec![dir.to_str().unwrap(), ids.as_str(), steps.as_str()];
            args.extend(extra);
            let theirs: serde_json::Value = serde_json::from_slice(&python("mlx_lm_greedy.py", &args)).expect("JSON tokens");
            let their_tokens: Vec<u32> = serde_json::from_value(theirs["tokens"].clone()).unwrap();
            let their_logprobs: Vec<f32> = serde_json::from_value(theirs["logprobs"].clone()).unwrap();
            let (ours, logprobs, clear) = greedy(&m, policy, &options, STEPS);
            eprintln!("{family:?} {policy}: {clear} of {STEPS} greedy steps clear of ties");
            assert!(clear >= STEPS / 2, "{family:?} {policy}: only {clear} steps without a near-tie");
            assert_eq!(ours[..clear], their_tokens[..clear], "{family:?} {policy}: greedy tokens");
            // The sampled tokens' log-probs agree too: float32 summation order moves them by ~1e-6, while a
            // different cache schedule (the 8-bit cache quantizing before the prefill's attention instead of
            // after it, tried) moves them by ~1e-3.
            let worst = logprobs[..clear].iter().zip(&their_logprobs).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            eprintln!("{family:?} {policy}: max |Δ log-prob| {worst:e}");
            assert!(worst <= 1e-4, "{family:?} {policy}: log-probs differ from mlx-lm's by {worst}");
        }
    }
}

#[test]
#[ignore = "needs MLX_LM_PYTHON, a python with mlx-lm (CI provides one)"]
fn a_multimodal_gemma3_checkpoint_matches_mlx_lm() {
    let dir = std::env::temp_dir().join(format!("mlx-lm-ref-{}-gemma3", std::process::id()));
    fixture::write(&dir.join("text"), Family::Gemma3Text, Preset::Tiny, 12).unwrap();
    fixture::wrap_gemma3(&dir.join("text"), &dir.join("multimodal")).unwrap();
    compare(&dir.join("multimodal"), "gemma3 (multimodal checkpoint, language model)");
}

#[test]
#[ignore = "needs MLX_LM_PYTHON, a python with mlx-lm (CI provides one)"]
fn the_mlx_lm_backend_trains_from_the_same_toml() {
    use host::{config::RunConfig, lora, plugins::Registry, train};
    let dir = std::env::temp_dir().join(format!("mlx-lm-backend-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    fixture::write(&dir.join("model"), Family::Llama, Preset::Tiny, 6).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/sft");
    let text = format!(
        "[model]\npath = {:?}\n[lora]\nrank = 4\nscale = 10.0\nmapper = {{ kind = \"short_names\", targets = [\"q_proj\", \"v_proj\"] }}\n\
         [data]\ntrain = {:?}\nmask = \"prompt\"\n[optimizer]\nlr = 1e-3\n[schedule]\nkind = \"cosine\"\n\
         [train]\nsteps = 6\nsave_every = 6\nbackend = \"mlx_lm\"\n[output]\ndir = {:?}\n",
        dir.join("model").display().to_string(),
        data.join("train.jsonl").display().to_string(),
        dir.join("run").display().to_string()
    );
    std::fs::write(dir.join("run.toml"), text).unwrap();
    let mut registry = Registry::builtin().unwrap();
    let config = RunConfig::load(&dir.join("run.toml"), &[], &mut registry).unwrap();
    let outcome = train::run(&config, &registry, None).unwrap();
    assert!(!outcome.native);
    // Its adapters load here: the same format both ways.
    let mut m = load(&dir.join("model"));
    let settings = lora::load_adapters(&mut m, &dir.join("run")).unwrap();
    assert_eq!((settings.rank, settings.scale), (4, 10.0));
    assert_eq!(m.linears_mut().iter().filter(|(_, l)| l.adapter.is_some()).count(), 4);
}

#[test]
#[ignore = "needs MLX_LM_PYTHON, a python with mlx-lm (CI provides one)"]
fn a_fully_fine_tuned_model_loads_in_mlx_lm_with_our_logits() {
    use host::{config::RunConfig, plugins::Registry, train};
    let dir = std::env::temp_dir().join(format!("mlx-lm-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Gemma 3 ties its embedding and scales it: a trained embedding must come back in both roles.
    fixture::write(&dir.join("model"), Family::Gemma3Text, Preset::Tiny, 2).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/sft");
    let text = format!(
        "[model]\npath = {:?}\ndtype = \"float32\"\n[data]\ntrain = {:?}\nmask = \"prompt\"\n[optimizer]\nlr = 1e-3\n\
         [train]\nsteps = 4\nmode = \"full\"\n[output]\ndir = {:?}\nreport_to = []\n",
        dir.join("model").display().to_string(),
        data.join("train.jsonl").display().to_string(),
        dir.join("run").display().to_string()
    );
    std::fs::write(dir.join("run.toml"), text).unwrap();
    let mut registry = Registry::builtin().unwrap();
    let config = RunConfig::load(&dir.join("run.toml"), &[], &mut registry).unwrap();
    train::run(&config, &registry, None).unwrap();
    let (base, trained) = (ours(&dir.join("model")), ours(&dir.join("run")));
    assert!(base.iter().flatten().zip(trained.iter().flatten()).any(|(a, b)| (a - b).abs() > 1e-3), "training changed the logits");
    compare(&dir.join("run"), "fully fine-tuned gemma3_text");
}
