//! Multi-turn rollouts: observations appended to the KV cache between turns continue it exactly as a fresh
//! prefill of the whole conversation would, observation tokens are never trained on, and GRPO runs with an
//! environment (built in, from a cdylib, from a Python child) end to end.

use std::path::PathBuf;

use host::{
    cache,
    fixture::{self, Family, Preset},
    generate::{generate_episodes, Completion, EpisodeLimits, GenerateOptions, Next, Sampler, SamplerConfig, TurnEnd},
    model::{self, CausalLm, LoadOptions},
    plugins::Registry,
    train::rollout::sequences,
    data::PromptRow,
};
use mlx_rs::{ops::indexing::IndexOp, Array, Dtype};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("host-env-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Log-probs of `tokens[1..]` under one forward over the whole sequence (no cache).
fn prefill_logps(m: &CausalLm, tokens: &[u32]) -> Vec<f32> {
    let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let n = ids.len() as i32;
    let logits = m.forward(&Array::from_slice(&ids[..ids.len() - 1], &[1, n - 1]), None).unwrap().as_dtype(Dtype::Float32).unwrap();
    let logps = logits.subtract(logits.logsumexp_axis(-1, true).unwrap()).unwrap().index((0, .., ..));
    let targets = Array::from_slice(&ids[1..], &[n - 1, 1]);
    logps.take_along_axis(&targets, -1).unwrap().reshape(&[n - 1]).unwrap().to_vec_exact::<f32>().unwrap()
}

/// Episodes on a random fixture where every fifth token id ends a turn and each turn is answered with an
/// observation of 1-4 tokens (by episode), up to 3 turns and 40 tokens.
fn episodes(m: &CausalLm, policy: &str, prompts: &[Vec<u32>], group: usize) -> Vec<Completion> {
    let registry = Registry::builtin().unwrap();
    let table: sdk::toml::Table = if policy == "quantized" { "group_size = 32\nstart = 0".parse().unwrap() } else { sdk::toml::Table::new() };
    let policy = registry.kv_cache_policy(policy, &table).unwrap();
    let mut caches = cache::for_episodes(&*policy, &m.attention_windows()).unwrap();
    let options = GenerateOptions { max_tokens: 8, eos_ids: (0..512).step_by(5).collect(), ..Default::default() };
    let limits = EpisodeLimits { max_turns: 3, max_tokens: 40 };
    let mut sampler = Sampler::new(SamplerConfig { temperature: 1.0, ..Default::default() }, 5).unwrap();
    let mut answer = |ends: &[TurnEnd<'_>]| -> Result<Vec<Next>, mlx_rs::error::Exception> {
        Ok(ends.iter().map(|e| if e.last { Next::End } else { Next::Observe((0..1 + e.episode % 4).map(|k| 300 + k as u32).collect()) }).collect())
    };
    generate_episodes(m, prompts, group, &mut caches, &mut sampler, &options, limits, &mut answer).unwrap().0
}

#[test]
fn appended_observations_continue_the_cache_as_a_re_prefill_of_the_conversation() {
    let dir = temp("reprefill");
    // Gemma 3 has sliding-window layers (window 4 in the fixture, shorter than the episodes):
    // the episodes' windowed caches must mask as a fresh prefill does.
    for family in [Family::Qwen2, Family::Gemma3Text] {
        let path = dir.join(format!("{family:?}"));
        fixture::write(&path, family, Preset::Tiny, 3).unwrap();
        let m = model::load(&path, &LoadOptions { dtype: Some(Dtype::Float32), quantize: None }).unwrap().model;
        let prompts: Vec<Vec<u32>> = vec![vec![11, 17, 40, 33, 9], vec![12, 7, 301], vec![44, 45, 46, 47, 48, 49, 50, 51, 52]];
        for policy in ["standard", "quantized"] {
            let group = 2;
            let out = episodes(&m, policy, &prompts, group);
            assert_eq!(out.len(), 6);
            let multi = out.iter().filter(|c| !c.observations.is_empty()).count();
            assert!(multi >= 3, "{family:?} {policy}: only {multi} episodes had a second turn");
            let mut worst = 0f32;
            for (e, c) in out.iter().enumerate() {
                let prompt = &prompts[e / group];
                let full: Vec<u32> = prompt.iter().chain(&c.tokens).copied().collect();
                let reference = prefill_logps(&m, &full);
                let observed: Vec<bool> = (0..c.tokens.len()).map(|j| c.observations.iter().any(|r| r.contains(&j))).collect();
                for (j, (&lp, &obs)) in c.logprobs.iter().zip(&observed).enumerate() {
                    if obs {
                        assert_eq!(lp, 0.0, "an observation token has no log-prob");
                        assert_eq!(c.tokens[j], 300 + (j - c.observations.iter().find(|r| r.contains(&j)).unwrap().start) as u32);
                        continue;
                    }
                    worst = worst.max((lp - reference[prompt.len() - 1 + j]).abs());
                }
            }
            // The cached episode computes what one forward over the conversation computes, in other batch
            // shapes: BLAS blocking moves float32 log-probs of |x| ≈ 6 by an ulp or two (measured 4.8e-7 and
            // 9.5e-7), so 5e-5 leaves room for other BLAS builds. Rows moved without their RoPE shift (tried: a
            // shift off by one position) move them by 1.1e-3, which this catches. An 8-bit quantized cache
            // rounds every key and value (start = 0), which the fresh prefill does not: measured 1.0e-3 and
            // 1.5e-3 in every turn, the first included, so 1e-2 bounds quantization noise and catches gross
            // realign errors of the packed store only (the standard cache checks the positions exactly).
            let tolerance = if policy == "quantized" { 1e-2 } else { 5e-5 };
            assert!(worst < tolerance, "{family:?} {policy}: worst log-prob difference {worst}");
            eprintln!("{family:?} {policy}: worst {worst:e}");

            // The training rows: the mask covers generated tokens only.
            let rows: Vec<PromptRow> = prompts.iter().map(|p| PromptRow { line: 1, text: String::new(), tokens: p.clone(), row: "{}".into(), messages: vec![] }).collect();
            let refs: Vec<&PromptRow> = rows.iter().collect();
            let batch = sequences(&refs, group, &out, 1);
            let mask = batch.mask.as_dtype(Dtype::Float32).unwrap().to_vec_exact::<f32>().unwrap();
            let width = batch.mask.shape()[1] as usize;
            for (e, c) in out.iter().enumerate() {
                let p = prompts[e / group].len();
                for j in 0..c.tokens.len() {
                    // Target position p - 1 + j predicts completion token j.
                    let want = if c.observations.iter().any(|r| r.contains(&j)) { 0.0 } else { 1.0 };
                    assert_eq!(mask[e * width + p - 1 + j], want, "episode {e} token {j}");
                }
                let trained: f32 = mask[e * width..(e + 1) * width].iter().sum();
                let observed: usize = c.observations.iter().map(|r| r.len()).sum();
                assert_eq!(trained as usize, c.tokens.len() - observed);
            }
        }
    }
}
