//! LoRA and DoRA on a loaded model: targets chosen by a `LoraTargetMapper` plugin, the base frozen, adapters
//! added in one pass, mlx-lm's adapter files read and written, adapters fused into the weights.

mod adapters;
mod fuse_check;

use std::collections::BTreeSet;

use mlx_rs::{module::ModuleParameters, random, Array, Dtype};
use sdk::{LoraTarget, LoraTargetMapper, ModelModules, PluginError};
use thiserror::Error;

pub use adapters::{load_adapters, save_adapters, AdapterFiles};
pub use fuse_check::{fuse_verified, FuseReport};

use crate::{
    model::CausalLm,
    nn::AdapterSpec,
};

#[derive(Debug, Error)]
pub enum LoraError {
    #[error("LoRA target mapper: {0}")]
    Mapper(#[from] PluginError),
    #[error("{0}")]
    Targets(String),
    #[error("{path}: {message}")]
    File { path: std::path::PathBuf, message: String },
    #[error("MLX: {0}")]
    Mlx(String),
}

impl From<mlx_rs::error::Exception> for LoraError {
    fn from(e: mlx_rs::error::Exception) -> Self {
        LoraError::Mlx(e.what().to_owned())
    }
}

/// The adapter settings of a run (`[lora]`), applied to every target the mapper does not override.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraSettings {
    pub rank: i32,
    pub scale: f32,
    pub dropout: f32,
    pub dora: bool,
    /// Keep only targets in the last N transformer layers (mlx-lm's `num_layers`).
    pub last_n_layers: Option<usize>,
}

/// What was adapted, and how many parameters train.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSummary {
    pub targets: Vec<String>,
    pub trainable: usize,
    pub total: usize,
}

impl AdapterSummary {
    pub fn describe(&self) -> String {
        format!(
            "LoRA on {} modules: {} trainable of {} parameters ({:.3}%)",
            self.targets.len(),
            self.trainable,
            self.total,
            100.0 * self.trainable as f64 / self.total.max(1) as f64
        )
    }
}

/// The layer index of a path inside the transformer blocks (`model.layers.N.…`).
pub fn layer_index(path: &str) -> Option<usize> {
    let rest = path.strip_prefix("model.layers.")?;
    rest.split('.').next()?.parse().ok()
}

/// Chooses targets with `mapper`, freezes the whole model, and adds fresh adapters. Deterministic in `seed`.
pub fn apply(model: &mut CausalLm, mapper: &dyn LoraTargetMapper, settings: &LoraSettings, seed: u64) -> Result<AdapterSummary, LoraError> {
    let paths = model.linear_paths();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let num_layers = model.num_layers();
    let modules = ModelModules { model_type: &model.config.model_type, num_layers, linear_paths: &refs };
    let mut chosen = mapper.select(&modules)?;
    if let Some(n) = settings.last_n_layers {
        if n == 0 || n > num_layers {
            return Err(LoraError::Targets(format!("last_n_layers must be in 1..={num_layers}, got {n}")));
        }
        chosen.retain(|t| layer_index(&t.path).is_some_and(|i| i >= num_layers - n));
    }
    let known: BTreeSet<&str> = refs.iter().copied().collect();
    if let Some(bad) = chosen.iter().find(|t| !known.contains(t.path.as_str())) {
        return Err(LoraError::Targets(format!("`{}` is not a linear layer of this model", bad.path)));
    }
    let mut seen = BTreeSet::new();
    chosen.retain(|t| seen.insert(t.path.clone()));
    if chosen.is_empty() {
        return Err(LoraError::Targets("the target mapper chose no module".into()));
    }
    add_adapters(model, &chosen, settings, seed)?;
    let (trainable, total) = parameter_counts(model);
    Ok(AdapterSummary { targets: chosen.into_iter().map(|t| t.path).collect(), trainable, total })
}

/// Adds adapters with `settings` to exactly these module paths (used when loading adapter files).
pub(crate) fn apply_explicit(model: &mut CausalLm, paths: &[String], settings: &LoraSettings, seed: u64) -> Result<(), LoraError> {
    let known: BTreeSet<String> = model.linear_paths().into_iter().collect();
    if let Some(bad) = paths.iter().find(|p| !known.contains(*p)) {
        return Err(LoraError::Targets(format!("`{bad}` is not a linear layer of this model")));
    }
    let targets: Vec<LoraTarget> = paths.iter().map(|p| LoraTarget { path: p.clone(), rank: None, scale: None }).collect();
    add_adapters(model, &targets, settings, seed)
}

fn add_adapters(model: &mut CausalLm, targets: &[LoraTarget], settings: &LoraSettings, seed: u64) -> Result<(), LoraError> {
    if model.adaptable_mut().iter().any(|(_, l)| l.adapter().is_some()) {
        return Err(LoraError::Targets("the model already has adapters".into()));
    }
    if settings.dora {
        // Refused before anything is frozen or added (the switch layer refuses it too).
        let switches: BTreeSet<String> = model.switches_mut().into_iter().map(|(p, _)| p).collect();
        if let Some(t) = targets.iter().find(|t| switches.contains(&t.path)) {
            return Err(LoraError::Targets(format!("`{}`: DoRA on experts is not supported (nor in mlx-lm); leave the switch layers out or use LoRA", t.path)));
        }
    }
    model.freeze_parameters(true);
    let base = random::key(seed)?;
    for (i, (path, mut linear)) in model.adaptable_mut().into_iter().enumerate() {
        let Some(t) = targets.iter().find(|t| t.path == path) else { continue };
        let spec = AdapterSpec {
            rank: t.rank.map_or(settings.rank, |r| r as i32),
            scale: t.scale.map_or(settings.scale, |s| s as f32),
            dropout: settings.dropout,
            dora: settings.dora,
        };
        // One key per layer position: the same model and seed give the same initial adapters.
        let key = base.add(Array::from_slice(&[i as u32, 0], &[2]))?;
        linear.add_adapter(spec, &key)?;
    }
    Ok(())
}

/// (trainable, total) parameters, counting quantized weights as the float matrices they stand for.
pub fn parameter_counts(model: &mut CausalLm) -> (usize, usize) {
    let trainable = model.trainable_parameters().flatten().values().map(|a| a.size()).sum();
    let layers: usize = model.adaptable_mut().into_iter().map(|(_, l)| l.float_count()).sum();
    let c = &model.config;
    let embed = (c.vocab_size * c.hidden_size) as usize;
    let norms: usize = model
        .parameters()
        .flatten()
        .iter()
        .filter(|(name, _)| name.contains("norm"))
        .map(|(_, a)| a.size())
        .sum();
    (trainable, layers + embed + norms)
}

/// Switches every adapter on or off (off: the base model, e.g. as the reference policy).
pub fn set_enabled(model: &mut CausalLm, enabled: bool) {
    for (_, mut layer) in model.adaptable_mut() {
        if let Some(a) = layer.adapter_mut() {
            a.enabled = enabled;
        }
    }
}

/// Puts every adapter in its sampling form (see [`crate::nn::Adapter::sampling`]) for generation, or back in
/// the training form. The sampling form holds copies made when it is switched on: switch it off before the
/// adapters change (every optimizer step), and on again for the next rollouts.
pub fn set_sampling(model: &mut CausalLm, on: bool) -> Result<(), mlx_rs::error::Exception> {
    let dtype = on.then(|| model.dtype());
    let mut casts = Vec::new();
    for (_, mut layer) in model.adaptable_mut() {
        casts.extend(layer.set_sampling(dtype)?);
    }
    // One evaluation for every layer's casts, not one synchronization per layer.
    mlx_rs::transforms::eval(&casts)
}

/// Sets this step's dropout key (each adapted layer derives its own); `None` disables dropout.
pub fn set_dropout_key(model: &mut CausalLm, key: Option<&Array>) -> Result<(), mlx_rs::error::Exception> {
    for (i, (_, mut layer)) in model.adaptable_mut().into_iter().enumerate() {
        if let Some(a) = layer.adapter_mut() {
            a.dropout_key = match key {
                Some(k) => Some(k.add(Array::from_slice(&[0, i as u32], &[2]))?),
                None => None,
            };
        }
    }
    Ok(())
}

/// Merges every adapter into its layer; with `dequantize`, every quantized layer and the embeddings become
/// float too (mlx-lm's `fuse --dequantize`).
pub fn fuse(model: &mut CausalLm, dequantize: bool) -> Result<(), mlx_rs::error::Exception> {
    let dtype: Dtype = model.dtype();
    for (_, mut layer) in model.adaptable_mut() {
        layer.fuse(dequantize, dtype)?;
        if dequantize {
            layer.dequantize(dtype)?;
        }
    }
    if dequantize {
        model.model.embed_tokens.dequantize(dtype)?;
    }
    model.unfreeze_parameters(true);
    Ok(())
}
