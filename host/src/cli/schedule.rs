use clap::Args;
use host::{config::RunConfig, plugins::Registry};

use super::ConfigArgs;

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print every N-th step (the last step is always printed).
    #[arg(long, default_value_t = 1)]
    every: u64,
}

/// Prints the learning rate of every optimizer step of the configured run, as CSV.
pub fn run(args: ScheduleArgs) -> anyhow::Result<()> {
    let mut registry = Registry::builtin()?;
    let config = RunConfig::load(&args.config.config, &args.config.overrides, &mut registry)?;
    let (schedule, ctx) = config.build_schedule(&registry)?;
    let every = args.every.max(1);
    println!("step,lr");
    for step in 0..config.train.steps {
        if step % every == 0 || step + 1 == config.train.steps {
            println!("{step},{:.9e}", schedule.lr(step, &ctx)?);
        }
    }
    Ok(())
}
