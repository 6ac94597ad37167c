use std::path::PathBuf;

use clap::Args;
use host::{
    model::{self, hub, LoadOptions},
    nn::Quant,
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
    #[arg(long, default_value_t = 4)]
    bits: i32,
    #[arg(long, default_value_t = 64)]
    group_size: i32,
    /// dtype of the unquantized tensors, scales and biases (default: the compute default, f32 on the CPU).
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<Dtype>,
}

/// Quantizes every linear layer (and the embeddings) whose width the group size divides, as mlx_lm.convert.
pub fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    let quant = Quant::checked(args.bits, args.group_size, "--bits/--group-size").map_err(anyhow::Error::msg)?;
    let dir = hub::resolve(&args.model)?;
    let loaded = model::load(&dir, &LoadOptions { dtype: args.dtype, quantize: Some(quant) })?;
    let skipped = loaded.quantization.as_ref().map_or(0, |p| p.overrides.len());
    model::save(&loaded, &args.out)?;
    println!("wrote {} ({}-bit, group size {}; {} modules left in float)", args.out.display(), quant.bits, quant.group_size, skipped);
    Ok(())
}
