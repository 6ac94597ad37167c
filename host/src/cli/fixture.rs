use std::path::PathBuf;

use clap::Args;
use host::fixture::{self, Family, Preset};

#[derive(Debug, Args)]
pub struct FixtureArgs {
    /// The model_type to write.
    #[arg(long, value_enum)]
    family: Family,
    /// Output directory (created).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "tiny")]
    preset: Preset,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Dtype the weights are stored in: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = super::generate::parse_dtype)]
    dtype: mlx_rs::Dtype,
    /// The model's vocabulary size, if larger than the preset's (e.g. 262144 for a Gemma-sized vocabulary).
    #[arg(long)]
    vocab_size: Option<i32>,
}

/// Writes a Hugging Face model directory with random weights and a freshly trained tokenizer.
pub fn run(args: FixtureArgs) -> anyhow::Result<()> {
    fixture::write_sized(&args.out, args.family, args.preset, args.seed, args.dtype, args.vocab_size)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
