//! Causal language models: loading Hugging Face and MLX-community checkpoints into one decoder, with one
//! file per supported `model_type` mapping its `config.json` onto it.

mod args;
mod attention;
mod error;
mod gemma2;
mod gemma3;
mod gemma3_text;
mod gpt_oss;
mod granite;
pub mod hub;
mod llama;
mod load;
mod mistral;
mod mixtral;
mod olmo2;
mod packing;
mod phi3;
mod qwen2;
mod qwen3;
mod qwen3_moe;
mod save;
mod smollm3;
mod transformer;

use std::collections::BTreeMap;

use mlx_rs::{error::Exception, macros::ModuleParameters, Array, Dtype};

pub use args::{Activation, HfArgs, MoeConfig, MoeNames, NormPlacement, QkNorm, QuantizationPlan, RopeParams, TokenIds, TransformerConfig};
pub use error::{Misshaped, ModelError, WeightMismatch};
pub use packing::Segments;
pub use load::{default_dtype, fingerprint, load, load_classifier, read_weights, LoadOptions, LoadedModel};
pub use save::{save, save_parts};
pub use transformer::{Attention, Decoder, Layer, Mlp};

use crate::{cache::KvCache, nn::{Linear, Quant}};

/// Decides per module path (and its input width) whether, and how, it is quantized.
pub type QuantizeFn<'a> = dyn Fn(&str, i32) -> Option<Quant> + 'a;

type FamilyFn = fn(&HfArgs) -> Result<TransformerConfig, String>;

/// The supported `model_type`s.
const FAMILIES: &[(&str, FamilyFn)] = &[
    ("gemma2", gemma2::config),
    ("gemma3_text", gemma3_text::config),
    ("gpt_oss", gpt_oss::config),
    ("granite", granite::config),
    ("llama", llama::config),
    ("mistral", mistral::config),
    ("olmo2", olmo2::config),
    ("phi3", phi3::config),
    ("qwen2", qwen2::config),
    ("qwen3", qwen3::config),
    ("qwen3_moe", qwen3_moe::config),
    ("mixtral", mixtral::config),
    ("smollm3", smollm3::config),
];

/// Rewrites a family's checkpoint tensors into the names and layout its parameters have.
type SanitizeFn = fn(&mut std::collections::HashMap<String, Array>, &TransformerConfig) -> Result<(), String>;

const SANITIZERS: &[(&str, SanitizeFn)] = &[("gpt_oss", gpt_oss::sanitize)];

fn sanitizer(model_type: &str) -> Option<SanitizeFn> {
    SANITIZERS.iter().find(|(name, _)| *name == model_type).map(|(_, f)| *f)
}

/// A dtype by name (`float32`, `bfloat16`, `float16`, or f32/bf16/f16).
pub fn parse_dtype(name: &str) -> Option<Dtype> {
    match name {
        "float32" | "f32" => Some(Dtype::Float32),
        "bfloat16" | "bf16" => Some(Dtype::Bfloat16),
        "float16" | "f16" => Some(Dtype::Float16),
        _ => None,
    }
}

pub fn supported_model_types() -> Vec<String> {
    // gemma3 (multimodal) loads as its gemma3_text language model.
    let mut names: Vec<String> = FAMILIES.iter().map(|(name, _)| (*name).to_owned()).chain(std::iter::once("gemma3".to_owned())).collect();
    names.sort();
    names
}

/// The resolved architecture of a parsed `config.json`, or why it cannot be built.
pub fn family_config(args: &HfArgs) -> Result<TransformerConfig, String> {
    let f = family(&args.model_type)
        .ok_or_else(|| format!("model_type `{}` is not supported; supported: {}", args.model_type, supported_model_types().join(", ")))?;
    f(args)
}

fn family(model_type: &str) -> Option<FamilyFn> {
    FAMILIES.iter().find(|(name, _)| *name == model_type).map(|(_, f)| *f)
}

/// A decoder with its output projection (absent when tied to the embeddings).
#[derive(Debug, Clone, ModuleParameters)]
pub struct CausalLm {
    #[param]
    pub model: Decoder,
    #[param]
    pub lm_head: Option<Linear>,
    pub config: TransformerConfig,
}

impl CausalLm {
    pub fn new(config: TransformerConfig, quant: &QuantizeFn<'_>, dtype: Dtype) -> Result<Self, Exception> {
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(Linear::placeholder(config.hidden_size, config.vocab_size, false, quant("lm_head", config.hidden_size), dtype)?)
        };
        Ok(CausalLm { model: Decoder::new(&config, quant, dtype)?, lm_head, config })
    }

    /// Per layer, its sliding attention window (its KV cache must be a rotating one of that size).
    pub fn attention_windows(&self) -> Vec<Option<usize>> {
        self.model.layers.iter().map(|l| l.self_attn.window).collect()
    }

    pub fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    /// Vocabulary logits for hidden states.
    pub fn head(&self, hidden: &Array) -> Result<Array, Exception> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(hidden)?,
            None => self.model.embed_tokens.as_linear(hidden)?,
        };
        let logits = if self.config.logits_scaling == 1.0 {
            logits
        } else {
            logits.divide(Array::from_f32(self.config.logits_scaling).as_dtype(logits.dtype())?)?
        };
        match self.config.final_softcap {
            Some(cap) => crate::nn::softcap(&logits, cap),
            None => Ok(logits),
        }
    }

    /// Logits [B, L, vocab] for token ids [B, L] (int32), through per-layer caches when given.
    pub fn forward(&self, tokens: &Array, caches: Option<&mut [Box<dyn KvCache>]>) -> Result<Array, Exception> {
        self.head(&self.model.forward(tokens, caches)?)
    }

    /// The compute dtype (that of the norms, which are never quantized).
    pub fn dtype(&self) -> Dtype {
        self.model.norm.weight.dtype()
    }

    /// Every linear layer with its module path, in model order (the output projection last).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        self.adaptable_mut()
            .into_iter()
            .filter_map(|(p, l)| match l {
                crate::nn::AdaptedLayer::Linear(l) => Some((p, l)),
                crate::nn::AdaptedLayer::Switch(_) => None,
            })
            .collect()
    }

    /// Every layer an adapter can attach to (linear and switch layers), by module path.
    pub fn linear_paths(&mut self) -> Vec<String> {
        self.adaptable_mut().into_iter().map(|(p, _)| p).collect()
    }

    /// Every layer LoRA adapts, in model order: each transformer layer's linear layers, then its experts'
    /// switch layers; the output projection last.
    pub fn adaptable_mut(&mut self) -> Vec<(String, crate::nn::AdaptedLayer<'_>)> {
        use crate::nn::AdaptedLayer;
        let mut out: Vec<(String, AdaptedLayer<'_>)> = Vec::new();
        let lm_head = self.lm_head.as_mut();
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            let a = &mut layer.self_attn;
            for (name, l) in [("q_proj", a.q_proj.as_mut()), ("k_proj", a.k_proj.as_mut()), ("v_proj", a.v_proj.as_mut()), ("qkv_proj", a.qkv_proj.as_mut()), ("o_proj", Some(&mut a.o_proj))] {
                if let Some(l) = l {
                    out.push((format!("model.layers.{i}.self_attn.{name}"), AdaptedLayer::Linear(l)));
                }
            }
            let Some((block, m)) = transformer::ffn_of(&mut layer.mlp, &mut layer.block_sparse_moe) else { continue };
            let linears = [
                ("gate_proj", m.gate_proj.as_mut()),
                ("up_proj", m.up_proj.as_mut()),
                ("gate_up_proj", m.gate_up_proj.as_mut()),
                ("down_proj", m.down_proj.as_mut()),
                ("gate", m.gate.as_mut()),
                ("router", m.router.as_mut()),
            ];
            for (name, l) in linears {
                if let Some(l) = l {
                    out.push((format!("model.layers.{i}.{block}.{name}"), AdaptedLayer::Linear(l)));
                }
            }
            for (experts, s) in [("switch_mlp", m.switch_mlp.as_mut()), ("experts", m.experts.as_mut())] {
                let Some(s) = s else { continue };
                for (name, l) in [("gate_proj", &mut s.gate_proj), ("up_proj", &mut s.up_proj), ("down_proj", &mut s.down_proj)] {
                    out.push((format!("model.layers.{i}.{block}.{experts}.{name}"), AdaptedLayer::Switch(l)));
                }
            }
        }
        if let Some(h) = lm_head {
            out.push(("lm_head".to_owned(), AdaptedLayer::Linear(h)));
        }
        out
    }

    /// The experts' projections of the sparse blocks, by module path (`model.layers.N.mlp.switch_mlp.gate_proj`).
    pub fn switches_mut(&mut self) -> Vec<(String, &mut crate::nn::SwitchLinear)> {
        self.adaptable_mut()
            .into_iter()
            .filter_map(|(p, l)| match l {
                crate::nn::AdaptedLayer::Switch(s) => Some((p, s)),
                crate::nn::AdaptedLayer::Linear(_) => None,
            })
            .collect()
    }

    /// Every quantizable module by path with how it is quantized now (None: float), the embeddings included.
    pub fn module_quants(&mut self) -> Vec<(String, Option<Quant>)> {
        let mut out: Vec<(String, Option<Quant>)> = self.adaptable_mut().into_iter().map(|(p, l)| (p, l.quant())).collect();
        out.push(("model.embed_tokens".to_owned(), self.model.embed_tokens.quant));
        out
    }

    /// Quantizes every linear and switch layer whose input width the group size divides, the embeddings and
    /// the output projection included (mlx-lm's default), routers at 8 bits (affine, groups of 64) where the
    /// family's mlx-lm `quant_predicate` says so. Returns the modules that differ from `quant`: float ones
    /// (None) and routers.
    pub fn quantize(&mut self, quant: Quant) -> Result<BTreeMap<String, Option<Quant>>, Exception> {
        let router_quant = self.config.moe.as_ref().and_then(|m| m.router_quant);
        let mut differ = BTreeMap::new();
        for (path, mut layer) in self.adaptable_mut() {
            let is_router = path.ends_with(".gate") || path.ends_with(".router");
            let q = match router_quant {
                Some(r) if is_router => r,
                _ => quant,
            };
            if q.fits(layer.in_dims()) {
                layer.quantize(q)?;
                if q != quant {
                    differ.insert(path, Some(q));
                }
            } else {
                differ.insert(path, None);
            }
        }
        let embed = &mut self.model.embed_tokens;
        if quant.fits(embed.dims) {
            embed.quantize(quant)?;
        } else {
            differ.insert("model.embed_tokens".to_owned(), None);
        }
        Ok(differ)
    }
}
