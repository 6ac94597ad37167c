use std::{io::Write, path::PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use host::{
    cache,
    config::Override,
    lora,
    generate::{generate, Control, FinishReason, GenerateOptions, Sampler, SamplerConfig},
    model::{self, hub, LoadOptions},
    plugins::Registry,
    text::{StreamingDetokenizer, TextTokenizer},
};
use mlx_rs::Dtype;
use serde_json::json;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A model directory, or a Hugging Face repo id found in the local HF cache.
    #[arg(long)]
    model: String,
    /// Adapters to apply: a directory with adapters.safetensors and adapter_config.json (ours or mlx-lm's).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Merge the adapters into the weights before generating: faster decoding, but a quantized base is
    /// re-quantized with the adapter folded in, which rounds it (without --fuse the output is exact).
    #[arg(long, requires = "adapter")]
    fuse: bool,
    /// Raw text prompt (the tokenizer adds its BOS if it has one).
    #[arg(long, conflicts_with_all = ["chat", "prompt_ids"], required_unless_present_any = ["chat", "prompt_ids"])]
    prompt: Option<String>,
    /// Prompt as token ids, a JSON list (for benchmarks and exact reproduction).
    #[arg(long, conflicts_with = "chat", value_parser = parse_ids)]
    prompt_ids: Option<TokenIdList>,
    /// A user message, rendered with the model's chat template and a generation prompt.
    #[arg(long)]
    chat: Option<String>,
    /// A system message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long = "temp", default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: i32,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 20)]
    repetition_context: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the text contains this string (repeatable); the string is not printed.
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Compute dtype: f32, bf16 or f16 (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<Dtype>,
    /// Quantize the model on load to this many bits (4 or 8).
    #[arg(long)]
    quantize_bits: Option<i32>,
    #[arg(long, default_value_t = 64, requires = "quantize_bits")]
    quantize_group_size: i32,
    /// KV cache policy (a plugin name: standard, rotating, quantized, ...).
    #[arg(long, default_value = "standard")]
    cache: String,
    /// A setting of the KV cache policy, `key=value` (repeatable), e.g. `max_size=512`.
    #[arg(long = "cache-opt", value_name = "KEY=VALUE")]
    cache_opts: Vec<Override>,
    /// Print one JSON object (tokens, log-probs, text, timings) instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Keep generating past end-of-sequence tokens, up to --max-tokens (for benchmarks).
    #[arg(long)]
    ignore_eos: bool,
}

/// A JSON list of token ids given on the command line.
#[derive(Debug, Clone)]
struct TokenIdList(Vec<u32>);

fn parse_ids(text: &str) -> Result<TokenIdList, String> {
    serde_json::from_str(text).map(TokenIdList).map_err(|e| format!("expected a JSON list of token ids: {e}"))
}

pub fn parse_dtype(text: &str) -> Result<Dtype, String> {
    match text {
        "f32" | "float32" => Ok(Dtype::Float32),
        "bf16" | "bfloat16" => Ok(Dtype::Bfloat16),
        "f16" | "float16" => Ok(Dtype::Float16),
        other => Err(format!("unknown dtype `{other}`: expected f32, bf16 or f16")),
    }
}

/// Text that may still turn into a stop string is held back until it cannot.
struct StopFilter {
    stops: Vec<String>,
    text: String,
    emitted: usize,
}

impl StopFilter {
    /// Adds text; returns what can be shown now and whether a stop string appeared.
    fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            let out = self.text[self.emitted.min(at)..at].to_owned();
            self.text.truncate(at);
            self.emitted = at;
            return (out, true);
        }
        let hold = self.stops.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
        let mut until = self.text.len().saturating_sub(hold).max(self.emitted);
        while !self.text.is_char_boundary(until) {
            until -= 1;
        }
        let out = self.text[self.emitted..until].to_owned();
        self.emitted = until;
        (out, false)
    }

    fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_owned();
        self.emitted = self.text.len();
        out
    }
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let dir = hub::resolve(&args.model)?;
    let quantize = args
        .quantize_bits
        .map(|bits| host::nn::Quant::checked(bits, args.quantize_group_size, host::nn::QuantMode::Affine, "--quantize-bits"))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let mut loaded = model::load(&dir, &LoadOptions { dtype: args.dtype, quantize })?;
    if let Some(adapter) = &args.adapter {
        let settings = lora::load_adapters(&mut loaded.model, adapter)?;
        if args.fuse {
            lora::fuse(&mut loaded.model, false)?;
        } else {
            lora::set_sampling(&mut loaded.model, true)?;
        }
        eprintln!(
            "adapters from {} (rank {}, scale {}{}){}",
            adapter.display(),
            settings.rank,
            settings.scale,
            if settings.dora { ", DoRA" } else { "" },
            if args.fuse { ", fused" } else { "" }
        );
    }
    let tokenizer = TextTokenizer::load(&dir)?;
    let prompt_tokens = match (&args.prompt, &args.chat) {
        _ if args.prompt_ids.is_some() => args.prompt_ids.clone().map(|l| l.0).unwrap_or_default(),
        (Some(text), _) => tokenizer.encode(text, true).map_err(anyhow::Error::msg)?,
        (None, Some(message)) => {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(json!({"role": "system", "content": system}));
            }
            messages.push(json!({"role": "user", "content": message}));
            tokenizer.encode_chat(&messages, None, true).map_err(anyhow::Error::msg)?
        }
        (None, None) => bail!("give --prompt, --prompt-ids or --chat"),
    };
    if prompt_tokens.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let vocab = loaded.model.config.vocab_size as u32;
    if let Some(bad) = prompt_tokens.iter().find(|&&t| t >= vocab) {
        bail!("prompt token {bad} is outside the model's vocabulary of {vocab}");
    }
    let sampler_config = SamplerConfig {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        repetition_context: args.repetition_context,
    };
    sampler_config.validate().map_err(anyhow::Error::msg)?;
    let registry = Registry::builtin()?;
    let mut cache_table = toml::Table::new();
    for o in &args.cache_opts {
        cache_table.insert(o.path.join("."), o.value.clone());
    }
    let policy = registry.kv_cache_policy(&args.cache, &cache_table)?;
    let mut caches = cache::for_layers(&*policy, &loaded.model.attention_windows()).context("KV cache policy")?;
    let mut sampler = Sampler::new(sampler_config, args.seed)?;
    let eos_ids = if args.ignore_eos { Vec::new() } else { tokenizer.eos_ids.clone() };
    let options = GenerateOptions { max_tokens: args.max_tokens, eos_ids, ..Default::default() };

    let mut detokenizer = StreamingDetokenizer::new(&tokenizer.inner);
    let mut filter = StopFilter { stops: args.stop.clone(), text: String::new(), emitted: 0 };
    let stream = !args.json;
    let mut stdout = std::io::stdout();
    let mut sink = |_row: usize, token: u32| {
        let (visible, stopped) = filter.push(&detokenizer.push(token));
        if stream && !visible.is_empty() {
            let _ = stdout.write_all(visible.as_bytes());
            let _ = stdout.flush();
        }
        if stopped { Control::Stop } else { Control::Continue }
    };
    let (mut completions, stats) =
        generate(&loaded.model, std::slice::from_ref(&prompt_tokens), &mut caches, &mut sampler, &options, &mut sink)?;
    let completion = completions.remove(0);
    if completion.finish != FinishReason::Stop {
        let (visible, _) = filter.push(&detokenizer.finish());
        let rest = visible + &filter.flush();
        if stream && !rest.is_empty() {
            print!("{rest}");
        }
    }
    if args.json {
        let out = json!({
            "prompt_tokens": prompt_tokens,
            "tokens": completion.tokens,
            "logprobs": completion.logprobs,
            "text": filter.text,
            "finish_reason": completion.finish.as_str(),
            "timings": {
                "prompt_tokens_per_second": stats.prompt_tps(),
                "decode_tokens_per_second": stats.decode_tps(),
                "prompt_seconds": stats.prompt_seconds,
                "decode_seconds": stats.decode_seconds,
                "peak_memory_gb": stats.peak_memory_bytes as f64 / 1e9,
            },
        });
        println!("{out}");
    } else {
        println!();
        eprintln!(
            "prompt: {} tokens, {:.1} tokens/s; generation: {} tokens, {:.1} tokens/s; peak memory {:.3} GB",
            stats.prompt_tokens,
            stats.prompt_tps(),
            stats.generated_tokens,
            stats.decode_tps(),
            stats.peak_memory_bytes as f64 / 1e9
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::StopFilter;

    #[test]
    fn stop_strings_are_held_back_and_cut() {
        let mut f = StopFilter { stops: vec!["END".into()], text: String::new(), emitted: 0 };
        assert_eq!(f.push("hello E"), ("hello".into(), false));
        // Only the last len("END") − 1 bytes are held back.
        assert_eq!(f.push("N"), (" ".into(), false));
        assert_eq!(f.push("Dgame"), (String::new(), true));
        assert_eq!(f.text, "hello ");
        let mut f = StopFilter { stops: vec![], text: String::new(), emitted: 0 };
        assert_eq!(f.push("é"), ("é".into(), false));
    }
}
