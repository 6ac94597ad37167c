//! `config.json` as Hugging Face writes it, read leniently (unknown keys ignored, as transformers and mlx-lm
//! do), then resolved by each family into a [`TransformerConfig`] with no optional left where a default exists.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::nn::{Quant, QuantMode, RmsNorm, RopeScaling};

/// A single id or a list of ids (`eos_token_id` is either).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct HfArgs {
    pub model_type: String,
    pub hidden_size: i32,
    pub num_hidden_layers: i32,
    pub intermediate_size: i32,
    pub num_attention_heads: i32,
    pub num_key_value_heads: Option<i32>,
    pub head_dim: Option<i32>,
    pub vocab_size: i32,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f32,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    pub rope_scaling: Option<BTreeMap<String, serde_json::Value>>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub eos_token_id: Option<TokenIds>,
    pub bos_token_id: Option<u32>,
    /// SmolLM3: per layer 1 = RoPE, 0 = none; else every `no_rope_layer_interval`-th layer has none.
    pub no_rope_layers: Option<Vec<i32>>,
    pub no_rope_layer_interval: Option<usize>,
    /// Granite's multipliers.
    pub embedding_multiplier: Option<f32>,
    pub attention_multiplier: Option<f32>,
    pub residual_multiplier: Option<f32>,
    pub logits_scaling: Option<f32>,
    /// Phi-3: rotated share of each head, and the context lengths LongRoPE's attention scale derives from.
    pub partial_rotary_factor: Option<f64>,
    pub max_position_embeddings: Option<f64>,
    pub original_max_position_embeddings: Option<f64>,
    /// Gemma: the attention scale is query_pre_attn_scalar^-½; RoPE base of the sliding-window layers;
    /// the window and which layers have it.
    pub query_pre_attn_scalar: Option<f64>,
    pub rope_local_base_freq: Option<f64>,
    pub sliding_window: Option<usize>,
    pub sliding_window_pattern: Option<usize>,
    /// Qwen2/Qwen3: sliding windows only when `use_sliding_window`, on layers from `max_window_layers` on.
    pub use_sliding_window: Option<bool>,
    pub max_window_layers: Option<usize>,
    pub hidden_activation: Option<String>,
    pub hidden_act: Option<String>,
    /// Gemma 2's soft-capping: absent (None: the family's default), null (Some(None): off) or a cap.
    #[serde(default, deserialize_with = "present")]
    pub attn_logit_softcapping: Option<Option<f64>>,
    pub layer_types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub final_logit_softcapping: Option<Option<f64>>,
    /// Qwen3-MoE: experts, how many a token uses, which layers are sparse, the experts' width.
    pub num_experts: Option<i32>,
    pub num_experts_per_tok: Option<i32>,
    pub decoder_sparse_step: Option<i32>,
    pub mlp_only_layers: Option<Vec<i32>>,
    pub moe_intermediate_size: Option<i32>,
    pub norm_topk_prob: Option<bool>,
    /// Mixtral's and gpt-oss's expert count.
    pub num_local_experts: Option<i32>,
    /// Mixtral's multiplicative router noise during training (transformers); only 0 is implemented.
    pub router_jitter_noise: Option<f64>,
    /// gpt-oss: the clamp of its experts' SwiGLU (transformers' `swiglu_limit`, default 7).
    pub swiglu_limit: Option<f32>,
    /// mlx-lm's quantization block: `{group_size, bits, [mode], <module path>: {group_size, bits} | false}`.
    pub quantization: Option<serde_json::Map<String, serde_json::Value>>,
    /// Transformers' mirror of the same block, used when `quantization` is absent.
    pub quantization_config: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A key that is present, null or not: `Some(value)`; with `#[serde(default)]` an absent key stays `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(d).map(Some)
}

fn default_rms_norm_eps() -> f32 {
    1e-6
}

fn default_rope_theta() -> f64 {
    10000.0
}

/// Sparse feed-forward blocks: a router over `experts` gated experts of width `intermediate`, on the layers
/// `sparse` marks.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub routing: crate::nn::Routing,
    pub intermediate: i32,
    pub sparse: Vec<bool>,
    /// Bias on the router and on every expert projection (gpt-oss).
    pub bias: bool,
    pub activation: crate::nn::ExpertActivation,
    /// The checkpoint's names for the router and the stacked experts.
    pub names: MoeNames,
    /// How `host quantize` packs the router (mlx-lm's `quant_predicate`: 8-bit affine for Qwen3-MoE and
    /// gpt-oss); None: like every other layer.
    pub router_quant: Option<Quant>,
}

/// Parameter names of a sparse block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoeNames {
    /// `gate` and `switch_mlp` (mlx-lm's Qwen3-MoE and Mixtral).
    GateSwitchMlp,
    /// `router` and `experts` (gpt-oss).
    RouterExperts,
}

/// Where a layer's norms sit around its two sublayers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormPlacement {
    /// `input_layernorm` before attention, `post_attention_layernorm` before the MLP (Llama).
    Pre,
    /// `post_attention_layernorm` on the attention output, `post_feedforward_layernorm` on the MLP output,
    /// nothing on the inputs (OLMo 2).
    Post,
    /// Both: `input_layernorm` → attention → `post_attention_layernorm`, then `pre_feedforward_layernorm` →
    /// MLP → `post_feedforward_layernorm`, each before its residual add (Gemma 2 and 3).
    Sandwich,
}

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation (Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
}

/// A layer's rotary embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeParams {
    pub theta: f64,
    pub scaling: RopeScaling,
    /// Rotated features per head: all (head_dim), or fewer (`partial_rotary_factor`).
    pub dims: i32,
}

/// RMSNorm of q and k before RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// Over each head (Qwen3): weights of `head_dim`.
    PerHead,
    /// Over the whole projection, all heads at once (OLMo 2): weights of heads × `head_dim`.
    Whole,
}

/// The architecture every supported family maps onto: a decoder with RMSNorm, RoPE, grouped-query attention
/// and a SwiGLU MLP, with the per-family switches below.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformerConfig {
    pub model_type: String,
    pub hidden_size: i32,
    pub num_hidden_layers: i32,
    pub intermediate_size: i32,
    pub num_attention_heads: i32,
    pub num_key_value_heads: i32,
    pub head_dim: i32,
    pub vocab_size: i32,
    pub rms_norm_eps: f32,
    pub tie_word_embeddings: bool,
    /// Bias on q, k and v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub qk_norm: QkNorm,
    pub norms: NormPlacement,
    /// Per layer, its RoPE (None: SmolLM3's layers without; Gemma's local layers have their own base).
    pub layer_rope: Vec<Option<RopeParams>>,
    /// Per layer, a sliding attention window (Gemma's local layers): the cache of such a layer is rotating.
    pub layer_window: Vec<Option<usize>>,
    /// Norm gains stored as offsets from 1 (Gemma).
    pub norm_plus_one: bool,
    pub activation: Activation,
    /// The attention's score scale (default head_dim^-½; Granite's `attention_multiplier`).
    pub attention_scale: f32,
    /// Embeddings are multiplied by this (Granite's `embedding_multiplier`).
    pub embedding_multiplier: f32,
    /// Each sublayer's output is multiplied by this before the residual add (Granite).
    pub residual_multiplier: f32,
    /// Logits are divided by this (Granite's `logits_scaling`).
    pub logits_scaling: f32,
    /// q/k/v and gate/up stored fused as `qkv_proj` and `gate_up_proj` (Phi-3).
    pub fused_projections: bool,
    /// Attention scores become cap·tanh(score/cap) before the softmax (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// Logits become cap·tanh(logit/cap) (Gemma 2).
    pub final_softcap: Option<f32>,
    /// Mixture-of-experts feed-forward blocks (None: every layer dense).
    pub moe: Option<MoeConfig>,
    /// The feed-forward block is named `block_sparse_moe` (Mixtral) instead of `mlp`.
    pub block_sparse_moe: bool,
    /// A learned logit per query head that joins every softmax as an extra "key" with no value (gpt-oss's
    /// `self_attn.sinks`): attention can put weight on nothing.
    pub attention_sinks: bool,
}

impl TransformerConfig {
    /// An RMSNorm of `dims` in this family's convention.
    pub fn norm(&self, dims: i32) -> Result<RmsNorm, mlx_rs::error::Exception> {
        if self.norm_plus_one { RmsNorm::offset(dims, self.rms_norm_eps) } else { RmsNorm::new(dims, self.rms_norm_eps) }
    }
}

impl HfArgs {
    /// The fields every family shares, with family-specific switches off.
    pub fn base(&self) -> Result<TransformerConfig, String> {
        let heads = self.num_attention_heads;
        if heads <= 0 || self.hidden_size <= 0 || self.num_hidden_layers <= 0 || self.vocab_size <= 0 {
            return Err("hidden_size, num_hidden_layers, num_attention_heads and vocab_size must be positive".into());
        }
        let kv_heads = self.num_key_value_heads.unwrap_or(heads);
        if kv_heads <= 0 || heads % kv_heads != 0 {
            return Err(format!("num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})"));
        }
        let head_dim = match self.head_dim {
            Some(d) => d,
            None if self.hidden_size % heads == 0 => self.hidden_size / heads,
            None => return Err(format!("hidden_size {} is not divisible by {heads} heads; set head_dim", self.hidden_size)),
        };
        Ok(TransformerConfig {
            model_type: self.model_type.clone(),
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            intermediate_size: self.intermediate_size,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            vocab_size: self.vocab_size,
            rms_norm_eps: self.rms_norm_eps,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            qkv_bias: self.attention_bias.unwrap_or(false),
            o_bias: self.attention_bias.unwrap_or(false),
            mlp_bias: self.mlp_bias.unwrap_or(false),
            qk_norm: QkNorm::None,
            norms: NormPlacement::Pre,
            layer_rope: vec![Some(RopeParams { theta: self.rope_theta, scaling: self.rope_scaling()?, dims: head_dim }); self.num_hidden_layers as usize],
            layer_window: vec![None; self.num_hidden_layers as usize],
            norm_plus_one: false,
            activation: Activation::Silu,
            attention_scale: 1.0 / (head_dim as f32).sqrt(),
            embedding_multiplier: 1.0,
            residual_multiplier: 1.0,
            logits_scaling: 1.0,
            fused_projections: false,
            attn_softcap: None,
            final_softcap: None,
            moe: None,
            block_sparse_moe: false,
            attention_sinks: false,
        })
    }

    /// `rope_scaling` as parsed (for families that give it to some layers only).
    pub fn parsed_rope_scaling(&self) -> Result<RopeScaling, String> {
        self.rope_scaling()
    }

    /// `window`, unless it can never bind: a window at least `max_position_embeddings` long never hides a
    /// position, and a layer without one keeps the preallocated standard cache instead of a rotating one
    /// (Phi-3.5's 262,144-token window over a 131,072-token context).
    pub fn binding_window(&self, window: Option<usize>) -> Option<usize> {
        window.filter(|&w| self.max_position_embeddings.is_none_or(|max| (w as f64) < max))
    }

    /// A key this family needs, or an error naming it.
    pub fn required<T: Copy>(&self, value: Option<T>, key: &str) -> Result<T, String> {
        value.ok_or_else(|| format!("config.json lacks `{key}`, which {} needs", self.model_type))
    }

    fn rope_scaling(&self) -> Result<RopeScaling, String> {
        let Some(scaling) = &self.rope_scaling else { return Ok(RopeScaling::None) };
        let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(|v| v.as_str()).unwrap_or("default");
        let number = |key: &str, default: Option<f64>| {
            scaling.get(key).and_then(|v| v.as_f64()).or(default).ok_or_else(|| format!("rope_scaling.{key} is missing"))
        };
        match kind {
            "default" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear { factor: number("factor", None)? }),
            "llama3" => Ok(RopeScaling::Llama3 {
                factor: number("factor", None)?,
                low_freq_factor: number("low_freq_factor", Some(1.0))?,
                high_freq_factor: number("high_freq_factor", Some(4.0))?,
                original_max_position_embeddings: number("original_max_position_embeddings", Some(8192.0))?,
            }),
            "yarn" => Ok(RopeScaling::Yarn {
                factor: number("factor", None)?,
                // transformers' fallback, then mlx-lm's.
                original_max_position_embeddings: number(
                    "original_max_position_embeddings",
                    Some(self.max_position_embeddings.unwrap_or(4096.0)),
                )?,
                beta_fast: number("beta_fast", Some(32.0))?,
                beta_slow: number("beta_slow", Some(1.0))?,
                mscale: number("mscale", Some(1.0))?,
                mscale_all_dim: number("mscale_all_dim", Some(0.0))?,
                attention_factor: scaling.get("attention_factor").and_then(|v| v.as_f64()),
                truncate: match scaling.get("truncate") {
                    None => true,
                    Some(v) => v.as_bool().ok_or("rope_scaling.truncate must be true or false")?,
                },
            }),
            other => Err(format!("rope_scaling type `{other}` is not supported (default, linear, llama3, yarn)")),
        }
    }

    /// The checkpoint's quantization: the default and per-module overrides (`None` = that module is float).
    /// mlx-lm's `quantization` block, or transformers' `quantization_config` (its own block, or an MXFP4/MXFP8
    /// export's `quant_method`).
    pub fn quantization(&self) -> Result<Option<QuantizationPlan>, String> {
        let (block, key) = match (&self.quantization, &self.quantization_config) {
            (Some(b), _) => (b, "quantization"),
            (None, Some(b)) => (b, "quantization_config"),
            (None, None) => return Ok(None),
        };
        if let Some(method) = block.get("quant_method").and_then(|m| m.as_str()) {
            let mode = match method {
                "mxfp4" => QuantMode::Mxfp4,
                "mxfp8" => QuantMode::Mxfp8,
                other => return Err(format!("{key}.quant_method `{other}` is not supported (mxfp4, mxfp8; or an MLX `quantization` block)")),
            };
            let (bits, group_size) = mode.defaults();
            return Ok(Some(QuantizationPlan { default: Quant { bits, group_size, mode }, overrides: BTreeMap::new() }));
        }
        let int = |v: &serde_json::Value, key: &str, what: &str| {
            v.get(key).and_then(|x| x.as_i64()).map(|x| x as i32).ok_or_else(|| format!("{what}: `{key}` missing"))
        };
        // A module's mode: its own `mode` key, else affine (what mlx's `to_quantized` defaults to).
        let mode = |v: &serde_json::Value, what: &str| match v.get("mode") {
            None => Ok(QuantMode::Affine),
            Some(serde_json::Value::String(m)) => QuantMode::parse(m, what),
            Some(other) => Err(format!("{what}.mode: expected a string, found {other}")),
        };
        let root = serde_json::Value::Object(block.clone());
        let default = Quant::checked(int(&root, "bits", key)?, int(&root, "group_size", key)?, mode(&root, key)?, key)?;
        let mut overrides = BTreeMap::new();
        for (path, value) in block {
            match value {
                serde_json::Value::Object(_) => {
                    let what = format!("{key}.{path}");
                    overrides.insert(path.clone(), Some(Quant::checked(int(value, "bits", &what)?, int(value, "group_size", &what)?, mode(value, &what)?, &what)?));
                }
                serde_json::Value::Bool(false) => {
                    overrides.insert(path.clone(), None);
                }
                _ => {}
            }
        }
        Ok(Some(QuantizationPlan { default, overrides }))
    }
}

/// Which modules of a checkpoint are quantized, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizationPlan {
    pub default: Quant,
    /// Module path → its own settings, or `None` when that module stays float.
    pub overrides: BTreeMap<String, Option<Quant>>,
}

impl QuantizationPlan {
    /// A module's settings: its override, else what its tensors show (`inferred`), else the default: the
    /// order of mlx-lm's loader, whose default can be wrong for modules the map does not name.
    pub fn for_module(&self, path: &str, inferred: Option<Quant>) -> Option<Quant> {
        match self.overrides.get(path) {
            Some(q) => *q,
            None => Some(inferred.unwrap_or(self.default)),
        }
    }
}
