//! What a run trains, and how its result is written: LoRA/DoRA adapters on a frozen base (mlx-lm's adapter
//! files), or the weights themselves (`[train] mode = "full"`: a complete model directory that `host` and
//! mlx-lm load). Checkpoints, `best/` and the final output all go through [`Tuning::save`], and a checkpoint
//! is read back through [`Tuning::saved_tensors`], so the trainers never branch on the mode.

use std::{collections::HashMap, path::Path};

use mlx_rs::{module::ModuleParameters, Array};
use serde_json::{json, Value};

use super::TrainError;
use crate::{
    lora::{self, AdapterSummary},
    model::{self, CausalLm, LoadedModel, QuantizationPlan},
};

/// Full fine-tuning of a loaded model: which layers train, and what the output directory needs besides the
/// weights (the checkpoint's config, tokenizer files).
pub struct FullTuning {
    /// The first transformer layer that trains; with `whole`, embeddings, final norm and head train too.
    pub first_layer: usize,
    pub whole: bool,
    pub num_layers: usize,
    pub trainable: usize,
    pub total: usize,
    config_json: serde_json::Map<String, Value>,
    quantization: Option<QuantizationPlan>,
    tokenizer_dir: std::path::PathBuf,
}

pub enum Tuning {
    Lora(AdapterSummary),
    Full(FullTuning),
}

/// Training settings recorded beside a fully fine-tuned model (mlx-lm keeps them in adapter_config.json,
/// which would make the directory look like an adapter).
pub const FULL_CONFIG: &str = "training_config.json";

impl FullTuning {
    /// Makes every weight of the last `last_n_layers` layers trainable (all of the model's weights when
    /// `None`) and freezes the rest. A quantized model cannot be trained this way.
    pub fn apply(loaded: &mut LoadedModel, last_n_layers: Option<usize>) -> Result<FullTuning, TrainError> {
        // Loading records every quantized layer in the plan (a checkpoint's own, or quantized on load).
        let model = &mut loaded.model;
        if loaded.quantization.is_some() {
            return Err(TrainError::Config(format!(
                "{}: the model is quantized; full fine-tuning trains float weights (load a float checkpoint, or train adapters on this one with mode = \"lora\")",
                loaded.dir.display()
            )));
        }
        let num_layers = model.num_layers();
        let first_layer = match last_n_layers {
            Some(n) if n == 0 || n > num_layers => {
                return Err(TrainError::Config(format!("[train] last_n_layers must be in 1..={num_layers}, got {n}")));
            }
            Some(n) => num_layers - n,
            None => 0,
        };
        let whole = last_n_layers.is_none();
        model.freeze_parameters(true);
        if whole {
            model.unfreeze_parameters(true);
        } else {
            for layer in &mut model.model.layers[first_layer..] {
                layer.unfreeze_parameters(true);
            }
        }
        let trainable = model.trainable_parameters().flatten().values().map(|a| a.size()).sum();
        let total = model.parameters().flatten().values().map(|a| a.size()).sum();
        Ok(FullTuning {
            first_layer,
            whole,
            num_layers,
            trainable,
            total,
            config_json: loaded.config_json.clone(),
            quantization: loaded.quantization.clone(),
            tokenizer_dir: loaded.dir.clone(),
        })
    }
}

impl Tuning {
    pub fn describe(&self) -> String {
        match self {
            Tuning::Lora(summary) => summary.describe(),
            Tuning::Full(f) => format!(
                "full fine-tuning of {}: {} trainable of {} parameters ({:.1}%)",
                if f.whole { "every weight".to_owned() } else { format!("the last {} of {} layers", f.num_layers - f.first_layer, f.num_layers) },
                f.trainable,
                f.total,
                100.0 * f.trainable as f64 / f.total.max(1) as f64
            ),
        }
    }

    /// The first transformer layer with trainable parameters: layers before it keep no activations.
    pub fn first_trained_layer(&self) -> usize {
        match self {
            Tuning::Lora(summary) => summary.targets.iter().filter_map(|p| lora::layer_index(p)).min().unwrap_or(0),
            Tuning::Full(f) => f.first_layer,
        }
    }

    /// Writes what the run trained into `dir` (atomically per file): adapters with `extra` in their config, or
    /// the complete model with `extra` in [`FULL_CONFIG`].
    pub fn save(&self, model: &mut CausalLm, dir: &Path, extra: &serde_json::Map<String, Value>) -> Result<(), TrainError> {
        match self {
            Tuning::Lora(_) => {
                lora::save_adapters(model, dir, extra)?;
            }
            Tuning::Full(f) => {
                model::save_parts(model, &f.config_json, f.quantization.as_ref(), &f.tokenizer_dir, dir)?;
                let mut config = extra.clone();
                config.insert("fine_tune_type".into(), json!("full"));
                config.insert("num_layers".into(), json!(model.num_layers() - f.first_layer));
                config.insert("whole_model".into(), json!(f.whole));
                let text = serde_json::to_string_pretty(&Value::Object(config)).map_err(|e| TrainError::Io { path: dir.to_owned(), message: e.to_string() })?;
                let (path, tmp) = (dir.join(FULL_CONFIG), dir.join(format!(".{FULL_CONFIG}.tmp")));
                std::fs::write(&tmp, text).map_err(super::io(&tmp))?;
                std::fs::rename(&tmp, &path).map_err(super::io(&path))?;
            }
        }
        Ok(())
    }

    /// The tensors [`Tuning::save`] wrote into `dir`, and whether they must be exactly the trainable ones
    /// (adapters) or may include frozen weights (a complete model).
    pub fn saved_tensors(&self, dir: &Path) -> Result<(HashMap<String, Array>, bool), TrainError> {
        match self {
            Tuning::Lora(_) => {
                let path = dir.join(lora::AdapterFiles::WEIGHTS);
                let tensors = Array::load_safetensors(&path).map_err(|e| TrainError::Io { path: path.clone(), message: format!("adapters: {e}") })?;
                Ok((tensors, true))
            }
            Tuning::Full(_) => Ok((model::read_weights(dir)?, false)),
        }
    }
}

