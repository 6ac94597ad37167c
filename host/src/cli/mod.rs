//! Command-line surface: one file per subcommand.

mod convert;
mod fixture;
mod fuse;
mod generate;
mod info;
mod plugins;
mod quantize;
mod run;
mod schedule;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use host::config::Override;

#[derive(Debug, Parser)]
#[command(name = "host", version, about = "Fine-tune and align language models on MLX")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train as a run configuration says (SFT with LoRA, DoRA or QLoRA).
    Run(run::RunArgs),
    /// MLX version, device, BLAS in use, and a matmul throughput probe.
    Info(info::InfoArgs),
    /// List plugins: kind, name, origin (built-in or file) and summary.
    Plugins(plugins::PluginsArgs),
    /// Print a run configuration's learning rate at every step, as CSV.
    Schedule(schedule::ScheduleArgs),
    /// Generate text with a model, streamed to stdout (or one JSON object with --json).
    Generate(generate::GenerateArgs),
    /// Merge LoRA/DoRA adapters into a model and write it as a Hugging Face directory.
    Fuse(fuse::FuseArgs),
    /// Quantize a float model to 4 or 8 bits and write a directory mlx-lm loads.
    Quantize(quantize::QuantizeArgs),
    /// Convert a llama.cpp GGUF file into a model directory host and mlx-lm load.
    Convert(convert::ConvertArgs),
    /// Write a small Hugging Face model directory with random weights (for tests and benchmarks).
    Fixture(fixture::FixtureArgs),
}

/// A run configuration and command-line overrides of it.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The run configuration (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Override a key of the configuration: `--set section.key=value` (value read as TOML, else a string).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<Override>,
}

impl Cli {
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(args) => run::run(args),
            Command::Info(args) => info::run(args),
            Command::Plugins(args) => plugins::run(args),
            Command::Schedule(args) => schedule::run(args),
            Command::Fixture(args) => fixture::run(args),
            Command::Generate(args) => generate::run(args),
            Command::Quantize(args) => quantize::run(args),
            Command::Fuse(args) => fuse::run(args),
            Command::Convert(args) => convert::run(args),
        }
    }
}
