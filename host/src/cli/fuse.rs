use std::path::PathBuf;

use clap::Args;
use host::{lora, model::hub};

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

/// Merges adapters into the base weights (re-quantizing quantized layers unless --dequantize), then loads
/// the result back and refuses it if it does not reproduce the adapters.
pub fn run(args: FuseArgs) -> anyhow::Result<()> {
    let dir = hub::resolve(&args.model)?;
    let report = lora::fuse_verified(&dir, &args.adapter, &args.out, args.dequantize)?;
    println!(
        "wrote {} (checked: it carries {:.1}% of the adapters' change to the logits, with {:.1}% of it in error, max |Δlogit| {:.3e} from the adapted model{})",
        report.out.display(),
        100.0 * report.kept,
        100.0 * report.noise,
        report.fusion_error,
        if report.requantized { ", re-quantized with the base's settings" } else { "" }
    );
    Ok(())
}
