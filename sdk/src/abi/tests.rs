//! Every kind through the C tables in one process: plugins exported with the same shims a cdylib uses, read
//! back with the host-side adapters, compared with direct calls.

use std::collections::HashMap;

use mlx_rs::{array, Array};

use super::{
    descriptor,
    export::{
        data_cache_policy_entry, environment_entry, kv_cache_policy_entry, lora_target_mapper_entry, loss_entry, reward_entry,
        schedule_entry,
    },
    import::{
        read_descriptor, ImportedDataCachePolicy, ImportedEnvironment, ImportedKvCachePolicy, ImportedLoraTargetMapper, ImportedLoss,
        ImportedReward, ImportedSchedule, Library,
    },
    EntryArray, FfiErrorSink, FfiInstance, FfiStr, SyncDescriptor, STATUS_ERROR,
};
use crate::{
    DataCachePolicy, EnvReply, EnvTurn, Environment, KvCachePolicy, KvCacheSpec, LoraTarget, LoraTargetMapper, Loss, LossInputs, LossOutput,
    LrSchedule, ModelModules, Plugin, PluginError, PluginKind, Requirements, Reward, RewardBatch, ScheduleContext,
};

struct Halve;
impl Plugin for Halve {
    const NAME: &'static str = "halve";
    const SUMMARY: &'static str = "halves every step";
    fn from_config(config: &toml::Table) -> Result<Self, PluginError> {
        match config.get("fail") {
            Some(_) => Err(PluginError::Config("`fail`: asked to fail".to_owned())),
            None => Ok(Halve),
        }
    }
}
impl LrSchedule for Halve {
    fn lr(&self, step: u64, ctx: &ScheduleContext) -> Result<f64, PluginError> {
        Ok(ctx.base_lr * 0.5f64.powi(step as i32) + ctx.total_steps as f64)
    }
}

struct MaskedSum;
impl Plugin for MaskedSum {
    const NAME: &'static str = "masked_sum";
    const SUMMARY: &'static str = "-sum(logp * mask)";
    fn from_config(_: &toml::Table) -> Result<Self, PluginError> {
        Ok(MaskedSum)
    }
}
impl Loss for MaskedSum {
    fn requirements(&self) -> Requirements {
        Requirements { reference: true, rng: true, ..Default::default() }
    }
    fn forward(&self, inputs: &LossInputs<'_>) -> Result<LossOutput, PluginError> {
        let reference = LossInputs::require(inputs.reference_logps, "reference_logps")?;
        let loss = inputs.policy_logps.multiply(inputs.mask)?.sum(None)?.negative()?;
        let kl = inputs.policy_logps.subtract(reference)?.multiply(inputs.mask)?.sum(None)?;
        Ok(LossOutput { loss, metrics: vec![("kl".to_owned(), kl), ("pairs".to_owned(), Array::from_int(inputs.num_pairs as i32))] })
    }
}

struct LengthReward;
impl Plugin for LengthReward {
    const NAME: &'static str = "length";
    const SUMMARY: &'static str = "completion length, n/a when the row says so";
    fn from_config(_: &toml::Table) -> Result<Self, PluginError> {
        Ok(LengthReward)
    }
}
impl Reward for LengthReward {
    fn score(&mut self, batch: &RewardBatch<'_>) -> Result<Vec<Option<f64>>, PluginError> {
        Ok((0..batch.len())
            .map(|i| (!batch.rows[i].contains("skip")).then(|| (batch.completions[i].len() + batch.completion_ids[i].len()) as f64))
            .collect())
    }
}

struct EveryOther;
impl Plugin for EveryOther {
    const NAME: &'static str = "every_other";
    const SUMMARY: &'static str = "even-numbered paths, rank 4 on the first";
    fn from_config(_: &toml::Table) -> Result<Self, PluginError> {
        Ok(EveryOther)
    }
}
impl LoraTargetMapper for EveryOther {
    fn select(&self, modules: &ModelModules<'_>) -> Result<Vec<LoraTarget>, PluginError> {
        Ok(modules
            .linear_paths
            .iter()
            .step_by(2)
            .enumerate()
            .map(|(i, p)| LoraTarget {
                path: format!("{}:{}:{p}", modules.model_type, modules.num_layers),
                rank: (i == 0).then_some(4),
                scale: (i == 1).then_some(2.5),
            })
            .collect())
    }
}

struct LastLayersRotate;
impl Plugin for LastLayersRotate {
    const NAME: &'static str = "last_rotate";
    const SUMMARY: &'static str = "rotating caches in the last layer, quantized in the first";
    fn from_config(_: &toml::Table) -> Result<Self, PluginError> {
        Ok(LastLayersRotate)
    }
}
impl KvCachePolicy for LastLayersRotate {
    fn layer_cache(&self, layer: usize, num_layers: usize) -> Result<KvCacheSpec, PluginError> {
        Ok(match layer {
            0 => KvCacheSpec::Quantized { bits: 4, group_size: 32, start: 7 },
            l if l + 1 == num_layers => KvCacheSpec::Rotating { max_size: 128, keep: 4 },
            _ => KvCacheSpec::Standard { step: 256 },
        })
    }
}

#[derive(Default)]
struct Memory(HashMap<String, Vec<u8>>);
impl Plugin for Memory {
    const NAME: &'static str = "memory";
    const SUMMARY: &'static str = "stores blobs in memory";
    fn from_config(_: &toml::Table) -> Result<Self, PluginError> {
        Ok(Memory::default())
    }
}
impl DataCachePolicy for Memory {
    fn tokenize_eagerly(&self) -> bool {
        true
    }
    fn memoize(&self) -> bool {
        false
    }
    fn load(&mut self, key: &str) -> Result<Option<Vec<u8>>, PluginError> {
        Ok(self.0.get(key).cloned())
    }
    fn store(&mut self, key: &str, data: &[u8]) -> Result<(), PluginError> {
        self.0.insert(key.to_owned(), data.to_vec());
        Ok(())
    }
}

/// Answers a call with the length of the last message; ends the episode on its last turn with reward = turn.
struct Echo;
impl Plugin for Echo {
    const NAME: &'static str = "echo";
    const SUMMARY: &'static str = "echoes message lengths";
    fn from_config(_: &toml::Table) -> Result<Self, PluginError> {
        Ok(Echo)
    }
}
impl Environment for Echo {
    fn tools(&mut self) -> Result<Vec<serde_json::Value>, PluginError> {
        Ok(vec![serde_json::json!({"type": "function", "function": {"name": "len"}})])
    }
    fn step(&mut self, turns: &[EnvTurn]) -> Result<Vec<EnvReply>, PluginError> {
        turns
            .iter()
            .map(|t| {
                if t.row.get("fail").is_some() {
                    return Err(PluginError::Failed("asked to fail".into()));
                }
                let last = t.messages.last().and_then(|m| m["content"].as_str()).unwrap_or("");
                Ok(if t.last { EnvReply::Done(Some(t.turn as f64)) } else { EnvReply::Observe(vec![last.len().to_string()]) })
            })
            .collect()
    }
}

static ENTRIES: EntryArray<7> = EntryArray([
    schedule_entry::<Halve>(),
    loss_entry::<MaskedSum>(),
    reward_entry::<LengthReward>(),
    lora_target_mapper_entry::<EveryOther>(),
    kv_cache_policy_entry::<LastLayersRotate>(),
    data_cache_policy_entry::<Memory>(),
    environment_entry::<Echo>(),
]);
static DESCRIPTOR: SyncDescriptor = SyncDescriptor(descriptor(&ENTRIES.0));

fn library() -> Library {
    // SAFETY: a static descriptor of this binary.
    unsafe { read_descriptor(&DESCRIPTOR.0) }.unwrap()
}

fn plugin(kind: PluginKind) -> super::import::Instance {
    let lib = library();
    let p = lib.plugins.iter().find(|p| p.kind == kind).unwrap();
    p.create(&toml::Table::new()).unwrap()
}

#[test]
fn descriptor_lists_every_entry() {
    let lib = library();
    let names: Vec<(PluginKind, &str)> = lib.plugins.iter().map(|p| (p.kind, p.name.as_str())).collect();
    assert_eq!(
        names,
        [
            (PluginKind::LrSchedule, "halve"),
            (PluginKind::Loss, "masked_sum"),
            (PluginKind::Reward, "length"),
            (PluginKind::LoraTargetMapper, "every_other"),
            (PluginKind::KvCachePolicy, "last_rotate"),
            (PluginKind::DataCachePolicy, "memory"),
            (PluginKind::Environment, "echo"),
        ]
    );
    assert_eq!(lib.abi, (super::ABI_MAJOR, super::ABI_MINOR));
    assert_eq!(lib.mlx_build, mlx_sys::BUILD);
}

#[test]
fn schedule_through_the_abi() {
    let s = ImportedSchedule(plugin(PluginKind::LrSchedule));
    let ctx = ScheduleContext { base_lr: 8.0, total_steps: 1000 };
    assert_eq!(s.lr(3, &ctx).unwrap(), Halve.lr(3, &ctx).unwrap());
    let lib = library();
    let halve = lib.plugins.iter().find(|p| p.name == "halve").unwrap();
    let err = halve.create(&"fail = true".parse().unwrap()).err().unwrap().to_string();
    assert_eq!(err, "`fail`: asked to fail");
}

#[test]
fn invalid_config_text_is_an_error_not_a_crash() {
    unsafe extern "C" fn keep(ctx: *mut std::ffi::c_void, message: FfiStr<'_>) {
        *ctx.cast::<String>() = message.to_string_lossy();
    }
    let mut message = String::new();
    let sink = FfiErrorSink { ctx: (&mut message as *mut String).cast(), set: keep };
    let mut out = FfiInstance { handle: std::ptr::null_mut(), vtable: std::ptr::null() };
    let status = unsafe { (ENTRIES.0[0].create)(FfiStr::new("not = = toml"), &mut out, &sink) };
    assert_eq!(status, STATUS_ERROR);
    assert!(message.starts_with("config text is not a TOML table"), "{message}");
    assert!(out.handle.is_null(), "nothing is written on error");
}

#[test]
fn loss_through_the_abi_keeps_inputs_and_returns_metrics() {
    let loss = ImportedLoss(plugin(PluginKind::Loss));
    assert_eq!(loss.requirements(), MaskedSum.requirements());
    let logps = array!([[-1.0f32, -2.0], [-0.5, -4.0]]);
    let reference = array!([[-1.5f32, -2.0], [-0.5, -3.0]]);
    let mask = array!([[1.0f32, 1.0], [0.0, 1.0]]);
    let mut inputs = LossInputs::new(&logps, &mask);
    inputs.reference_logps = Some(&reference);
    inputs.num_pairs = 1;
    let out = loss.forward(&inputs).unwrap();
    assert_eq!(out.loss.item_exact::<f32>(), 7.0);
    let names: Vec<&str> = out.metrics.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["kl", "pairs"]);
    assert_eq!(out.metrics[0].1.item_exact::<f32>(), 0.5 - 1.0);
    assert_eq!(out.metrics[1].1.item_exact::<i32>(), 1);
    // A missing input the loss requires is its error, reported back.
    let err = loss.forward(&LossInputs::new(&logps, &mask)).err().unwrap().to_string();
    assert_eq!(err, "the host did not provide `reference_logps`");
    assert_eq!(logps.shape(), &[2, 2], "lent inputs stay valid");
}

#[test]
fn reward_through_the_abi_keeps_not_applicable() {
    let mut reward = ImportedReward(plugin(PluginKind::Reward));
    let ids: [&[u32]; 3] = [&[1, 2], &[], &[7]];
    let batch = RewardBatch {
        prompts: &["p0", "p1", "p2"],
        completions: &["abc", "", "xy"],
        completion_ids: &ids,
        rows: &["{}", "{\"skip\": 1}", "{}"],
    };
    assert_eq!(reward.score(&batch).unwrap(), vec![Some(5.0), None, Some(3.0)]);
}

#[test]
fn lora_target_mapper_through_the_abi() {
    let mapper = ImportedLoraTargetMapper(plugin(PluginKind::LoraTargetMapper));
    let paths = ["a.q_proj", "a.k_proj", "b.q_proj", "b.k_proj", "c.q_proj"];
    let modules = ModelModules { model_type: "llama", num_layers: 3, linear_paths: &paths };
    assert_eq!(mapper.select(&modules).unwrap(), EveryOther.select(&modules).unwrap());
}

#[test]
fn kv_cache_policy_through_the_abi() {
    let policy = ImportedKvCachePolicy(plugin(PluginKind::KvCachePolicy));
    for layer in 0..4 {
        assert_eq!(policy.layer_cache(layer, 4).unwrap(), LastLayersRotate.layer_cache(layer, 4).unwrap());
    }
}

#[test]
fn data_cache_policy_through_the_abi_round_trips_blobs() {
    let mut policy = ImportedDataCachePolicy::new(plugin(PluginKind::DataCachePolicy)).unwrap();
    assert!(policy.tokenize_eagerly() && !policy.memoize());
    assert_eq!(policy.load("k").unwrap(), None);
    policy.store("k", &[1, 2, 3, 255]).unwrap();
    policy.store("empty", &[]).unwrap();
    assert_eq!(policy.load("k").unwrap(), Some(vec![1, 2, 3, 255]));
    assert_eq!(policy.load("empty").unwrap(), Some(vec![]));
}

#[test]
fn environment_through_the_abi_equals_direct_calls_and_reports_errors() {
    let mut env = ImportedEnvironment(plugin(PluginKind::Environment));
    assert_eq!(env.tools().unwrap(), Echo.tools().unwrap());
    let turn = |content: &str, last: bool| EnvTurn {
        row: serde_json::json!({"answer": 3}),
        messages: vec![serde_json::json!({"role": "assistant", "content": content})],
        turn: 2,
        last,
    };
    let turns = [turn("abcd", false), turn("", true), turn("xy", false)];
    assert_eq!(env.step(&turns).unwrap(), Echo.step(&turns).unwrap());
    assert_eq!(env.step(&turns).unwrap()[1], EnvReply::Done(Some(2.0)));
    let mut failing = turn("a", false);
    failing.row = serde_json::json!({"fail": true});
    assert_eq!(env.step(&[failing]).unwrap_err().to_string(), "asked to fail");
}
