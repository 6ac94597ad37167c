//! Per-kind function tables and the `repr(C)` data they exchange. Every table starts with [`VTableHeader`]'s
//! fields, so the host can destroy an instance of any kind; fields are only ever appended.

use std::ffi::c_void;

use mlx_sys::mlx_array;

use super::{FfiErrorSink, FfiStr, Status};

pub type DestroyFn = unsafe extern "C" fn(handle: *mut c_void);

/// The common prefix of every vtable.
#[repr(C)]
pub struct VTableHeader {
    pub struct_size: u64,
    pub destroy: DestroyFn,
}

/// `LrSchedule`.
#[repr(C)]
pub struct LrScheduleVTable {
    pub struct_size: u64,
    pub destroy: DestroyFn,
    pub lr: unsafe extern "C" fn(
        handle: *mut c_void,
        step: u64,
        base_lr: f64,
        total_steps: u64,
        out: *mut f64,
        err: *const FfiErrorSink,
    ) -> Status,
}

/// Receives named arrays from a plugin; the host takes ownership of each handle.
#[repr(C)]
pub struct FfiArraySink {
    pub ctx: *mut c_void,
    pub push: unsafe extern "C" fn(ctx: *mut c_void, name: FfiStr<'_>, array: mlx_array),
}

/// `LossInputs`, every array lent; absent ones have a null `ctx`.
#[repr(C)]
pub struct FfiLossInputs {
    pub struct_size: u64,
    pub policy_logps: mlx_array,
    pub mask: mlx_array,
    pub reference_logps: mlx_array,
    pub old_logps: mlx_array,
    pub labels: mlx_array,
    pub group_ids: mlx_array,
    pub rewards: mlx_array,
    pub advantages: mlx_array,
    pub kl_policy_logps: mlx_array,
    pub kl_reference_logps: mlx_array,
    pub kl_mask: mlx_array,
    pub rng_key: mlx_array,
    pub num_pairs: u64,
}

/// `Loss`. `forward` pushes `"loss"` first, then each metric, and only on success.
#[repr(C)]
pub struct LossVTable {
    pub struct_size: u64,
    pub destroy: DestroyFn,
    pub requirements: unsafe extern "C" fn(handle: *mut c_void, out: *mut u64, err: *const FfiErrorSink) -> Status,
    pub forward: unsafe extern "C" fn(
        handle: *mut c_void,
        inputs: *const FfiLossInputs,
        sink: *const FfiArraySink,
        err: *const FfiErrorSink,
    ) -> Status,
}

/// A borrowed `&[u32]`.
#[repr(C)]
pub struct FfiU32s {
    pub ptr: *const u32,
    pub len: usize,
}

/// `RewardBatch`; each pointer addresses `len` items.
#[repr(C)]
pub struct FfiRewardBatch<'a> {
    pub struct_size: u64,
    pub len: u64,
    pub prompts: *const FfiStr<'a>,
    pub completions: *const FfiStr<'a>,
    pub completion_ids: *const FfiU32s,
    pub rows: *const FfiStr<'a>,
}

/// `Reward`. `score` writes `len` values to `out`; NaN means "not applicable".
#[repr(C)]
pub struct RewardVTable {
    pub struct_size: u64,
    pub destroy: DestroyFn,
    pub score: unsafe extern "C" fn(
        handle: *mut c_void,
        batch: *const FfiRewardBatch<'_>,
        out: *mut f64,
        err: *const FfiErrorSink,
    ) -> Status,
}

/// `ModelModules`.
#[repr(C)]
pub struct FfiModelModules<'a> {
    pub struct_size: u64,
    pub model_type: FfiStr<'a>,
    pub num_layers: u64,
    pub paths: *const FfiStr<'a>,
    pub path_count: u64,
}

/// Receives LoRA targets; `rank` 0 and `scale` NaN mean "the `[lora]` default".
#[repr(C)]
pub struct FfiTargetSink {
    pub ctx: *mut c_void,
    pub push: unsafe extern "C" fn(ctx: *mut c_void, path: FfiStr<'_>, rank: u32, scale: f64),
}

/// `LoraTargetMapper`.
#[repr(C)]
pub struct LoraTargetMapperVTable {
    pub struct_size: u64,
    pub destroy: DestroyFn,
    pub select: unsafe extern "C" fn(
        handle: *mut c_void,
        modules: *const FfiModelModules<'_>,
        sink: *const FfiTargetSink,
        err: *const FfiErrorSink,
    ) -> Status,
}

pub const KV_CACHE_STANDARD: u32 = 1;
pub const KV_CACHE_ROTATING: u32 = 2;
pub const KV_CACHE_QUANTIZED: u32 = 3;

/// `KvCacheSpec`: `kind` selects which fields mean something.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct FfiKvCacheSpec {
    pub kind: u32,
    pub bits: u32,
    pub group_size: u32,
    pub reserved: u32,
    pub step: u64,
    pub max_size: u64,
    pub keep: u64,
    pub start: u64,
}

/// `KvCachePolicy`.
#[repr(C)]
pub struct KvCachePolicyVTable {
    pub struct_size: u64,
    pub destroy: DestroyFn,
    pub layer_cache: unsafe extern "C" fn(
        handle: *mut c_void,
        layer: u64,
        num_layers: u64,
        out: *mut FfiKvCacheSpec,
        err: *const FfiErrorSink,
    ) -> Status,
}

/// Receives bytes; the host copies them.
#[repr(C)]
pub struct FfiByteSink {
    pub ctx: *mut c_void,
    pub write: unsafe extern "C" fn(ctx: *mut c_void, data: *const u8, len: usize),
}

/// `DataCachePolicy`.
#[repr(C)]
pub struct DataCachePolicyVTable {
    pub struct_size: u64,
    pub destroy: DestroyFn,
    /// Bit 0: tokenize eagerly; bit 1: memoize.
    pub settings: unsafe extern "C" fn(handle: *mut c_void, out: *mut u32, err: *const FfiErrorSink) -> Status,
    pub load: unsafe extern "C" fn(
        handle: *mut c_void,
        key: FfiStr<'_>,
        sink: *const FfiByteSink,
        found: *mut bool,
        err: *const FfiErrorSink,
    ) -> Status,
    pub store: unsafe extern "C" fn(
        handle: *mut c_void,
        key: FfiStr<'_>,
        data: *const u8,
        len: usize,
        err: *const FfiErrorSink,
    ) -> Status,
}

/// `Environment`. Turns and replies cross as JSON text (`EnvTurn::to_json`, `EnvReply::to_json`): `tools`
/// writes a JSON list of tool schemas, `step` reads a JSON list of turns and writes a JSON list of replies.
#[repr(C)]
pub struct EnvironmentVTable {
    pub struct_size: u64,
    pub destroy: DestroyFn,
    pub tools: unsafe extern "C" fn(handle: *mut c_void, sink: *const FfiByteSink, err: *const FfiErrorSink) -> Status,
    pub step: unsafe extern "C" fn(
        handle: *mut c_void,
        turns: FfiStr<'_>,
        sink: *const FfiByteSink,
        err: *const FfiErrorSink,
    ) -> Status,
}
