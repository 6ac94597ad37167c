//! `host`: fine-tune and align language models on MLX. Parses the command line and dispatches.

mod cli;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    cli::Cli::parse().run()
}
