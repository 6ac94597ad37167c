use std::path::PathBuf;

use clap::Args;
use host::{
    model::{self, hub, LoadOptions},
    nn::{Quant, QuantMode},
};
use mlx_rs::Dtype;

use super::generate::parse_dtype;

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The float model: a directory or a repo id in the local Hugging Face cache.
    #[arg(long)]
    model: String,
    /// Output directory (mlx-lm loads it).
    #[arg(long)]
    out: PathBuf,
    /// affine, mxfp4, nvfp4 or mxfp8 (MLX's quantization modes).
    #[arg(long, default_value = "affine", value_parser = parse_mode)]
    mode: QuantMode,
    /// Default: the mode's (affine: 4; mxfp4, nvfp4: 4; mxfp8: 8).
    #[arg(long)]
    bits: Option<i32>,
    /// Default: the mode's (affine: 64; mxfp4, mxfp8: 32; nvfp4: 16).
    #[arg(long)]
    group_size: Option<i32>,
    /// dtype of the unquantized tensors, scales and biases (default: the compute default, f32 on the CPU).
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<Dtype>,
}

fn parse_mode(name: &str) -> Result<QuantMode, String> {
    QuantMode::parse(name, "--mode")
}

/// Quantizes every linear layer (and the embeddings) whose width the group size divides, as mlx_lm.convert.
pub fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    let quant = Quant::with_defaults(args.mode, args.bits, args.group_size, "--mode/--bits/--group-size").map_err(anyhow::Error::msg)?;
    let dir = hub::resolve(&args.model)?;
    let loaded = model::load(&dir, &LoadOptions { dtype: args.dtype, quantize: Some(quant) })?;
    let skipped = loaded.quantization.as_ref().map_or(0, |p| p.overrides.len());
    model::save(&loaded, &args.out)?;
    println!(
        "wrote {} ({} {}-bit, group size {}; {} modules differ from that: float or routers)",
        args.out.display(),
        quant.mode.name(),
        quant.bits,
        quant.group_size,
        skipped
    );
    Ok(())
}
