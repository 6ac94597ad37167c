//! The decoding loop: left-padded prompts prefilled in chunks, then one token per row per step, with the next
//! step's graph dispatched before the current token is read back (the host never waits on work it could have
//! queued).

use std::time::Instant;

use mlx_rs::{error::Exception, ops::indexing::IndexOp, transforms::async_eval, Array};

use super::Sampler;
use crate::{cache::KvCache, model::CausalLm};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token (included in the tokens).
    Eos,
    /// The sink asked to stop (a stop string).
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub tokens: Vec<u32>,
    /// Natural-log probability of each token under the model (temperature 1, no filters).
    pub logprobs: Vec<f32>,
    pub finish: FinishReason,
    /// Token ranges that an environment supplied (multi-turn rollouts): never trained on, log-prob 0.
    pub observations: Vec<std::ops::Range<usize>>,
}

impl Completion {
    pub fn empty() -> Self {
        Completion { tokens: Vec::new(), logprobs: Vec::new(), finish: FinishReason::Length, observations: Vec::new() }
    }
}

#[derive(Debug, Clone, Default)]
pub struct GenerationStats {
    /// Rows in the batch: each row's first token is timed with the prompt.
    pub rows: usize,
    pub prompt_tokens: usize,
    pub prompt_seconds: f64,
    pub generated_tokens: usize,
    pub decode_seconds: f64,
    pub peak_memory_bytes: usize,
}

impl GenerationStats {
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_seconds.max(1e-9)
    }

    /// Tokens after each row's first, over the time after the first (the first token's time is prompt time).
    pub fn decode_tps(&self) -> f64 {
        self.generated_tokens.saturating_sub(self.rows) as f64 / self.decode_seconds.max(1e-9)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Stop,
}

/// Receives each generated token as soon as it is known (for streaming and stop strings).
pub trait TokenSink {
    fn token(&mut self, row: usize, token: u32) -> Control;
}

impl<F: FnMut(usize, u32) -> Control> TokenSink for F {
    fn token(&mut self, row: usize, token: u32) -> Control {
        self(row, token)
    }
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub eos_ids: Vec<u32>,
    /// Prompt tokens per prefill forward (bounds activation memory on long prompts).
    pub prefill_step: usize,
    /// Token id used to left-pad shorter prompts (masked out; any valid id).
    pub pad_id: u32,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_tokens: 256, eos_ids: Vec::new(), prefill_step: 2048, pad_id: 0 }
    }
}

/// The first sampled tokens of a batch of prompts, each repeated `group` times, and what decoding needs next.
pub(super) struct Prefilled {
    pub tokens: Array,
    pub logprobs: Array,
    /// Each row's tokens so far (its prompt), for the sampler's penalties.
    pub history: Vec<Vec<u32>>,
    pub stats: GenerationStats,
    pub start: Instant,
}

/// Left-pads and prefills `prompts` (all but the last position in chunks of `prefill_step`), repeats each
/// prompt's cache rows `group` times and samples every row's first token (dispatched, not yet read).
pub(super) fn prefill_groups(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    group: usize,
    caches: &mut [Box<dyn KvCache>],
    sampler: &mut Sampler,
    options: &GenerateOptions,
) -> Result<Prefilled, Exception> {
    let rows = prompts.len() * group;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let padding: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    for cache in caches.iter_mut() {
        cache.set_left_padding(padding.clone());
    }
    let mut batch = Vec::with_capacity(rows * longest);
    for (p, &pad) in prompts.iter().zip(&padding) {
        batch.extend(std::iter::repeat_n(options.pad_id as i32, pad));
        batch.extend(p.iter().map(|&t| t as i32));
    }
    let batch = Array::from_slice(&batch, &[prompts.len() as i32, longest as i32]);
    let history: Vec<Vec<u32>> = prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), group)).collect();

    let _ = mlx_rs::memory::reset_peak_memory();
    let stats = GenerationStats { rows, prompt_tokens: prompts.iter().map(Vec::len).sum(), ..Default::default() };
    let start = Instant::now();
    // Prefill all but the last position in chunks; the last goes through `step`.
    let chunk = options.prefill_step.max(1);
    let mut at = 0;
    while longest - at > 1 {
        let end = (at + chunk).min(longest - 1);
        let logits = model.forward(&batch.index((.., at as i32..end as i32)), Some(caches))?;
        drop(logits);
        // Materialize the caches so later chunks and steps do not re-run this prefix.
        mlx_rs::transforms::eval(caches.iter().flat_map(|c| c.state()))?;
        at = end;
    }
    let refs: Vec<&[u32]> = history.iter().map(Vec::as_slice).collect();
    let (tokens, logprobs) = if group == 1 {
        step(model, &batch.index((.., at as i32..)), caches, sampler, &refs)?
    } else {
        let hidden = model.model.forward(&batch.index((.., at as i32..)), Some(caches))?;
        let last = model.head(&hidden.index((.., -1, ..)))?;
        for cache in caches.iter_mut() {
            cache.repeat_rows(group)?;
        }
        let shared = crate::cache::repeat_rows(&last, group)?;
        sampler.sample(&shared, &refs)?
    };
    async_eval([&tokens, &logprobs])?;
    Ok(Prefilled { tokens, logprobs, history, stats, start })
}

/// One decoding step: logits of the last position → sampled tokens and their log-probs (lazy). Only the last
/// position goes through the output projection.
pub(super) fn step(model: &CausalLm, input: &Array, caches: &mut [Box<dyn KvCache>], sampler: &mut Sampler, history: &[&[u32]]) -> Result<(Array, Array), Exception> {
    let hidden = model.model.forward(input, Some(caches))?;
    let last = model.head(&hidden.index((.., -1, ..)))?;
    sampler.sample(&last, history)
}

/// Generates for each prompt (they may differ in length; they are left-padded into one batch). `caches` must
/// be fresh, one per layer. Returns one completion per prompt, in order.
pub fn generate(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    caches: &mut [Box<dyn KvCache>],
    sampler: &mut Sampler,
    options: &GenerateOptions,
    sink: &mut dyn TokenSink,
) -> Result<(Vec<Completion>, GenerationStats), Exception> {
    generate_groups(model, prompts, 1, caches, sampler, options, sink)
}

/// Generates `group` completions for each prompt: the prompts are prefilled once, then each prompt's KV cache
/// rows and last-position logits are repeated `group` times and the copies are sampled independently. Returns
/// the completions prompt by prompt (prompt 0's `group` completions first); sink rows count the same way.
pub fn generate_groups(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    group: usize,
    caches: &mut [Box<dyn KvCache>],
    sampler: &mut Sampler,
    options: &GenerateOptions,
    sink: &mut dyn TokenSink,
) -> Result<(Vec<Completion>, GenerationStats), Exception> {
    let group = group.max(1);
    let rows = prompts.len() * group;
    if rows == 0 || options.max_tokens == 0 {
        return Ok(((0..rows).map(|_| Completion::empty()).collect(), GenerationStats::default()));
    }
    if prompts.iter().any(Vec::is_empty) {
        return Err(Exception::custom("a prompt has no tokens"));
    }
    let Prefilled { mut tokens, mut logprobs, mut history, mut stats, start } = prefill_groups(model, prompts, group, caches, sampler, options)?;

    let mut completions: Vec<Completion> = (0..rows).map(|_| Completion::empty()).collect();
    let mut done = vec![false; rows];
    let mut first = true;
    let mut decode_start = Instant::now();
    for n in 0..options.max_tokens {
        // Queue the next step before reading this one back.
        let next = if n + 1 < options.max_tokens {
            let refs: Vec<&[u32]> = history.iter().map(Vec::as_slice).collect();
            let input = tokens.expand_dims(-1)?;
            let out = step(model, &input, caches, sampler, &refs)?;
            async_eval([&out.0, &out.1])?;
            Some(out)
        } else {
            None
        };
        // Evaluated here so a backend failure is an error, not a panic inside `as_slice`.
        mlx_rs::transforms::eval([&tokens, &logprobs])?;
        let values: Vec<i32> = tokens.as_slice::<i32>().to_vec();
        let lps: Vec<f32> = logprobs.as_slice::<f32>().to_vec();
        if first {
            stats.prompt_seconds = start.elapsed().as_secs_f64();
            decode_start = Instant::now();
            first = false;
        }
        for row in 0..rows {
            if done[row] {
                continue;
            }
            let token = values[row] as u32;
            history[row].push(token);
            let c = &mut completions[row];
            c.tokens.push(token);
            c.logprobs.push(lps[row]);
            stats.generated_tokens += 1;
            if options.eos_ids.contains(&token) {
                c.finish = FinishReason::Eos;
                done[row] = true;
            } else if sink.token(row, token) == Control::Stop {
                c.finish = FinishReason::Stop;
                done[row] = true;
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        match next {
            Some((t, l)) => {
                tokens = t;
                logprobs = l;
            }
            None => break,
        }
    }
    stats.decode_seconds = decode_start.elapsed().as_secs_f64();
    stats.peak_memory_bytes = mlx_rs::memory::peak_memory().unwrap_or(0);
    Ok((completions, stats))
}
