use std::path::PathBuf;

use clap::Args;
use host::{
    gguf::{self, ConvertOptions},
    nn::Quant,
};
use mlx_rs::Dtype;

use super::generate::parse_dtype;

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// A llama.cpp GGUF model file (llama, qwen2, qwen3, gemma3).
    #[arg(long)]
    gguf: PathBuf,
    /// Output directory: a model directory host and mlx-lm load.
    #[arg(long)]
    out: PathBuf,
    /// dtype of float and dequantized tensors (default: the file's float type, else float16).
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<Dtype>,
    /// Quantize what ends up in float (dequantized k-quants, float weights) to this many bits, MLX affine.
    #[arg(long)]
    quantize_bits: Option<i32>,
    /// Group size for --quantize-bits.
    #[arg(long, default_value_t = 64, requires = "quantize_bits")]
    group_size: i32,
}

/// Converts a GGUF file into a model directory.
pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let quantize = match args.quantize_bits {
        Some(bits) => Some(Quant::checked(bits, args.group_size, host::nn::QuantMode::Affine, "--quantize-bits/--group-size").map_err(anyhow::Error::msg)?),
        None => None,
    };
    let done = gguf::convert(&args.gguf, &args.out, &ConvertOptions { dtype: args.dtype, quantize, own_reader: false })?;
    let types: Vec<String> = done.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    println!(
        "wrote {} ({} → model_type {}; {} tensors: {}; read by {}{})",
        args.out.display(),
        done.architecture,
        done.model_type,
        done.tensors,
        types.join(", "),
        done.reader,
        if done.dequantized > 0 { format!("; {} dequantized to float", done.dequantized) } else { String::new() }
    );
    Ok(())
}
