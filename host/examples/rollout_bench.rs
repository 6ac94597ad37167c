//! Rollout throughput: G completions for each of P prompts three ways, on one model, same sampler and
//! lengths (EOS ignored, so every row generates `max_tokens`):
//! - shared: one batch, each prompt prefilled once and its cache rows repeated G times (what GRPO does);
//! - batched: one batch of P × G rows, every copy of a prompt prefilled in its own row;
//! - sequential: P × G separate generations, one row each;
//! - shared+lora: shared, with rank-8 LoRA adapters on every linear layer in their sampling form (what a
//!   GRPO run samples with);
//! - shared+lora-training-form: the same adapters as the training step computes them.
//!
//!   cargo run --release -p host --example rollout_bench -- MODEL_DIR [PROMPTS] [GROUP] [PROMPT_TOKENS] [MAX_TOKENS] [MODES]
//!
//! MODES is a comma-separated subset (default: all five).
//!
//! Prints one JSON object per mode: seconds, generated tokens, tokens/s (generated tokens over all the
//! time, prefill included) and peak memory.

use std::time::Instant;

use host::{
    cache,
    generate::{generate, generate_groups, Completion, Control, GenerateOptions, GenerationStats, Sampler, SamplerConfig},
    lora::{self, LoraSettings},
    model::{self, CausalLm, LoadOptions},
    plugins::Registry,
};

type Generated = (Vec<Completion>, GenerationStats);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args.first().ok_or("usage: rollout_bench MODEL_DIR [PROMPTS] [GROUP] [PROMPT_TOKENS] [MAX_TOKENS]")?;
    let arg = |i: usize, default: usize| -> Result<usize, Box<dyn std::error::Error>> { Ok(args.get(i).map(|s| s.parse()).transpose()?.unwrap_or(default)) };
    let (prompts_n, group, prompt_tokens, max_tokens) = (arg(1, 4)?, arg(2, 8)?, arg(3, 128)?, arg(4, 64)?);
    let modes: Vec<String> = args.get(5).map_or_else(|| vec!["shared".into(), "batched".into(), "sequential".into(), "shared+lora-training-form".into(), "shared+lora".into()], |m| m.split(',').map(str::to_owned).collect());
    let mut m = model::load(std::path::Path::new(dir), &LoadOptions::default())?.model;
    let vocab = m.config.vocab_size as usize;
    let prompts: Vec<Vec<u32>> =
        (0..prompts_n).map(|p| (0..prompt_tokens).map(|i| ((i * 7919 + p * 104_729 + 13) % (vocab - 20) + 20) as u32).collect()).collect();
    let registry = Registry::builtin()?;
    let policy = registry.kv_cache_policy("standard", &sdk::toml::Table::new())?;
    let sampler = SamplerConfig { temperature: 1.0, ..Default::default() };
    let options = GenerateOptions { max_tokens, ..Default::default() };
    let mut sink = |_: usize, _: u32| Control::Continue;

    let run = |m: &CausalLm, label: &str, f: &mut dyn FnMut(&CausalLm) -> Result<Vec<Generated>, mlx_rs::error::Exception>| -> Result<(), Box<dyn std::error::Error>> {
        if !modes.iter().any(|x| x == label) {
            return Ok(());
        }
        // One untimed pass warms up the kernels and allocator.
        f(m)?;
        let _ = mlx_rs::memory::reset_peak_memory();
        let started = Instant::now();
        let out = f(m)?;
        let seconds = started.elapsed().as_secs_f64();
        let tokens: usize = out.iter().flat_map(|(c, _)| c.iter().map(|c| c.tokens.len())).sum();
        let line = serde_json::json!({
            "mode": label, "prompts": prompts_n, "group": group, "prompt_tokens": prompt_tokens, "max_tokens": max_tokens,
            "seconds": seconds, "generated_tokens": tokens, "tokens_per_second": tokens as f64 / seconds,
            "peak_memory_gb": mlx_rs::memory::peak_memory().unwrap_or(0) as f64 / 1e9,
        });
        println!("{line}");
        Ok(())
    };

    let mut shared = |m: &CausalLm| {
        let mut caches = cache::for_layers(&*policy, &m.attention_windows()).map_err(|e| mlx_rs::error::Exception::custom(e.to_string()))?;
        Ok(vec![generate_groups(m, &prompts, group, &mut caches, &mut Sampler::new(sampler.clone(), 0)?, &options, &mut |_: usize, _: u32| Control::Continue)?])
    };
    run(&m, "shared", &mut shared)?;
    let repeated: Vec<Vec<u32>> = prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), group)).collect();
    run(&m, "batched", &mut |m| {
        let mut caches = cache::for_layers(&*policy, &m.attention_windows()).map_err(|e| mlx_rs::error::Exception::custom(e.to_string()))?;
        Ok(vec![generate(m, &repeated, &mut caches, &mut Sampler::new(sampler.clone(), 0)?, &options, &mut sink)?])
    })?;
    run(&m, "sequential", &mut |m| {
        let mut out = Vec::with_capacity(repeated.len());
        for (i, p) in repeated.iter().enumerate() {
            let mut caches = cache::for_layers(&*policy, &m.attention_windows()).map_err(|e| mlx_rs::error::Exception::custom(e.to_string()))?;
            out.push(generate(m, std::slice::from_ref(p), &mut caches, &mut Sampler::new(sampler.clone(), i as u64)?, &options, &mut sink)?);
        }
        Ok(out)
    })?;
    let mapper = registry.lora_target_mapper("all_linear", &sdk::toml::Table::new())?;
    lora::apply(&mut m, &*mapper, &LoraSettings { rank: 8, scale: 20.0, dropout: 0.0, dora: false, last_n_layers: None }, 0)?;
    run(&m, "shared+lora-training-form", &mut shared)?;
    lora::set_sampling(&mut m, true)?;
    run(&m, "shared+lora", &mut shared)?;
    Ok(())
}
