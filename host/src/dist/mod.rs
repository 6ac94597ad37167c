//! Data parallelism over MLX's distributed layer: the group this process belongs to and the few collectives
//! the trainers call at fixed points of a step. With one process everything here is a no-op (no MLX group is
//! ever initialised), so trainers call it unconditionally.
//!
//! A rank learns its place from the launcher (`launch`): `HOST_WORLD_SIZE` and `HOST_DIST_BACKEND`, plus the
//! backend's own variables (`MLX_RANK` and `MLX_HOSTFILE` for ring; `MLX_RANK`, `MLX_WORLD_SIZE`,
//! `NCCL_HOST_IP`, `NCCL_PORT` for NCCL). Under `mlx.launch`, which sets only the backend's variables,
//! `HOST_DIST_BACKEND` names the backend and the size comes from the group.

pub mod launch;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use mlx_ext::distributed as mxd;
use mlx_rs::{error::Exception, Array, Stream};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DistError {
    #[error("{0}")]
    Setup(String),
    #[error("distributed: {0}")]
    Mlx(String),
}

impl From<Exception> for DistError {
    fn from(e: Exception) -> Self {
        DistError::Mlx(e.what().to_owned())
    }
}

/// The backends MLX's Linux builds have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// TCP between hosts; collectives on the CPU stream.
    Ring,
    /// NVIDIA GPUs (CUDA builds); collectives on the GPU stream.
    Nccl,
    /// Open MPI (`libmpi.so`).
    Mpi,
}

impl Backend {
    pub fn parse(name: &str) -> Result<Backend, DistError> {
        match name {
            "ring" => Ok(Backend::Ring),
            "nccl" => Ok(Backend::Nccl),
            "mpi" => Ok(Backend::Mpi),
            other => Err(DistError::Setup(format!("unknown distributed backend `{other}` (ring, nccl or mpi)"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Ring => "ring",
            Backend::Nccl => "nccl",
            Backend::Mpi => "mpi",
        }
    }
}

/// How long a rank waits for the others to join before it gives up (the ring backend's `accept` has no
/// deadline of its own). `HOST_DIST_TIMEOUT` (seconds) overrides it.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// This process's group: one process, or a rank of several.
#[derive(Debug, Clone)]
pub struct World {
    rank: usize,
    size: usize,
    /// Whose collectives; `None` with one process.
    backend: Option<Backend>,
}

static WORLD: OnceLock<World> = OnceLock::new();

/// The world this process trains in: what [`set`] was given, else one process.
pub fn world() -> &'static World {
    WORLD.get_or_init(World::single)
}

/// Makes `world` this process's for the rest of its life (once; a second call is an error).
pub fn set(world: World) -> Result<(), DistError> {
    WORLD.set(world).map_err(|_| DistError::Setup("the distributed world is already set".into()))
}

impl World {
    pub fn single() -> World {
        World { rank: 0, size: 1, backend: None }
    }

    /// Where the collectives run: the CPU stream for ring and MPI, the GPU stream for NCCL.
    fn stream(&self) -> Option<Stream> {
        self.backend.map(|b| match b {
            Backend::Nccl => Stream::gpu(),
            Backend::Ring | Backend::Mpi => Stream::cpu(),
        })
    }

    /// The world the launcher (or `mlx.launch` with `HOST_DIST_BACKEND`) set up for this process; one process
    /// when neither did. Joining blocks until every rank has joined, at most `HOST_DIST_TIMEOUT` seconds.
    pub fn from_env() -> Result<World, DistError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let expected = match var("HOST_WORLD_SIZE") {
            Some(v) => Some(v.parse::<usize>().map_err(|_| DistError::Setup(format!("HOST_WORLD_SIZE={v} is not a number")))?),
            None => None,
        };
        let backend = match var("HOST_DIST_BACKEND") {
            Some(name) => Backend::parse(&name)?,
            None if expected.is_some_and(|n| n > 1) => return Err(DistError::Setup("HOST_WORLD_SIZE is set but HOST_DIST_BACKEND is not".into())),
            None => return Ok(World::single()),
        };
        if expected == Some(1) {
            return Ok(World::single());
        }
        let timeout = match var("HOST_DIST_TIMEOUT") {
            Some(v) => Duration::from_secs(v.parse().map_err(|_| DistError::Setup(format!("HOST_DIST_TIMEOUT={v} is not a number of seconds")))?),
            None => JOIN_TIMEOUT,
        };
        let member = join_within(backend, timeout)?;
        if let Some(n) = expected {
            if member.size != n {
                return Err(DistError::Setup(format!("the {} group has {} ranks, HOST_WORLD_SIZE says {n}", backend.name(), member.size)));
            }
        }
        Ok(World { rank: member.rank, size: member.size, backend: Some(backend) })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Rank 0: the one that writes files and prints progress.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// The element-wise sum of `x` over the ranks (`x` itself with one process). With two ranks the sum is
    /// bitwise `x0 + x1`.
    pub fn sum(&self, x: &Array) -> Result<Array, DistError> {
        match self.stream() {
            None => Ok(x.clone()),
            Some(s) => Ok(mxd::all_sum(x, &s)?),
        }
    }

    /// Per-slot values that exactly one rank knows (the others hold 0.0): every rank gets every slot, bit for
    /// bit. Sent as the float64 values' bit patterns in int64, where adding zeros is exact whatever the order
    /// (MLX's GPU has no float64, and a float sum could round).
    pub fn merge_slots(&self, slots: &[f64]) -> Result<Vec<f64>, DistError> {
        let Some(s) = self.stream() else { return Ok(slots.to_vec()) };
        if slots.is_empty() {
            return Ok(Vec::new());
        }
        let patterns: Vec<i64> = slots.iter().map(|v| v.to_bits() as i64).collect();
        let merged = mxd::all_sum(&Array::from_slice(&patterns, &[patterns.len() as i32]), &s)?;
        merged.eval()?;
        Ok(merged.as_slice::<i64>().iter().map(|&b| f64::from_bits(b as u64)).collect())
    }

    /// Whether any rank says yes (Ctrl-C on one rank stops all at the same step).
    pub fn any(&self, yes: bool) -> Result<bool, DistError> {
        let Some(s) = self.stream() else { return Ok(yes) };
        let flag = mxd::all_max(&Array::from_slice(&[i32::from(yes)], &[1]), &s)?;
        flag.eval()?;
        Ok(flag.as_slice::<i32>()[0] != 0)
    }

    /// Every rank's value, in rank order.
    pub fn gather_u64(&self, value: u64) -> Result<Vec<u64>, DistError> {
        let Some(s) = self.stream() else { return Ok(vec![value]) };
        let all = mxd::all_gather(&Array::from_slice(&[value as i64], &[1]), &s)?;
        all.eval()?;
        Ok(all.as_slice::<i64>().iter().map(|&v| v as u64).collect())
    }

    /// Returns once every rank has reached it (after rank 0 wrote a checkpoint the others will read).
    pub fn barrier(&self) -> Result<(), DistError> {
        self.any(false).map(|_| ())
    }
}

/// Joins, or ends the process with a message once `timeout` has passed without every rank joining: a join
/// blocked in `accept` cannot be cancelled from the calling thread.
fn join_within(backend: Backend, timeout: Duration) -> Result<mxd::Membership, DistError> {
    let joined = Arc::new(AtomicBool::new(false));
    let flag = joined.clone();
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        while started.elapsed() < timeout {
            if flag.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !flag.load(Ordering::SeqCst) {
            eprintln!("error: the other ranks did not join the {} group within {} s (HOST_DIST_TIMEOUT)", backend.name(), timeout.as_secs());
            std::process::exit(3);
        }
    });
    let member = mxd::join(backend.name());
    joined.store(true, Ordering::SeqCst);
    Ok(member?)
}
