//! MLX's distributed layer: one group per process, joined once, and the collectives data parallelism needs.
//! The group's size and rank come from the backend's environment (`MLX_RANK` and `MLX_HOSTFILE` for ring;
//! `MLX_RANK`, `MLX_WORLD_SIZE`, `NCCL_HOST_IP` and `NCCL_PORT` for NCCL).

use std::ffi::{c_char, c_int, CStr, CString};

use mlx_rs::{error::Exception, Array, Stream};
use mlx_sys::{mlx_array, mlx_stream};

extern "C" {
    fn mlx_ext_dist_init(backend: *const c_char, rank: *mut c_int, size: *mut c_int, err: *mut c_char, cap: usize) -> c_int;
    fn mlx_ext_dist_all_sum(res: *mut mlx_array, x: mlx_array, s: mlx_stream, err: *mut c_char, cap: usize) -> c_int;
    fn mlx_ext_dist_all_max(res: *mut mlx_array, x: mlx_array, s: mlx_stream, err: *mut c_char, cap: usize) -> c_int;
    fn mlx_ext_dist_all_gather(res: *mut mlx_array, x: mlx_array, s: mlx_stream, err: *mut c_char, cap: usize) -> c_int;
}

/// This process's place in the group it joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub rank: usize,
    pub size: usize,
}

/// Joins the group of `backend` (`"ring"`, `"nccl"`, `"mpi"`). Strict: a backend that cannot start (missing
/// environment, an unreachable peer after the backend's own retries) is an error naming it. Blocks until every
/// rank has joined; the ring backend's `accept` has no deadline of its own, so callers keep a watchdog.
pub fn join(backend: &str) -> Result<Membership, Exception> {
    let name = CString::new(backend).map_err(|_| Exception::custom(format!("backend name {backend:?} has a NUL byte")))?;
    let (mut rank, mut size) = (0, 0);
    let mut err = [0 as c_char; 512];
    // SAFETY: the out-pointers and the error buffer live for the call; the callee NUL-terminates within `cap`.
    let status = unsafe { mlx_ext_dist_init(name.as_ptr(), &mut rank, &mut size, err.as_mut_ptr(), err.len()) };
    if status != 0 {
        let what = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
        return Err(Exception::custom(format!("joining the {backend} group: {what}")));
    }
    Ok(Membership { rank: rank as usize, size: size as usize })
}

type Collective = unsafe extern "C" fn(*mut mlx_array, mlx_array, mlx_stream, *mut c_char, usize) -> c_int;

fn collective(op: Collective, x: &Array, stream: &Stream) -> Result<Array, Exception> {
    let mut err = [0 as c_char; 512];
    // SAFETY: a fresh handle the callee fills on success; the inputs are borrowed for the call.
    let mut res = unsafe { mlx_sys::mlx_array_new() };
    if unsafe { op(&mut res, x.as_ptr(), stream.as_ptr(), err.as_mut_ptr(), err.len()) } == 0 {
        // SAFETY: on success the handle owns a valid array.
        Ok(unsafe { Array::from_ptr(res) })
    } else {
        let what = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
        // SAFETY: still ours to free.
        unsafe { mlx_sys::mlx_array_free(res) };
        Err(Exception::custom(what))
    }
}

/// The element-wise sum of `x` over the group (lazy, like any op). With two ranks it is bitwise `x0 + x1`.
pub fn all_sum(x: &Array, stream: &Stream) -> Result<Array, Exception> {
    collective(mlx_ext_dist_all_sum, x, stream)
}

/// The element-wise maximum of `x` over the group.
pub fn all_max(x: &Array, stream: &Stream) -> Result<Array, Exception> {
    collective(mlx_ext_dist_all_max, x, stream)
}

/// Every rank's `x` stacked along the first axis, in rank order.
pub fn all_gather(x: &Array, stream: &Stream) -> Result<Array, Exception> {
    collective(mlx_ext_dist_all_gather, x, stream)
}
