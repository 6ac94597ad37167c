//! The plugin side of the ABI: `extern "C"` shims over the SDK traits, used by [`export_plugins!`].
//! Every shim catches panics and reports errors through the host's [`FfiErrorSink`].

use std::{
    ffi::c_void,
    panic::{catch_unwind, AssertUnwindSafe},
};

use mlx_rs::Array;

use super::{
    arrays, DataCachePolicyVTable, FfiArraySink, FfiByteSink, FfiErrorSink, FfiInstance, FfiKvCacheSpec,
    EnvironmentVTable, FfiLossInputs, FfiModelModules, FfiPluginEntry, FfiRewardBatch, FfiStr, FfiTargetSink, KvCachePolicyVTable,
    LoraTargetMapperVTable, LossVTable, LrScheduleVTable, RewardVTable, Status, KV_CACHE_QUANTIZED,
    KV_CACHE_ROTATING, KV_CACHE_STANDARD, STATUS_ERROR, STATUS_OK, STATUS_PANIC,
};
use crate::{
    DataCachePolicy, EnvTurn, Environment, KvCachePolicy, KvCacheSpec, LoraTargetMapper, Loss, LossInputs, LrSchedule, ModelModules,
    Plugin, PluginError, PluginKind, Reward, RewardBatch, ScheduleContext,
};

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

unsafe fn report(err: *const FfiErrorSink, message: &str) {
    if let Some(sink) = err.as_ref() {
        (sink.set)(sink.ctx, FfiStr::new(message));
    }
}

/// Runs `body`, turning its error or panic into a status and a message.
unsafe fn guard(err: *const FfiErrorSink, body: impl FnOnce() -> Result<(), PluginError>) -> Status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => STATUS_OK,
        Ok(Err(e)) => {
            report(err, &e.to_string());
            STATUS_ERROR
        }
        Err(payload) => {
            report(err, &panic_message(&*payload));
            STATUS_PANIC
        }
    }
}

unsafe fn parse_config(config: FfiStr<'_>) -> Result<toml::Table, PluginError> {
    let text = config.to_str().map_err(|e| PluginError::Config(format!("config text is not UTF-8: {e}")))?;
    text.parse::<toml::Table>().map_err(|e| PluginError::Config(format!("config text is not a TOML table: {e}")))
}

unsafe extern "C" fn destroy_boxed<T: ?Sized>(handle: *mut c_void) {
    // Dropping plugin state may panic; unwinding out of extern "C" would abort the host.
    let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(handle.cast::<Box<T>>()))));
}

unsafe fn instance<'a, T: ?Sized>(handle: *mut c_void) -> &'a mut Box<T> {
    &mut *handle.cast::<Box<T>>()
}

/// Creates the boxed instance and writes it out, or writes nothing on failure.
unsafe fn create<T: ?Sized>(
    config: FfiStr<'_>,
    out: *mut FfiInstance,
    err: *const FfiErrorSink,
    vtable: *const c_void,
    build: impl FnOnce(&toml::Table) -> Result<Box<T>, PluginError>,
) -> Status {
    guard(err, || {
        let table = parse_config(config)?;
        let plugin = build(&table)?;
        *out = FfiInstance { handle: Box::into_raw(Box::new(plugin)).cast(), vtable };
        Ok(())
    })
}

macro_rules! entry_fn {
    ($entry:ident, $create:ident, $trait_:ident, $kind:expr, $vtable:ident) => {
        unsafe extern "C" fn $create<T: $trait_ + Plugin>(
            config: FfiStr<'_>,
            out: *mut FfiInstance,
            err: *const FfiErrorSink,
        ) -> Status {
            create::<dyn $trait_>(config, out, err, std::ptr::addr_of!($vtable).cast::<c_void>(), |t| Ok(Box::new(T::from_config(t)?)))
        }

        #[doc = concat!("The descriptor entry of a [`", stringify!($trait_), "`] plugin.")]
        pub const fn $entry<T: $trait_ + Plugin>() -> FfiPluginEntry {
            FfiPluginEntry {
                struct_size: std::mem::size_of::<FfiPluginEntry>() as u64,
                kind: $kind as u32,
                name: FfiStr::new(T::NAME),
                summary: FfiStr::new(T::SUMMARY),
                create: $create::<T>,
            }
        }
    };
}

entry_fn!(loss_entry, create_loss, Loss, PluginKind::Loss, LOSS_VTABLE);
entry_fn!(schedule_entry, create_schedule, LrSchedule, PluginKind::LrSchedule, SCHEDULE_VTABLE);
entry_fn!(
    lora_target_mapper_entry,
    create_lora_target_mapper,
    LoraTargetMapper,
    PluginKind::LoraTargetMapper,
    LORA_TARGET_MAPPER_VTABLE
);
entry_fn!(kv_cache_policy_entry, create_kv_cache_policy, KvCachePolicy, PluginKind::KvCachePolicy, KV_CACHE_VTABLE);
entry_fn!(
    data_cache_policy_entry,
    create_data_cache_policy,
    DataCachePolicy,
    PluginKind::DataCachePolicy,
    DATA_CACHE_VTABLE
);
entry_fn!(reward_entry, create_reward, Reward, PluginKind::Reward, REWARD_VTABLE);
entry_fn!(environment_entry, create_environment, Environment, PluginKind::Environment, ENVIRONMENT_VTABLE);

// --- LrSchedule ---

static SCHEDULE_VTABLE: LrScheduleVTable = LrScheduleVTable {
    struct_size: std::mem::size_of::<LrScheduleVTable>() as u64,
    destroy: destroy_boxed::<dyn LrSchedule>,
    lr: schedule_lr,
};

unsafe extern "C" fn schedule_lr(
    handle: *mut c_void,
    step: u64,
    base_lr: f64,
    total_steps: u64,
    out: *mut f64,
    err: *const FfiErrorSink,
) -> Status {
    guard(err, || {
        let lr = instance::<dyn LrSchedule>(handle).lr(step, &ScheduleContext { base_lr, total_steps })?;
        *out = lr;
        Ok(())
    })
}

// --- Loss ---

static LOSS_VTABLE: LossVTable = LossVTable {
    struct_size: std::mem::size_of::<LossVTable>() as u64,
    destroy: destroy_boxed::<dyn Loss>,
    requirements: loss_requirements,
    forward: loss_forward,
};

unsafe extern "C" fn loss_requirements(handle: *mut c_void, out: *mut u64, err: *const FfiErrorSink) -> Status {
    guard(err, || {
        *out = instance::<dyn Loss>(handle).requirements().to_bits();
        Ok(())
    })
}

unsafe extern "C" fn loss_forward(
    handle: *mut c_void,
    inputs: *const FfiLossInputs,
    sink: *const FfiArraySink,
    err: *const FfiErrorSink,
) -> Status {
    guard(err, || {
        let raw = inputs.as_ref().ok_or_else(|| PluginError::Invalid("null loss inputs".to_owned()))?;
        let sink = sink.as_ref().ok_or_else(|| PluginError::Invalid("null array sink".to_owned()))?;
        let owned = |h| arrays::borrow(h);
        let required = |h, name: &str| {
            owned(h).ok_or_else(|| PluginError::Invalid(format!("the host did not provide `{name}`")))
        };
        let policy_logps = required(raw.policy_logps, "policy_logps")?;
        let mask = required(raw.mask, "mask")?;
        let optional: Vec<Option<Array>> = [
            raw.reference_logps,
            raw.old_logps,
            raw.labels,
            raw.group_ids,
            raw.rewards,
            raw.advantages,
            raw.kl_policy_logps,
            raw.kl_reference_logps,
            raw.kl_mask,
            raw.rng_key,
        ]
        .into_iter()
        .map(owned)
        .collect();
        let mut inputs = LossInputs::new(&policy_logps, &mask);
        inputs.reference_logps = optional[0].as_ref();
        inputs.old_logps = optional[1].as_ref();
        inputs.labels = optional[2].as_ref();
        inputs.group_ids = optional[3].as_ref();
        inputs.rewards = optional[4].as_ref();
        inputs.advantages = optional[5].as_ref();
        inputs.kl_policy_logps = optional[6].as_ref();
        inputs.kl_reference_logps = optional[7].as_ref();
        inputs.kl_mask = optional[8].as_ref();
        inputs.rng_key = optional[9].as_ref();
        inputs.num_pairs = usize::try_from(raw.num_pairs)
            .map_err(|_| PluginError::Invalid(format!("num_pairs {} does not fit", raw.num_pairs)))?;
        let output = instance::<dyn Loss>(handle).forward(&inputs)?;
        // Only now, with everything computed, does anything reach the host.
        (sink.push)(sink.ctx, FfiStr::new("loss"), arrays::give(output.loss));
        for (name, array) in output.metrics {
            (sink.push)(sink.ctx, FfiStr::new(&name), arrays::give(array));
        }
        Ok(())
    })
}

// --- Reward ---

static REWARD_VTABLE: RewardVTable = RewardVTable {
    struct_size: std::mem::size_of::<RewardVTable>() as u64,
    destroy: destroy_boxed::<dyn Reward>,
    score: reward_score,
};

unsafe fn strs<'a>(ptr: *const FfiStr<'a>, len: usize, what: &str) -> Result<Vec<&'a str>, PluginError> {
    if len == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() {
        return Err(PluginError::Invalid(format!("null `{what}`")));
    }
    std::slice::from_raw_parts(ptr, len)
        .iter()
        .map(|s| s.to_str().map_err(|e| PluginError::Invalid(format!("`{what}` is not UTF-8: {e}"))))
        .collect()
}

unsafe extern "C" fn reward_score(
    handle: *mut c_void,
    batch: *const FfiRewardBatch<'_>,
    out: *mut f64,
    err: *const FfiErrorSink,
) -> Status {
    guard(err, || {
        let raw = batch.as_ref().ok_or_else(|| PluginError::Invalid("null reward batch".to_owned()))?;
        let len = raw.len as usize;
        let prompts = strs(raw.prompts, len, "prompts")?;
        let completions = strs(raw.completions, len, "completions")?;
        let rows = strs(raw.rows, len, "rows")?;
        let ids: Vec<&[u32]> = if len == 0 {
            Vec::new()
        } else {
            std::slice::from_raw_parts(raw.completion_ids, len)
                .iter()
                .map(|s| if s.len == 0 { &[][..] } else { std::slice::from_raw_parts(s.ptr, s.len) })
                .collect()
        };
        let batch = RewardBatch { prompts: &prompts, completions: &completions, completion_ids: &ids, rows: &rows };
        let scores = instance::<dyn Reward>(handle).score(&batch)?;
        if scores.len() != len {
            return Err(PluginError::Invalid(format!("returned {} scores for {len} completions", scores.len())));
        }
        for (i, s) in scores.into_iter().enumerate() {
            *out.add(i) = s.unwrap_or(f64::NAN);
        }
        Ok(())
    })
}

// --- Environment ---

static ENVIRONMENT_VTABLE: EnvironmentVTable = EnvironmentVTable {
    struct_size: std::mem::size_of::<EnvironmentVTable>() as u64,
    destroy: destroy_boxed::<dyn Environment>,
    tools: environment_tools,
    step: environment_step,
};

unsafe fn write_json(sink: *const FfiByteSink, value: &serde_json::Value) -> Result<(), PluginError> {
    let sink = sink.as_ref().ok_or_else(|| PluginError::Invalid("null byte sink".to_owned()))?;
    let text = value.to_string();
    (sink.write)(sink.ctx, text.as_ptr(), text.len());
    Ok(())
}

unsafe extern "C" fn environment_tools(handle: *mut c_void, sink: *const FfiByteSink, err: *const FfiErrorSink) -> Status {
    guard(err, || {
        let tools = instance::<dyn Environment>(handle).tools()?;
        write_json(sink, &serde_json::Value::Array(tools))
    })
}

unsafe extern "C" fn environment_step(
    handle: *mut c_void,
    turns: FfiStr<'_>,
    sink: *const FfiByteSink,
    err: *const FfiErrorSink,
) -> Status {
    guard(err, || {
        let text = turns.to_str().map_err(|e| PluginError::Invalid(format!("turns are not UTF-8: {e}")))?;
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| PluginError::Invalid(format!("turns are not JSON: {e}")))?;
        let list = value.as_array().ok_or_else(|| PluginError::Invalid("turns are not a JSON list".to_owned()))?;
        let turns = list.iter().map(EnvTurn::from_json).collect::<Result<Vec<EnvTurn>, PluginError>>()?;
        let replies = instance::<dyn Environment>(handle).step(&turns)?;
        if replies.len() != turns.len() {
            return Err(PluginError::Invalid(format!("returned {} replies for {} turns", replies.len(), turns.len())));
        }
        write_json(sink, &serde_json::Value::Array(replies.iter().map(|r| r.to_json()).collect()))
    })
}

// --- LoraTargetMapper ---

static LORA_TARGET_MAPPER_VTABLE: LoraTargetMapperVTable = LoraTargetMapperVTable {
    struct_size: std::mem::size_of::<LoraTargetMapperVTable>() as u64,
    destroy: destroy_boxed::<dyn LoraTargetMapper>,
    select: lora_select,
};

unsafe extern "C" fn lora_select(
    handle: *mut c_void,
    modules: *const FfiModelModules<'_>,
    sink: *const FfiTargetSink,
    err: *const FfiErrorSink,
) -> Status {
    guard(err, || {
        let raw = modules.as_ref().ok_or_else(|| PluginError::Invalid("null model modules".to_owned()))?;
        let sink = sink.as_ref().ok_or_else(|| PluginError::Invalid("null target sink".to_owned()))?;
        let paths = strs(raw.paths, raw.path_count as usize, "paths")?;
        let model_type = raw.model_type.to_str().map_err(|e| PluginError::Invalid(format!("model_type: {e}")))?;
        let modules = ModelModules { model_type, num_layers: raw.num_layers as usize, linear_paths: &paths };
        let targets = instance::<dyn LoraTargetMapper>(handle).select(&modules)?;
        for t in targets {
            (sink.push)(sink.ctx, FfiStr::new(&t.path), t.rank.unwrap_or(0), t.scale.unwrap_or(f64::NAN));
        }
        Ok(())
    })
}

// --- KvCachePolicy ---

static KV_CACHE_VTABLE: KvCachePolicyVTable = KvCachePolicyVTable {
    struct_size: std::mem::size_of::<KvCachePolicyVTable>() as u64,
    destroy: destroy_boxed::<dyn KvCachePolicy>,
    layer_cache: kv_layer_cache,
};

/// The C form of a cache spec (shared with the host-side reader in `import`).
pub fn kv_spec_to_ffi(spec: KvCacheSpec) -> FfiKvCacheSpec {
    match spec {
        KvCacheSpec::Standard { step } => FfiKvCacheSpec { kind: KV_CACHE_STANDARD, step: step as u64, ..Default::default() },
        KvCacheSpec::Rotating { max_size, keep } => FfiKvCacheSpec {
            kind: KV_CACHE_ROTATING,
            max_size: max_size as u64,
            keep: keep as u64,
            ..Default::default()
        },
        KvCacheSpec::Quantized { bits, group_size, start } => FfiKvCacheSpec {
            kind: KV_CACHE_QUANTIZED,
            bits,
            group_size,
            start: start as u64,
            ..Default::default()
        },
    }
}

unsafe extern "C" fn kv_layer_cache(
    handle: *mut c_void,
    layer: u64,
    num_layers: u64,
    out: *mut FfiKvCacheSpec,
    err: *const FfiErrorSink,
) -> Status {
    guard(err, || {
        let spec = instance::<dyn KvCachePolicy>(handle).layer_cache(layer as usize, num_layers as usize)?;
        *out = kv_spec_to_ffi(spec);
        Ok(())
    })
}

// --- DataCachePolicy ---

static DATA_CACHE_VTABLE: DataCachePolicyVTable = DataCachePolicyVTable {
    struct_size: std::mem::size_of::<DataCachePolicyVTable>() as u64,
    destroy: destroy_boxed::<dyn DataCachePolicy>,
    settings: data_settings,
    load: data_load,
    store: data_store,
};

unsafe extern "C" fn data_settings(handle: *mut c_void, out: *mut u32, err: *const FfiErrorSink) -> Status {
    guard(err, || {
        let p = instance::<dyn DataCachePolicy>(handle);
        *out = u32::from(p.tokenize_eagerly()) | (u32::from(p.memoize()) << 1);
        Ok(())
    })
}

unsafe extern "C" fn data_load(
    handle: *mut c_void,
    key: FfiStr<'_>,
    sink: *const FfiByteSink,
    found: *mut bool,
    err: *const FfiErrorSink,
) -> Status {
    guard(err, || {
        let key = key.to_str().map_err(|e| PluginError::Invalid(format!("cache key: {e}")))?;
        let sink = sink.as_ref().ok_or_else(|| PluginError::Invalid("null byte sink".to_owned()))?;
        let blob = instance::<dyn DataCachePolicy>(handle).load(key)?;
        if let Some(bytes) = &blob {
            (sink.write)(sink.ctx, bytes.as_ptr(), bytes.len());
        }
        *found = blob.is_some();
        Ok(())
    })
}

unsafe extern "C" fn data_store(
    handle: *mut c_void,
    key: FfiStr<'_>,
    data: *const u8,
    len: usize,
    err: *const FfiErrorSink,
) -> Status {
    guard(err, || {
        let key = key.to_str().map_err(|e| PluginError::Invalid(format!("cache key: {e}")))?;
        let bytes = if len == 0 { &[][..] } else { std::slice::from_raw_parts(data, len) };
        instance::<dyn DataCachePolicy>(handle).store(key, bytes)
    })
}

/// Exports plugins from a cdylib: one line per plugin, its kind then its type.
///
/// ```ignore
/// sdk::export_plugins!(schedule InverseSqrt, loss PairLogSigmoid);
/// ```
/// Kinds: `loss`, `schedule`, `lora_target_mapper`, `kv_cache_policy`, `data_cache_policy`, `reward`,
/// `environment`.
/// Generates the library's entry point ([`ENTRY_SYMBOL`](super::ENTRY_SYMBOL)).
#[macro_export]
macro_rules! export_plugins {
    ($($kind:ident $t:ty),+ $(,)?) => {
        #[no_mangle]
        pub unsafe extern "C" fn mlx_host_plugin_entry(
            _host: *const $crate::abi::FfiHostApi,
        ) -> *const $crate::abi::FfiDescriptor {
            static ENTRIES: $crate::abi::EntryArray<{ [$(stringify!($t)),+].len() }> =
                $crate::abi::EntryArray([$($crate::__export_entry!($kind $t)),+]);
            static DESCRIPTOR: $crate::abi::SyncDescriptor =
                $crate::abi::SyncDescriptor($crate::abi::descriptor(&ENTRIES.0));
            &DESCRIPTOR.0
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_entry {
    (loss $t:ty) => { $crate::abi::export::loss_entry::<$t>() };
    (schedule $t:ty) => { $crate::abi::export::schedule_entry::<$t>() };
    (lora_target_mapper $t:ty) => { $crate::abi::export::lora_target_mapper_entry::<$t>() };
    (kv_cache_policy $t:ty) => { $crate::abi::export::kv_cache_policy_entry::<$t>() };
    (data_cache_policy $t:ty) => { $crate::abi::export::data_cache_policy_entry::<$t>() };
    (reward $t:ty) => { $crate::abi::export::reward_entry::<$t>() };
    (environment $t:ty) => { $crate::abi::export::environment_entry::<$t>() };
}
