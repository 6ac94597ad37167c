//! `host run --nproc N`: starts N ranks of this same binary on this machine and supervises them. Each rank's
//! output comes back line by line with a `[r] ` prefix (rank 0's standard error, with the progress bar, is
//! passed through as it is); the first rank to fail ends the others and the launch fails naming it.

use std::{
    ffi::OsString,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{Backend, DistError};

/// What to start: `args` are the rank's command line after the program name.
pub struct Launch {
    pub nproc: usize,
    pub backend: Backend,
    pub args: Vec<OsString>,
}

/// A rank's last lines of standard error, for the failure message.
type Tail = Arc<Mutex<Vec<String>>>;

const TAIL_LINES: usize = 8;

struct Rank {
    child: Child,
    tail: Tail,
    /// Threads copying its output; joined before reporting, so nothing it printed is lost.
    copiers: Vec<std::thread::JoinHandle<()>>,
}

/// Runs the ranks to the end. `Ok` when every rank exited successfully.
pub fn run(launch: &Launch) -> Result<(), DistError> {
    if launch.nproc < 2 {
        return Err(DistError::Setup(format!("--nproc {}: a launch needs at least 2 ranks (one process needs no launcher)", launch.nproc)));
    }
    let exe = std::env::current_exe().map_err(|e| DistError::Setup(format!("cannot find this program to start the ranks: {e}")))?;
    let scratch = std::env::temp_dir().join(format!("host-dist-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| DistError::Setup(format!("{}: {e}", scratch.display())))?;
    let envs = rank_environments(launch, &scratch);
    let result = envs.and_then(|envs| {
        let mut ranks = Vec::with_capacity(launch.nproc);
        for (r, env) in envs.into_iter().enumerate() {
            match spawn(&exe, &launch.args, r, env) {
                Ok(rank) => ranks.push(rank),
                Err(e) => {
                    stop(&mut ranks);
                    return Err(e);
                }
            }
        }
        supervise(ranks)
    });
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Every rank's environment: its rank, the world size and the backend's own variables.
fn rank_environments(launch: &Launch, scratch: &std::path::Path) -> Result<Vec<Vec<(String, OsString)>>, DistError> {
    let n = launch.nproc;
    let common = |r: usize| -> Vec<(String, OsString)> {
        vec![
            ("MLX_RANK".into(), r.to_string().into()),
            ("HOST_WORLD_SIZE".into(), n.to_string().into()),
            ("HOST_DIST_BACKEND".into(), launch.backend.name().into()),
        ]
    };
    match launch.backend {
        Backend::Ring => {
            let ports = free_ports(n)?;
            let hosts: Vec<Vec<String>> = ports.iter().map(|p| vec![format!("127.0.0.1:{p}")]).collect();
            let hostfile: PathBuf = scratch.join("hostfile.json");
            let text = serde_json::to_string(&hosts).map_err(|e| DistError::Setup(e.to_string()))?;
            std::fs::write(&hostfile, text).map_err(|e| DistError::Setup(format!("{}: {e}", hostfile.display())))?;
            Ok((0..n)
                .map(|r| {
                    let mut env = common(r);
                    env.push(("MLX_HOSTFILE".into(), hostfile.clone().into()));
                    env
                })
                .collect())
        }
        Backend::Nccl => {
            let port = free_ports(1)?[0];
            Ok((0..n)
                .map(|r| {
                    let mut env = common(r);
                    env.extend([
                        ("MLX_WORLD_SIZE".into(), n.to_string().into()),
                        ("NCCL_HOST_IP".into(), "127.0.0.1".into()),
                        ("NCCL_PORT".into(), port.to_string().into()),
                        // MLX computes on gpu:0 of what it sees: one GPU per rank.
                        ("CUDA_VISIBLE_DEVICES".into(), r.to_string().into()),
                    ]);
                    env
                })
                .collect())
        }
        Backend::Mpi => Err(DistError::Setup("--backend mpi: start the ranks with mpirun (each rank then runs `host run` with HOST_DIST_BACKEND=mpi); --nproc launches ring and nccl ranks".into())),
    }
}

/// Ports that were free a moment ago on 127.0.0.1 (the ranks bind them right after).
fn free_ports(n: usize) -> Result<Vec<u16>, DistError> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>().map_err(|e| DistError::Setup(format!("no free port on 127.0.0.1: {e}")))?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<_, _>>().map_err(|e| DistError::Setup(e.to_string()))
}

fn spawn(exe: &std::path::Path, args: &[OsString], r: usize, env: Vec<(String, OsString)>) -> Result<Rank, DistError> {
    let mut command = Command::new(exe);
    command.args(args).envs(env).stdin(Stdio::null()).stdout(Stdio::piped());
    // Rank 0's standard error is the terminal's: its progress bar draws there.
    command.stderr(if r == 0 { Stdio::inherit() } else { Stdio::piped() });
    let mut child = command.spawn().map_err(|e| DistError::Setup(format!("starting rank {r}: {e}")))?;
    let tail: Tail = Arc::default();
    let mut copiers = Vec::new();
    if let Some(out) = child.stdout.take() {
        copiers.push(copy_prefixed(out, r, false, tail.clone()));
    }
    if let Some(err) = child.stderr.take() {
        copiers.push(copy_prefixed(err, r, true, tail.clone()));
    }
    Ok(Rank { child, tail, copiers })
}

fn copy_prefixed(stream: impl Read + Send + 'static, r: usize, to_stderr: bool, tail: Tail) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if to_stderr {
                let _ = writeln!(std::io::stderr(), "[{r}] {line}");
                if let Ok(mut t) = tail.lock() {
                    t.push(line);
                    let excess = t.len().saturating_sub(TAIL_LINES);
                    t.drain(..excess);
                }
            } else {
                let _ = writeln!(std::io::stdout(), "[{r}] {line}");
            }
        }
    })
}

/// Waits for every rank; on the first failure stops the others and names it.
fn supervise(mut ranks: Vec<Rank>) -> Result<(), DistError> {
    let mut done: Vec<Option<ExitStatus>> = vec![None; ranks.len()];
    loop {
        for (r, rank) in ranks.iter_mut().enumerate() {
            if done[r].is_some() {
                continue;
            }
            let status = rank.child.try_wait().map_err(|e| DistError::Setup(format!("waiting for rank {r}: {e}")))?;
            if let Some(status) = status {
                done[r] = Some(status);
                if !status.success() {
                    stop(&mut ranks);
                    let rank = &mut ranks[r];
                    for c in rank.copiers.drain(..) {
                        let _ = c.join();
                    }
                    let tail = rank.tail.lock().map(|t| t.join("\n")).unwrap_or_default();
                    let said = if tail.is_empty() { String::new() } else { format!("; its last words:\n{tail}") };
                    return Err(DistError::Setup(format!("rank {r} failed ({status}); stopped the other ranks{said}")));
                }
            }
        }
        if done.iter().all(Option::is_some) {
            for rank in &mut ranks {
                for c in rank.copiers.drain(..) {
                    let _ = c.join();
                }
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ends every rank still running and reaps them (no orphans).
fn stop(ranks: &mut [Rank]) {
    for rank in ranks.iter_mut() {
        if matches!(rank.child.try_wait(), Ok(None)) {
            let _ = rank.child.kill();
        }
        let _ = rank.child.wait();
    }
}
