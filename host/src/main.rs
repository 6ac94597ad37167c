//! `host`: fine-tune and align language models on MLX. Parses the command line and dispatches.

mod cli;

use std::io::Write;

use clap::Parser;

extern "C" {
    /// POSIX `_exit`: ends the process without running C++ static and thread-local destructors.
    fn _exit(status: i32) -> !;
}

fn main() {
    let code = match cli::Cli::parse().run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e:?}");
            1
        }
    };
    // Everything of ours is written and closed by now (run() has returned and dropped its files; checkpoints
    // are renamed into place before that). MLX 0.32.2's CUDA backend destroys its command encoders' streams
    // and graphs in destructors that throw when the CUDA driver has already begun shutting down, which
    // aborts a finished command ("Destroy(handle_) failed: driver shutting down", exit 134, seen in about one
    // of five runs on an H200; ml-explore/mlx#4531), so the process ends here without those destructors.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit has no preconditions; nothing after this point needed to run.
    unsafe { _exit(code) }
}
