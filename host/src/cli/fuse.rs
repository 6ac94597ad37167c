use std::path::PathBuf;

use clap::Args;
use host::{
    lora,
    model::{self, hub, LoadOptions},
};

#[derive(Debug, Args)]
pub struct FuseArgs {
    /// The base model: a directory or a repo id in the local Hugging Face cache.
    #[arg(long)]
    model: String,
    /// Directory with adapters.safetensors and adapter_config.json (ours or mlx-lm's).
    #[arg(long)]
    adapter: PathBuf,
    /// Output directory: a Hugging Face model directory.
    #[arg(long)]
    out: PathBuf,
    /// Write float weights even where the base was quantized.
    #[arg(long)]
    dequantize: bool,
}

/// Merges adapters into the base weights (re-quantizing quantized layers unless --dequantize).
pub fn run(args: FuseArgs) -> anyhow::Result<()> {
    let dir = hub::resolve(&args.model)?;
    let mut loaded = model::load(&dir, &LoadOptions::default())?;
    lora::load_adapters(&mut loaded.model, &args.adapter)?;
    lora::fuse(&mut loaded.model, args.dequantize)?;
    if args.dequantize {
        loaded.quantization = None;
    }
    model::save(&loaded, &args.out)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
