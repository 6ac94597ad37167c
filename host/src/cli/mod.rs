//! Command-line surface: one file per subcommand.

mod info;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "host", version, about = "Fine-tune and align language models on MLX")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// MLX version, device, BLAS in use, and a matmul throughput probe.
    Info(info::InfoArgs),
}

impl Cli {
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Info(args) => info::run(args),
        }
    }
}
