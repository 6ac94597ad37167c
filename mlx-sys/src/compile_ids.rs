//! Process-unique compile ids.
//!
//! mlx-rs numbers the functions it compiles from 1 with a counter private to each binary and passes the number
//! to MLX as the cache key of the compiled graph. MLX's compile cache is one per process, so when a cdylib
//! plugin and the host each compile a function, both use id 1 and the second silently gets the first's graph
//! (reproduced: a plugin's compiled `3x` returned the host's `2x`). mlx-rs also compiles inside some activations
//! (`log_sigmoid`, `silu`, `gelu`), so plugins hit this without calling `compile`.
//!
//! These wrappers keep mlx-rs unmodified: they have the signatures bindgen would give the C functions, and map
//! each (binary-local) id to the address of a heap cell allocated for it. One malloc serves the whole process,
//! so no two live ids share a key; the cell is freed when mlx-rs erases the id, after MLX has dropped the entry.

use std::{
    collections::HashMap,
    os::raw::c_int,
    sync::{Mutex, MutexGuard},
};

use super::{mlx_closure, mlx_compile_cache};

mod raw {
    use super::*;
    extern "C" {
        pub fn mlx_detail_compile(
            res: *mut mlx_closure,
            fun: mlx_closure,
            fun_id: usize,
            shapeless: bool,
            constants: *const u64,
            constants_num: usize,
        ) -> c_int;
        pub fn mlx_detail_compile_erase(cache: mlx_compile_cache, fun_id: usize) -> c_int;
    }
}

/// Local id -> the cell whose address is the key MLX sees.
static KEYS: Mutex<Option<HashMap<usize, Box<u64>>>> = Mutex::new(None);

fn keys() -> MutexGuard<'static, Option<HashMap<usize, Box<u64>>>> {
    // A panic while holding the lock cannot leave the map half-updated, so poisoning is ignored.
    KEYS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The key MLX's compile cache sees for this binary's `fun_id`.
pub fn process_key(fun_id: usize) -> usize {
    let mut guard = keys();
    let cell = guard.get_or_insert_with(HashMap::new).entry(fun_id).or_insert_with(|| Box::new(fun_id as u64));
    &**cell as *const u64 as usize
}

/// Number of ids with a live key (for tests: erase must release them).
pub fn live_keys() -> usize {
    keys().as_ref().map_or(0, HashMap::len)
}

/// `mlx_detail_compile` with `fun_id` made unique in the process.
pub unsafe fn mlx_detail_compile(
    res: *mut mlx_closure,
    fun: mlx_closure,
    fun_id: usize,
    shapeless: bool,
    constants: *const u64,
    constants_num: usize,
) -> c_int {
    raw::mlx_detail_compile(res, fun, process_key(fun_id), shapeless, constants, constants_num)
}

/// `mlx_detail_compile_erase` for an id given to [`mlx_detail_compile`]; releases its key.
pub unsafe fn mlx_detail_compile_erase(cache: mlx_compile_cache, fun_id: usize) -> c_int {
    let mut guard = keys();
    let Some(cell) = guard.as_mut().and_then(|map| map.remove(&fun_id)) else {
        // Never compiled under this id: nothing of ours is in MLX's cache.
        return 0;
    };
    let status = raw::mlx_detail_compile_erase(cache, &*cell as *const u64 as usize);
    drop(cell);
    status
}
