//! The host side of the ABI: checking a descriptor and calling plugin instances through their vtables as
//! if they were built in. The host's loader (dlopen) lives in the host; everything that interprets the C
//! tables lives here, next to the code that writes them.

use std::{ffi::c_void, fmt};

use mlx_rs::Array;

use super::{
    arrays, DataCachePolicyVTable, EnvironmentVTable, FfiArraySink, FfiByteSink, FfiDescriptor, FfiErrorSink,
    FfiHeader, FfiHostApi, FfiInstance, FfiKvCacheSpec, FfiLossInputs, FfiModelModules, FfiPluginEntry,
    FfiRewardBatch, FfiStr, FfiTargetSink, FfiU32s, KvCachePolicyVTable, LoraTargetMapperVTable, LossVTable,
    LrScheduleVTable, RewardVTable, Status, VTableHeader, ABI_MAGIC, ABI_MAJOR, ABI_MINOR, KV_CACHE_QUANTIZED,
    KV_CACHE_ROTATING, KV_CACHE_STANDARD, STATUS_OK, STATUS_PANIC,
};
use crate::{
    DataCachePolicy, EnvReply, EnvTurn, Environment, KvCachePolicy, KvCacheSpec, LoraTarget, LoraTargetMapper, Loss, LossInputs, LossOutput,
    LrSchedule, ModelModules, PluginError, PluginKind, Requirements, Reward, RewardBatch, ScheduleContext,
};

/// Why a library's descriptor was refused. The host adds the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbiError {
    NullDescriptor,
    BadMagic { found: u64 },
    OtherMajor { plugin: (u32, u32) },
    NewerMinor { plugin: (u32, u32) },
    TooSmall { what: &'static str, size: u64 },
    MlxMismatch { plugin: String, host: String },
    UnknownKind { name: String, kind: u32 },
    NotUtf8 { what: &'static str },
}

impl fmt::Display for AbiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = format!("{ABI_MAJOR}.{ABI_MINOR}");
        match self {
            AbiError::NullDescriptor => write!(f, "the entry point returned no descriptor"),
            AbiError::BadMagic { found } => {
                write!(f, "not a plugin of this host: magic {found:#018x}, expected {ABI_MAGIC:#018x}")
            }
            AbiError::OtherMajor { plugin: (major, minor) } => write!(
                f,
                "plugin ABI {major}.{minor} is incompatible with the host's ABI {host} (major versions must be \
                 equal); rebuild the plugin against this host's sdk"
            ),
            AbiError::NewerMinor { plugin: (major, minor) } => write!(
                f,
                "plugin ABI {major}.{minor} is newer than the host's ABI {host}; use a newer host or rebuild the \
                 plugin against this host's sdk"
            ),
            AbiError::TooSmall { what, size } => write!(f, "{what} is {size} bytes, smaller than ABI {host} allows"),
            AbiError::MlxMismatch { plugin, host } => write!(
                f,
                "plugin was built against another MLX: plugin `{plugin}`, host `{host}`; both must call the same \
                 libmlx through the same mlx-c (rebuild the plugin in this workspace or with its mlx-sys)"
            ),
            AbiError::UnknownKind { name, kind } => {
                write!(f, "plugin `{name}` has kind {kind}, unknown to ABI {host}")
            }
            AbiError::NotUtf8 { what } => write!(f, "{what} is not UTF-8"),
        }
    }
}

impl std::error::Error for AbiError {}

/// The table the host hands to every entry point.
pub fn host_api() -> FfiHostApi {
    FfiHostApi {
        header: FfiHeader::current(std::mem::size_of::<FfiHostApi>()),
        mlx_build: FfiStr::new(mlx_sys::BUILD),
        sdk_version: FfiStr::new(crate::SDK_VERSION),
    }
}

/// A checked descriptor.
pub struct Library {
    pub abi: (u32, u32),
    pub mlx_build: String,
    pub sdk_version: String,
    pub plugins: Vec<ImportedPlugin>,
}

/// One plugin a library offers.
pub struct ImportedPlugin {
    pub kind: PluginKind,
    pub name: String,
    pub summary: String,
    create: super::CreateFn,
}

/// Reads and checks a descriptor returned by an entry point, against this binary's ABI and MLX build.
///
/// # Safety
/// `descriptor` must be null or point to a descriptor valid for the life of the process (libraries are never
/// unloaded), with `entry_count` entries `entry_stride` bytes apart.
pub unsafe fn read_descriptor(descriptor: *const FfiDescriptor) -> Result<Library, AbiError> {
    let d = descriptor.as_ref().ok_or(AbiError::NullDescriptor)?;
    // Only the frozen header may be read before the version checks pass.
    let header: FfiHeader = std::ptr::read(descriptor.cast::<FfiHeader>());
    if header.magic != ABI_MAGIC {
        return Err(AbiError::BadMagic { found: header.magic });
    }
    let version = (header.abi_major, header.abi_minor);
    if header.abi_major != ABI_MAJOR {
        return Err(AbiError::OtherMajor { plugin: version });
    }
    if header.abi_minor > ABI_MINOR {
        return Err(AbiError::NewerMinor { plugin: version });
    }
    if header.struct_size < std::mem::size_of::<FfiDescriptor>() as u64 {
        return Err(AbiError::TooSmall { what: "the descriptor", size: header.struct_size });
    }
    let mlx_build = d.mlx_build.to_str().map_err(|_| AbiError::NotUtf8 { what: "the MLX build string" })?;
    if mlx_build != mlx_sys::BUILD {
        return Err(AbiError::MlxMismatch { plugin: mlx_build.to_owned(), host: mlx_sys::BUILD.to_owned() });
    }
    if d.entry_count > 0 && d.entry_stride < std::mem::size_of::<FfiPluginEntry>() as u64 {
        return Err(AbiError::TooSmall { what: "a plugin entry", size: d.entry_stride });
    }
    let mut plugins = Vec::with_capacity(d.entry_count as usize);
    for i in 0..d.entry_count as usize {
        let entry = &*d.entries.cast::<u8>().add(i * d.entry_stride as usize).cast::<FfiPluginEntry>();
        let name = entry.name.to_str().map_err(|_| AbiError::NotUtf8 { what: "a plugin name" })?.to_owned();
        let summary = entry.summary.to_string_lossy();
        let kind = PluginKind::from_abi(entry.kind).ok_or(AbiError::UnknownKind { name: name.clone(), kind: entry.kind })?;
        plugins.push(ImportedPlugin { kind, name, summary, create: entry.create });
    }
    Ok(Library {
        abi: version,
        mlx_build: mlx_build.to_owned(),
        sdk_version: d.sdk_version.to_string_lossy(),
        plugins,
    })
}

/// Collects a plugin's error message into host memory.
struct ErrorBuffer {
    message: String,
}

unsafe extern "C" fn set_error(ctx: *mut c_void, message: FfiStr<'_>) {
    (*ctx.cast::<ErrorBuffer>()).message = message.to_string_lossy();
}

/// Calls into a plugin with an error sink and turns its status into a `Result`.
fn call(f: impl FnOnce(*const FfiErrorSink) -> Status) -> Result<(), PluginError> {
    let mut buffer = ErrorBuffer { message: String::new() };
    let sink = FfiErrorSink { ctx: (&mut buffer as *mut ErrorBuffer).cast(), set: set_error };
    match f(&sink) {
        STATUS_OK => Ok(()),
        STATUS_PANIC => Err(PluginError::Panicked(buffer.message)),
        status if buffer.message.is_empty() => Err(PluginError::Failed(format!("failed with status {status}"))),
        _ => Err(PluginError::Failed(buffer.message)),
    }
}

/// A plugin instance created in a cdylib; destroyed through its own vtable.
pub struct Instance {
    raw: FfiInstance,
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: every vtable starts with VTableHeader; the handle came from this vtable's create.
        unsafe { ((*self.raw.vtable.cast::<VTableHeader>()).destroy)(self.raw.handle) }
    }
}

impl Instance {
    /// # Safety
    /// The instance must have been created by an entry of the kind whose vtable type is `V`.
    unsafe fn vtable<V>(&self) -> &V {
        &*self.raw.vtable.cast::<V>()
    }
}

impl ImportedPlugin {
    /// Creates an instance from the plugin's TOML table (the section without `kind`).
    pub fn create(&self, config: &toml::Table) -> Result<Instance, PluginError> {
        let text = toml::to_string(config).map_err(|e| PluginError::Config(format!("cannot serialize config: {e}")))?;
        let mut raw = FfiInstance { handle: std::ptr::null_mut(), vtable: std::ptr::null() };
        // SAFETY: create writes `raw` only on success; its config text lives for the call.
        call(|err| unsafe { (self.create)(FfiStr::new(&text), &mut raw, err) })?;
        if raw.handle.is_null() || raw.vtable.is_null() {
            return Err(PluginError::Failed(format!("`{}` reported success but returned no instance", self.name)));
        }
        let instance = Instance { raw };
        // SAFETY: a vtable of any kind starts with its size.
        let size = unsafe { instance.vtable::<VTableHeader>().struct_size };
        let needed = match self.kind {
            PluginKind::Loss => std::mem::size_of::<LossVTable>(),
            PluginKind::LrSchedule => std::mem::size_of::<LrScheduleVTable>(),
            PluginKind::LoraTargetMapper => std::mem::size_of::<LoraTargetMapperVTable>(),
            PluginKind::KvCachePolicy => std::mem::size_of::<KvCachePolicyVTable>(),
            PluginKind::DataCachePolicy => std::mem::size_of::<DataCachePolicyVTable>(),
            PluginKind::Reward => std::mem::size_of::<RewardVTable>(),
            PluginKind::Environment => std::mem::size_of::<EnvironmentVTable>(),
        };
        if size < needed as u64 {
            return Err(PluginError::Failed(format!("`{}`: vtable of {size} bytes, expected {needed}", self.name)));
        }
        Ok(instance)
    }
}

/// An `LrSchedule` implemented by a cdylib.
pub struct ImportedSchedule(pub Instance);

impl LrSchedule for ImportedSchedule {
    fn lr(&self, step: u64, ctx: &ScheduleContext) -> Result<f64, PluginError> {
        // SAFETY: created by a schedule entry.
        let vt = unsafe { self.0.vtable::<LrScheduleVTable>() };
        let mut out = f64::NAN;
        call(|err| unsafe { (vt.lr)(self.0.raw.handle, step, ctx.base_lr, ctx.total_steps, &mut out, err) })?;
        Ok(out)
    }
}

/// A `Loss` implemented by a cdylib.
pub struct ImportedLoss(pub Instance);

unsafe extern "C" fn collect_array(ctx: *mut c_void, name: FfiStr<'_>, array: mlx_sys::mlx_array) {
    let out = &mut *ctx.cast::<Vec<(String, Array)>>();
    out.push((name.to_string_lossy(), arrays::take(array)));
}

impl Loss for ImportedLoss {
    fn requirements(&self) -> Requirements {
        // SAFETY: created by a loss entry.
        let vt = unsafe { self.0.vtable::<LossVTable>() };
        let mut bits = 0u64;
        // A plugin that cannot even state its needs is asked for everything; its forward will fail loudly.
        match call(|err| unsafe { (vt.requirements)(self.0.raw.handle, &mut bits, err) }) {
            Ok(()) => Requirements::from_bits(bits),
            Err(_) => Requirements::from_bits(u64::MAX),
        }
    }

    fn forward(&self, inputs: &LossInputs<'_>) -> Result<LossOutput, PluginError> {
        // SAFETY: created by a loss entry.
        let vt = unsafe { self.0.vtable::<LossVTable>() };
        let raw = FfiLossInputs {
            struct_size: std::mem::size_of::<FfiLossInputs>() as u64,
            policy_logps: arrays::lend(inputs.policy_logps),
            mask: arrays::lend(inputs.mask),
            reference_logps: arrays::lend_opt(inputs.reference_logps),
            old_logps: arrays::lend_opt(inputs.old_logps),
            labels: arrays::lend_opt(inputs.labels),
            group_ids: arrays::lend_opt(inputs.group_ids),
            rewards: arrays::lend_opt(inputs.rewards),
            advantages: arrays::lend_opt(inputs.advantages),
            kl_policy_logps: arrays::lend_opt(inputs.kl_policy_logps),
            kl_reference_logps: arrays::lend_opt(inputs.kl_reference_logps),
            kl_mask: arrays::lend_opt(inputs.kl_mask),
            rng_key: arrays::lend_opt(inputs.rng_key),
            num_pairs: inputs.num_pairs as u64,
        };
        let mut pushed: Vec<(String, Array)> = Vec::new();
        let sink = FfiArraySink { ctx: (&mut pushed as *mut Vec<(String, Array)>).cast(), push: collect_array };
        call(|err| unsafe { (vt.forward)(self.0.raw.handle, &raw, &sink, err) })?;
        let mut pushed = pushed.into_iter();
        match pushed.next() {
            Some((name, loss)) if name == "loss" => Ok(LossOutput { loss, metrics: pushed.collect() }),
            _ => Err(PluginError::Failed("the loss plugin returned no `loss` array".to_owned())),
        }
    }
}

/// A `Reward` implemented by a cdylib.
pub struct ImportedReward(pub Instance);

impl Reward for ImportedReward {
    fn score(&mut self, batch: &RewardBatch<'_>) -> Result<Vec<Option<f64>>, PluginError> {
        let len = batch.len();
        if [batch.prompts.len(), batch.completion_ids.len(), batch.rows.len()].iter().any(|&l| l != len) {
            return Err(PluginError::Invalid("reward batch columns differ in length".to_owned()));
        }
        fn strs<'a>(v: &[&'a str]) -> Vec<FfiStr<'a>> {
            v.iter().map(|s| FfiStr::new(s)).collect()
        }
        let (prompts, completions, rows) = (strs(batch.prompts), strs(batch.completions), strs(batch.rows));
        let ids: Vec<FfiU32s> = batch.completion_ids.iter().map(|s| FfiU32s { ptr: s.as_ptr(), len: s.len() }).collect();
        let raw = FfiRewardBatch {
            struct_size: std::mem::size_of::<FfiRewardBatch<'_>>() as u64,
            len: len as u64,
            prompts: prompts.as_ptr(),
            completions: completions.as_ptr(),
            completion_ids: ids.as_ptr(),
            rows: rows.as_ptr(),
        };
        let mut out = vec![f64::NAN; len];
        // SAFETY: created by a reward entry; `out` has `len` slots.
        let vt = unsafe { self.0.vtable::<RewardVTable>() };
        call(|err| unsafe { (vt.score)(self.0.raw.handle, &raw, out.as_mut_ptr(), err) })?;
        Ok(out.into_iter().map(|v| (!v.is_nan()).then_some(v)).collect())
    }
}

/// An `Environment` implemented by a cdylib.
pub struct ImportedEnvironment(pub Instance);

impl ImportedEnvironment {
    fn json(&self, what: &str, f: impl FnOnce(&EnvironmentVTable, *const FfiByteSink, *const FfiErrorSink) -> Status) -> Result<serde_json::Value, PluginError> {
        let mut bytes = Vec::new();
        let sink = FfiByteSink { ctx: (&mut bytes as *mut Vec<u8>).cast(), write: collect_bytes };
        // SAFETY: created by an environment entry.
        let vt = unsafe { self.0.vtable::<EnvironmentVTable>() };
        call(|err| f(vt, &sink, err))?;
        serde_json::from_slice(&bytes).map_err(|e| PluginError::Invalid(format!("the plugin's {what} are not JSON: {e}")))
    }
}

impl Environment for ImportedEnvironment {
    fn tools(&mut self) -> Result<Vec<serde_json::Value>, PluginError> {
        let handle = self.0.raw.handle;
        let v = self.json("tools", |vt, sink, err| unsafe { (vt.tools)(handle, sink, err) })?;
        crate::tools_from_json(&v)
    }

    fn step(&mut self, turns: &[EnvTurn]) -> Result<Vec<EnvReply>, PluginError> {
        let text = serde_json::Value::Array(turns.iter().map(EnvTurn::to_json).collect()).to_string();
        let handle = self.0.raw.handle;
        let v = self.json("replies", |vt, sink, err| unsafe { (vt.step)(handle, FfiStr::new(&text), sink, err) })?;
        crate::replies_from_json(&v, turns.len())
    }
}

/// A `LoraTargetMapper` implemented by a cdylib.
pub struct ImportedLoraTargetMapper(pub Instance);

unsafe extern "C" fn collect_target(ctx: *mut c_void, path: FfiStr<'_>, rank: u32, scale: f64) {
    let out = &mut *ctx.cast::<Vec<LoraTarget>>();
    out.push(LoraTarget {
        path: path.to_string_lossy(),
        rank: (rank != 0).then_some(rank),
        scale: (!scale.is_nan()).then_some(scale),
    });
}

impl LoraTargetMapper for ImportedLoraTargetMapper {
    fn select(&self, modules: &ModelModules<'_>) -> Result<Vec<LoraTarget>, PluginError> {
        let paths: Vec<FfiStr<'_>> = modules.linear_paths.iter().map(|s| FfiStr::new(s)).collect();
        let raw = FfiModelModules {
            struct_size: std::mem::size_of::<FfiModelModules<'_>>() as u64,
            model_type: FfiStr::new(modules.model_type),
            num_layers: modules.num_layers as u64,
            paths: paths.as_ptr(),
            path_count: paths.len() as u64,
        };
        let mut targets: Vec<LoraTarget> = Vec::new();
        let sink = FfiTargetSink { ctx: (&mut targets as *mut Vec<LoraTarget>).cast(), push: collect_target };
        // SAFETY: created by a LoRA target mapper entry.
        let vt = unsafe { self.0.vtable::<LoraTargetMapperVTable>() };
        call(|err| unsafe { (vt.select)(self.0.raw.handle, &raw, &sink, err) })?;
        Ok(targets)
    }
}

/// A `KvCachePolicy` implemented by a cdylib.
pub struct ImportedKvCachePolicy(pub Instance);

fn kv_spec_from_ffi(spec: &FfiKvCacheSpec) -> Result<KvCacheSpec, PluginError> {
    Ok(match spec.kind {
        KV_CACHE_STANDARD => KvCacheSpec::Standard { step: spec.step as usize },
        KV_CACHE_ROTATING => KvCacheSpec::Rotating { max_size: spec.max_size as usize, keep: spec.keep as usize },
        KV_CACHE_QUANTIZED => {
            KvCacheSpec::Quantized { bits: spec.bits, group_size: spec.group_size, start: spec.start as usize }
        }
        other => return Err(PluginError::Failed(format!("unknown KV cache kind {other}"))),
    })
}

impl KvCachePolicy for ImportedKvCachePolicy {
    fn layer_cache(&self, layer: usize, num_layers: usize) -> Result<KvCacheSpec, PluginError> {
        let mut out = FfiKvCacheSpec::default();
        // SAFETY: created by a KV cache policy entry.
        let vt = unsafe { self.0.vtable::<KvCachePolicyVTable>() };
        call(|err| unsafe { (vt.layer_cache)(self.0.raw.handle, layer as u64, num_layers as u64, &mut out, err) })?;
        kv_spec_from_ffi(&out)
    }
}

/// A `DataCachePolicy` implemented by a cdylib; its two flags are read once at creation.
pub struct ImportedDataCachePolicy {
    instance: Instance,
    eager: bool,
    memoize: bool,
}

impl ImportedDataCachePolicy {
    pub fn new(instance: Instance) -> Result<Self, PluginError> {
        let mut bits = 0u32;
        // SAFETY: created by a data cache policy entry.
        let vt = unsafe { instance.vtable::<DataCachePolicyVTable>() };
        call(|err| unsafe { (vt.settings)(instance.raw.handle, &mut bits, err) })?;
        Ok(ImportedDataCachePolicy { instance, eager: bits & 1 != 0, memoize: bits & 2 != 0 })
    }
}

unsafe extern "C" fn collect_bytes(ctx: *mut c_void, data: *const u8, len: usize) {
    if len > 0 {
        (*ctx.cast::<Vec<u8>>()).extend_from_slice(std::slice::from_raw_parts(data, len));
    }
}

impl DataCachePolicy for ImportedDataCachePolicy {
    fn tokenize_eagerly(&self) -> bool {
        self.eager
    }

    fn memoize(&self) -> bool {
        self.memoize
    }

    fn load(&mut self, key: &str) -> Result<Option<Vec<u8>>, PluginError> {
        let mut bytes: Vec<u8> = Vec::new();
        let mut found = false;
        let sink = FfiByteSink { ctx: (&mut bytes as *mut Vec<u8>).cast(), write: collect_bytes };
        // SAFETY: created by a data cache policy entry.
        let vt = unsafe { self.instance.vtable::<DataCachePolicyVTable>() };
        call(|err| unsafe { (vt.load)(self.instance.raw.handle, FfiStr::new(key), &sink, &mut found, err) })?;
        Ok(found.then_some(bytes))
    }

    fn store(&mut self, key: &str, data: &[u8]) -> Result<(), PluginError> {
        // SAFETY: created by a data cache policy entry.
        let vt = unsafe { self.instance.vtable::<DataCachePolicyVTable>() };
        call(|err| unsafe {
            (vt.store)(self.instance.raw.handle, FfiStr::new(key), data.as_ptr(), data.len(), err)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::export::kv_spec_to_ffi;

    #[test]
    fn kv_specs_round_trip_through_the_c_form() {
        for spec in [
            KvCacheSpec::Standard { step: 256 },
            KvCacheSpec::Rotating { max_size: 4096, keep: 4 },
            KvCacheSpec::Quantized { bits: 8, group_size: 64, start: 512 },
        ] {
            assert_eq!(kv_spec_from_ffi(&kv_spec_to_ffi(spec)).unwrap(), spec);
        }
        assert!(kv_spec_from_ffi(&FfiKvCacheSpec { kind: 9, ..Default::default() }).is_err());
    }
}
