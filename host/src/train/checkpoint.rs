//! Checkpoints: everything a run needs to continue exactly — what it trains (adapters in mlx-lm's format, or
//! the complete model in full fine-tuning, so any checkpoint is also usable as it is), optimizer state, PRNG key, step and data position. Each is written
//! into a temporary directory and renamed into place, so a crash leaves either the old or the new one.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    rc::Rc,
};

use mlx_rs::{module::ModuleParameters, Array};
use serde::{Deserialize, Serialize};

use super::{tuning::Tuning, TrainError};
use crate::model::CausalLm;

/// Where training stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    pub epoch: u64,
    /// Batches of this epoch already consumed.
    pub batch_in_epoch: usize,
    /// Lowest validation loss so far and its step.
    pub best_eval: Option<(f64, u64)>,
    pub evals_since_best: usize,
    /// How many ranks wrote the checkpoint (a record for people and tools: a run resumes under any number of
    /// ranks that divides its micro-batches, so it is not read back).
    #[serde(default, skip_deserializing)]
    pub world_size: usize,
}

const STATE: &str = "trainer_state.json";
const ARRAYS: &str = "state.safetensors";
const LATEST: &str = "latest";
const RNG_KEY: &str = "rng.key";

pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:07}")
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Io { path: path.to_owned(), message: e.to_string() }
}

/// Writes `root/step-NNNNNNN` (replacing one of that name) and points `root/latest` at it.
#[allow(clippy::too_many_arguments)]
pub fn save(
    root: &Path,
    tuning: &Tuning,
    model: &mut CausalLm,
    optimizer_state: Vec<(String, Array)>,
    rng_key: &Array,
    state: &TrainerState,
    adapter_config: &serde_json::Map<String, serde_json::Value>,
) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(root).map_err(io(root))?;
    let name = step_dir_name(state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    let _ = std::fs::remove_dir_all(&tmp);
    tuning.save(model, &tmp, adapter_config)?;
    let mut arrays: Vec<(String, Array)> = optimizer_state.into_iter().map(|(k, v)| (format!("optimizer.{k}"), v)).collect();
    arrays.push((RNG_KEY.to_owned(), rng_key.clone()));
    let path = tmp.join(ARRAYS);
    crate::tensor_file::write(&path, arrays.iter().map(|(k, v)| (k.as_str(), v)), None).map_err(|e| TrainError::Io { path: e.path, message: e.message })?;
    let text = serde_json::to_string_pretty(state).map_err(|e| TrainError::Io { path: tmp.clone(), message: e.to_string() })?;
    std::fs::write(tmp.join(STATE), text).map_err(io(&tmp))?;
    let dir = root.join(&name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    let latest_tmp = root.join(".latest.tmp");
    std::fs::write(&latest_tmp, &name).map_err(io(&latest_tmp))?;
    std::fs::rename(&latest_tmp, root.join(LATEST)).map_err(io(root))?;
    Ok(dir)
}

/// Removes all but the newest `keep` step directories.
pub fn prune(root: &Path, keep: usize) -> Result<(), TrainError> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(io(root))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(keep.max(1));
    for d in &dirs[..excess] {
        std::fs::remove_dir_all(d).map_err(io(d))?;
    }
    Ok(())
}

/// The checkpoint `root/latest` points at.
pub fn latest(root: &Path) -> Result<PathBuf, TrainError> {
    let path = root.join(LATEST);
    let name = std::fs::read_to_string(&path).map_err(io(&path))?;
    Ok(root.join(name.trim()))
}

/// What a checkpoint restores besides the adapters.
pub struct Restored {
    pub state: TrainerState,
    pub optimizer: HashMap<String, Array>,
    pub rng_key: Array,
}

/// Reads a checkpoint and puts its trained tensors into `model` (which must train the same parameters).
pub fn restore(dir: &Path, model: &mut CausalLm, tuning: &Tuning) -> Result<Restored, TrainError> {
    let bad = |message: String| TrainError::Io { path: dir.to_owned(), message };
    let state_path = dir.join(STATE);
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| bad(format!("{STATE}: {e}")))?;
    let (tensors, exact) = tuning.saved_tensors(dir)?;
    let expected = model.trainable_parameters().flatten();
    let mut update: HashMap<Rc<str>, Array> = HashMap::new();
    for (name, param) in &expected {
        let t = tensors.get(&**name).ok_or_else(|| bad(format!("the checkpoint lacks {name}: it is of another training setup")))?;
        if t.shape() != param.shape() {
            return Err(bad(format!("{name} is {:?} in the checkpoint, the model needs {:?}", t.shape(), param.shape())));
        }
        if t.dtype() != param.dtype() {
            return Err(bad(format!("{name} is {:?} in the checkpoint, the model trains {:?}: set [model] dtype as the run that wrote it", t.dtype(), param.dtype())));
        }
        update.insert(name.clone(), t.clone());
    }
    if exact && tensors.len() != expected.len() {
        return Err(bad(format!("the checkpoint has {} adapter tensors, the model {}", tensors.len(), expected.len())));
    }
    model.update_flattened(update);
    let arrays_path = dir.join(ARRAYS);
    let mut arrays = Array::load_safetensors(&arrays_path).map_err(|e| bad(format!("{ARRAYS}: {e}")))?;
    let rng_key = arrays.remove(RNG_KEY).ok_or_else(|| bad(format!("{ARRAYS} has no {RNG_KEY}")))?;
    let optimizer = arrays.into_iter().filter_map(|(k, v)| k.strip_prefix("optimizer.").map(|k| (k.to_owned(), v))).collect();
    Ok(Restored { state, optimizer, rng_key })
}
