use std::path::PathBuf;

use clap::Args;
use host::{
    config::RunConfig,
    plugins::Registry,
    train::{self, Resume, StopReason},
};

use super::ConfigArgs;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Continue from a checkpoint: the latest of this run's output directory, or the given checkpoint.
    #[arg(long, num_args = 0..=1, default_missing_value = "latest", value_name = "CHECKPOINT")]
    resume: Option<String>,
    /// Train data-parallel in N processes on this machine (exactly the result of one process with the same
    /// global batch; `[train] grad_accumulation_steps` must be a multiple of N).
    #[arg(long, value_name = "N")]
    nproc: Option<usize>,
    /// How the processes talk: `ring` (TCP; CPUs) or `nccl` (one NVIDIA GPU per process).
    #[arg(long, value_name = "BACKEND", default_value = "ring", requires = "nproc")]
    backend: String,
}

/// This command line without `--nproc` and `--backend` (what each rank runs).
fn rank_args() -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let text = a.to_string_lossy();
        if text == "--nproc" || text == "--backend" {
            args.next();
        } else if !(text.starts_with("--nproc=") || text.starts_with("--backend=")) {
            out.push(a);
        }
    }
    out
}

/// Trains as the configuration says. Ctrl-C stops after the current step with a checkpoint.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let backend = host::dist::Backend::parse(&args.backend)?;
    match args.nproc {
        Some(0) => anyhow::bail!("--nproc 0: at least one process"),
        Some(n) if n > 1 && std::env::var_os("HOST_WORLD_SIZE").is_none() => {
            // The launcher: the ranks are this same command line, each in its own process.
            let _ = ctrlc::set_handler(|| {});
            host::dist::launch::run(&host::dist::launch::Launch { nproc: n, backend, args: rank_args() })?;
            return Ok(());
        }
        _ => {}
    }
    host::dist::set(host::dist::World::from_env()?)?;
    // Harmless on the CPU, where MLX never reads it.
    if let Some(set) = host::runtime::training_cuda_graph_default() {
        if matches!(host::runtime::default_device().kind, mlx_rs::DeviceType::Gpu) {
            eprintln!("CUDA graphs off for training ({set}; set MLX_USE_CUDA_GRAPHS=1 to keep them)");
        }
    }
    let mut registry = Registry::builtin()?;
    let config = RunConfig::load(&args.config.config, &args.config.overrides, &mut registry)?;
    let resume = args.resume.map(|r| if r == "latest" { Resume::Latest } else { Resume::From(PathBuf::from(r)) });
    // A second Ctrl-C ends the process the usual way.
    let _ = ctrlc::set_handler(|| {
        static PRESSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if PRESSED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step (Ctrl-C again to quit now)");
        train::request_stop();
    });
    let outcome = train::run(&config, &registry, resume.as_ref())?;
    let how = match outcome.stopped {
        StopReason::Completed => "completed",
        StopReason::EarlyStopped => "stopped early (no better validation loss)",
        StopReason::Interrupted => "interrupted; resume with --resume",
    };
    if !outcome.native {
        println!("{} steps trained by mlx_lm.lora (its output above); adapters in {}", outcome.steps, outcome.output.display());
        return Ok(());
    }
    let what = if config.train.mode == host::config::TrainMode::Full { "the fine-tuned model" } else { "adapters" };
    let padding = 100.0 * (1.0 - outcome.real_tokens as f64 / outcome.padded_tokens.max(1) as f64);
    let speed = format!(
        "{:.0} tokens/s ({} tokens, {padding:.1}% padding), {:.1} s, peak memory {:.3} GB",
        outcome.real_tokens as f64 / outcome.seconds.max(1e-9),
        outcome.real_tokens,
        outcome.seconds,
        outcome.peak_memory_bytes as f64 / 1e9
    );
    if !host::dist::world().is_main() {
        // Rank 0 reports the run; the others only what is their own.
        println!("{speed}");
        return Ok(());
    }
    println!("{} steps, {how}", outcome.steps);
    println!("final train loss {:.4}", outcome.last_loss);
    if let Some((loss, step)) = outcome.best_eval {
        println!("best validation loss {loss:.4} at step {step} ({what} in {})", outcome.output.join("best").display());
    }
    println!("{speed}");
    println!("{what}, checkpoints, metrics.jsonl and loss.png in {}", outcome.output.display());
    for note in &outcome.notes {
        println!("{note}");
    }
    Ok(())
}
