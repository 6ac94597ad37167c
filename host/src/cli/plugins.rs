use std::path::PathBuf;

use clap::Args;
use host::{
    config::{Override, RunConfig},
    plugins::Registry,
};

#[derive(Debug, Args)]
pub struct PluginsArgs {
    /// Load plugins from this cdylib (repeatable).
    #[arg(long = "load", value_name = "FILE")]
    libraries: Vec<PathBuf>,
    /// Also load the `[plugins] paths` of this run configuration.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Overrides of that configuration: `--set section.key=value`.
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "config")]
    overrides: Vec<Override>,
}

pub fn run(args: PluginsArgs) -> anyhow::Result<()> {
    let mut registry = Registry::builtin()?;
    for path in &args.libraries {
        registry.load_library(path)?;
    }
    if let Some(config) = &args.config {
        RunConfig::load(config, &args.overrides, &mut registry)?;
    }
    let rows: Vec<[String; 4]> = registry
        .plugins()
        .map(|p| [p.kind.to_string(), p.name.clone(), p.origin.to_string(), p.summary.clone()])
        .collect();
    let headers = ["KIND", "NAME", "ORIGIN", "SUMMARY"];
    let widths: Vec<usize> =
        (0..3).map(|i| rows.iter().map(|r| r[i].len()).chain([headers[i].len()]).max().unwrap_or(0)).collect();
    let line = |cells: [&str; 4]| {
        println!("{:w0$}  {:w1$}  {:w2$}  {}", cells[0], cells[1], cells[2], cells[3], w0 = widths[0], w1 = widths[1], w2 = widths[2])
    };
    line(headers);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3]]);
    }
    Ok(())
}
