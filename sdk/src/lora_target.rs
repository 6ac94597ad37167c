//! Which linear modules of a model get LoRA adapters.

use crate::PluginError;

/// What the host tells a mapper about the model.
pub struct ModelModules<'a> {
    /// The Hugging Face `model_type` (`llama`, `qwen2`, ...).
    pub model_type: &'a str,
    pub num_layers: usize,
    /// Every linear (or quantized linear) module path, e.g. `model.layers.3.self_attn.q_proj`.
    pub linear_paths: &'a [&'a str],
}

/// One module to adapt; rank and scale default to the `[lora]` section's when `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraTarget {
    pub path: String,
    pub rank: Option<u32>,
    pub scale: Option<f64>,
}

/// Chooses LoRA targets among the model's linear modules.
pub trait LoraTargetMapper {
    fn select(&self, modules: &ModelModules<'_>) -> Result<Vec<LoraTarget>, PluginError>;
}
