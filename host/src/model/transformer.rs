//! The decoder every supported family maps onto (see `args::TransformerConfig`): checkpoint names for every
//! field, so parameter paths equal the Hugging Face tensor names.

use mlx_rs::{
    error::Exception,
    macros::ModuleParameters,
    module::{ModuleParameters as _, Param},
    ops,
    ops::indexing::IndexOp,
    Array, Dtype,
};

use super::{
    attention::{dense_attention, quantized_attention, softcapped_attention},
    packing::Segments,
    args::{Activation, MoeNames, NormPlacement, QkNorm, TransformerConfig},
    QuantizeFn,
};
use crate::{
    cache::{AttentionMask, KvCache, KvTensors},
    nn::{Embedding, Linear, RmsNorm, Rope, RouterLoad, Routing, SwitchGlu},
};

#[derive(Debug, Clone, ModuleParameters)]
pub struct Attention {
    /// q, k and v apart, or (`qkv_proj`) fused in one matrix as the checkpoint stores them (Phi-3).
    #[param]
    pub q_proj: Option<Linear>,
    #[param]
    pub k_proj: Option<Linear>,
    #[param]
    pub v_proj: Option<Linear>,
    #[param]
    pub qkv_proj: Option<Linear>,
    #[param]
    pub o_proj: Linear,
    #[param]
    pub q_norm: Option<RmsNorm>,
    #[param]
    pub k_norm: Option<RmsNorm>,
    /// Per query head, a logit added to every softmax's denominator (gpt-oss), [heads].
    #[param]
    pub sinks: Param<Option<Array>>,
    /// Whether q_norm/k_norm span the whole projection (OLMo 2) rather than each head.
    pub qk_norm_whole: bool,
    pub heads: i32,
    pub kv_heads: i32,
    pub head_dim: i32,
    /// None on layers without positional encoding (SmolLM3's NoPE layers).
    pub rope: Option<Rope>,
    pub scale: f32,
    /// A sliding window (Gemma's local layers): each query sees this many most recent positions.
    pub window: Option<usize>,
    /// Scores soft-capped before the softmax (Gemma 2); the fused SDPA kernel cannot, so scores are explicit.
    pub softcap: Option<f32>,
}

#[derive(Debug, Clone, ModuleParameters)]
pub struct Mlp {
    /// Gate and up apart, or (`gate_up_proj`) fused as the checkpoint stores them (Phi-3).
    #[param]
    pub gate_proj: Option<Linear>,
    #[param]
    pub up_proj: Option<Linear>,
    #[param]
    pub gate_up_proj: Option<Linear>,
    /// Absent in a sparse block.
    #[param]
    pub down_proj: Option<Linear>,
    /// A sparse block's router (`gate`, one logit per expert) and experts (`switch_mlp`), or the same under
    /// gpt-oss's names (`router`, `experts`).
    #[param]
    pub gate: Option<Linear>,
    #[param]
    pub switch_mlp: Option<SwitchGlu>,
    #[param]
    pub router: Option<Linear>,
    #[param]
    pub experts: Option<SwitchGlu>,
    pub routing: Option<Routing>,
    pub activation: Activation,
}

#[derive(Debug, Clone, ModuleParameters)]
pub struct Layer {
    #[param]
    pub self_attn: Attention,
    /// The feed-forward block under its checkpoint name: `mlp` (dense, or Qwen3-MoE's sparse block) or
    /// `block_sparse_moe` (Mixtral); exactly one is present.
    #[param]
    pub mlp: Option<Mlp>,
    #[param]
    pub block_sparse_moe: Option<Mlp>,
    /// Absent with post-norms (OLMo 2).
    #[param]
    pub input_layernorm: Option<RmsNorm>,
    /// Before the MLP with pre-norms; on the attention output with post-norms.
    #[param]
    pub post_attention_layernorm: RmsNorm,
    /// Before the MLP (sandwich norms only).
    #[param]
    pub pre_feedforward_layernorm: Option<RmsNorm>,
    /// On the MLP output (post and sandwich norms).
    #[param]
    pub post_feedforward_layernorm: Option<RmsNorm>,
    pub norms: NormPlacement,
    pub residual_multiplier: f32,
}

#[derive(Debug, Clone, ModuleParameters)]
pub struct Decoder {
    #[param]
    pub embed_tokens: Embedding,
    #[param]
    pub layers: Vec<Layer>,
    #[param]
    pub norm: RmsNorm,
    pub embedding_multiplier: f32,
    /// Recompute the activations of this many layers in the backward pass, counted from the first layer with
    /// trainable parameters (uncached forwards only: training); 0 checkpoints none, `usize::MAX` all.
    pub checkpoint_layers: usize,
}

impl Attention {
    fn new(c: &TransformerConfig, index: usize, prefix: &str, quant: &QuantizeFn<'_>, dtype: Dtype) -> Result<Self, Exception> {
        let (h, d) = (c.hidden_size, c.head_dim);
        let linear = |name: &str, i: i32, o: i32, bias: bool| {
            Linear::placeholder(i, o, bias, quant(&format!("{prefix}.{name}"), i), dtype)
        };
        let norm = |heads: i32| match c.qk_norm {
            QkNorm::None => Ok(None),
            QkNorm::PerHead => c.norm(d).map(Some),
            QkNorm::Whole => c.norm(heads * d).map(Some),
        };
        let rope = c.layer_rope.get(index).cloned().flatten().map(|r| Rope::new(r.dims, r.theta, &r.scaling));
        Ok(Attention {
            q_proj: (!c.fused_projections).then(|| linear("q_proj", h, c.num_attention_heads * d, c.qkv_bias)).transpose()?,
            k_proj: (!c.fused_projections).then(|| linear("k_proj", h, c.num_key_value_heads * d, c.qkv_bias)).transpose()?,
            v_proj: (!c.fused_projections).then(|| linear("v_proj", h, c.num_key_value_heads * d, c.qkv_bias)).transpose()?,
            qkv_proj: c
                .fused_projections
                .then(|| linear("qkv_proj", h, (c.num_attention_heads + 2 * c.num_key_value_heads) * d, c.qkv_bias))
                .transpose()?,
            o_proj: linear("o_proj", c.num_attention_heads * d, h, c.o_bias)?,
            q_norm: norm(c.num_attention_heads)?,
            k_norm: norm(c.num_key_value_heads)?,
            sinks: Param::new(c.attention_sinks.then(|| Array::zeros::<f32>(&[c.num_attention_heads]).and_then(|s| s.as_dtype(dtype))).transpose()?),
            qk_norm_whole: c.qk_norm == QkNorm::Whole,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: d,
            rope,
            scale: c.attention_scale,
            window: c.layer_window.get(index).copied().flatten(),
            softcap: c.attn_softcap,
        })
    }

    fn heads_first(&self, x: Array, heads: i32, norm: Option<&RmsNorm>) -> Result<Array, Exception> {
        let shape = x.shape();
        let (b, l) = (shape[0], shape[1]);
        // One token: [B, 1, H·D] is already [B, H, 1, D] in memory; one reshape instead of reshape + transpose.
        if l == 1 {
            let x = x.reshape(&[b, heads, 1, self.head_dim])?;
            return match norm {
                Some(n) => n.forward(&x),
                None => Ok(x),
            };
        }
        let x = x.reshape(&[b, l, heads, self.head_dim])?;
        let x = match norm {
            Some(n) => n.forward(&x)?,
            None => x,
        };
        x.transpose_axes(&[0, 2, 1, 3])
    }

    /// q, k and v of x, from the fused projection (split at the query and key widths) or the three.
    fn project(&self, x: &Array) -> Result<(Array, Array, Array), Exception> {
        let missing = || Exception::custom("attention has neither qkv_proj nor q/k/v_proj");
        if let Some(fused) = &self.qkv_proj {
            let (qw, kw) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
            let parts = ops::split_at_indices(&fused.forward(x)?, &[qw, qw + kw], -1)?;
            let mut parts = parts.into_iter();
            return match (parts.next(), parts.next(), parts.next()) {
                (Some(q), Some(k), Some(v)) => Ok((q, k, v)),
                _ => Err(missing()),
            };
        }
        match (&self.q_proj, &self.k_proj, &self.v_proj) {
            (Some(q), Some(k), Some(v)) => Ok((q.forward(x)?, k.forward(x)?, v.forward(x)?)),
            _ => Err(missing()),
        }
    }

    /// x: [B, L, hidden]. Without a cache the L tokens attend causally to each other from position 0, or
    /// with `segments` within each packed row.
    pub fn forward(&self, x: &Array, cache: Option<&mut Box<dyn KvCache>>, segments: Option<&Segments>) -> Result<Array, Exception> {
        let (b, l) = (x.shape()[0], x.shape()[1]);
        let (q, k, v) = self.project(x)?;
        let (q, k, q_norm, k_norm) = match (self.qk_norm_whole, &self.q_norm, &self.k_norm) {
            (true, Some(qn), Some(kn)) => (qn.forward(&q)?, kn.forward(&k)?, None, None),
            _ => (q, k, self.q_norm.as_ref(), self.k_norm.as_ref()),
        };
        let q = self.heads_first(q, self.heads, q_norm)?;
        let k = self.heads_first(k, self.kv_heads, k_norm)?;
        let v = self.heads_first(v, self.kv_heads, None)?;
        let offset = cache.as_ref().map_or(0, |c| c.offset()) as i32;
        let shifts: &[i32] = cache.as_ref().map_or(&[], |c| c.rope_shifts());
        let (q, k) = match &self.rope {
            Some(rope) => (rope.forward_shifted(&q, offset, shifts)?, rope.forward_shifted(&k, offset, shifts)?),
            None => (q, k),
        };
        let scale = self.scale;
        let sinks = (*self.sinks).as_ref();
        let out = match cache {
            Some(cache) => {
                let view = cache.update_and_fetch(k, v)?;
                match view.tensors {
                    KvTensors::Dense { keys, values } => match self.softcap {
                        Some(cap) => softcapped_attention(&q, &keys, &values, scale, &view.mask, cap, self.kv_heads, sinks)?,
                        None => dense_attention(&q, &keys, &values, scale, &view.mask, sinks)?,
                    },
                    KvTensors::Quantized { keys, values, quant } => {
                        quantized_attention(&q, &keys, &values, scale, &view.mask, quant, self.kv_heads, self.softcap, sinks)?
                    }
                }
            }
            None => {
                let mask = match (segments, self.window) {
                    (Some(segments), window) => segments.mask(window)?,
                    (None, Some(w)) if l as usize > w => {
                        let positions: Vec<usize> = (0..l as usize).collect();
                        AttentionMask::build(l as usize, &positions, 0, Some(w), 0, &[])?
                    }
                    (None, _) if l > 1 => AttentionMask::Causal,
                    (None, _) => AttentionMask::None,
                };
                match self.softcap {
                    Some(cap) => softcapped_attention(&q, &k, &v, scale, &mask, cap, self.kv_heads, sinks)?,
                    None => dense_attention(&q, &k, &v, scale, &mask, sinks)?,
                }
            }
        };
        let out = if l == 1 { out } else { out.transpose_axes(&[0, 2, 1, 3])? };
        let out = out.reshape(&[b, l, self.heads * self.head_dim])?;
        self.o_proj.forward(&out)
    }
}

impl Mlp {
    fn new(c: &TransformerConfig, index: usize, prefix: &str, quant: &QuantizeFn<'_>, dtype: Dtype) -> Result<Self, Exception> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let linear = |name: &str, a: i32, b: i32| Linear::placeholder(a, b, c.mlp_bias, quant(&format!("{prefix}.{name}"), a), dtype);
        if let Some(moe) = c.moe.as_ref().filter(|m| m.sparse.get(index).copied().unwrap_or(false)) {
            let (router_name, experts_name) = match moe.names {
                MoeNames::GateSwitchMlp => ("gate", "switch_mlp"),
                MoeNames::RouterExperts => ("router", "experts"),
            };
            let quant_of = |name: &str, in_dims: i32| quant(&format!("{prefix}.{experts_name}.{name}"), in_dims);
            let router = Linear::placeholder(h, moe.routing.experts, moe.bias, quant(&format!("{prefix}.{router_name}"), h), dtype)?;
            let experts = SwitchGlu::placeholder(moe.routing.experts, h, moe.intermediate, moe.bias, moe.activation, &quant_of, dtype)?;
            let (gate, switch_mlp, router, experts) = match moe.names {
                MoeNames::GateSwitchMlp => (Some(router), Some(experts), None, None),
                MoeNames::RouterExperts => (None, None, Some(router), Some(experts)),
            };
            return Ok(Mlp {
                gate_proj: None,
                up_proj: None,
                gate_up_proj: None,
                down_proj: None,
                gate,
                switch_mlp,
                router,
                experts,
                routing: Some(moe.routing),
                activation: c.activation,
            });
        }
        let apart = !c.fused_projections;
        Ok(Mlp {
            gate_proj: apart.then(|| linear("gate_proj", h, i)).transpose()?,
            up_proj: apart.then(|| linear("up_proj", h, i)).transpose()?,
            gate_up_proj: c.fused_projections.then(|| linear("gate_up_proj", h, 2 * i)).transpose()?,
            down_proj: Some(linear("down_proj", i, h)?),
            gate: None,
            switch_mlp: None,
            router: None,
            experts: None,
            routing: None,
            activation: c.activation,
        })
    }

    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        Ok(self.forward_routed(x, None)?.0)
    }

    /// Whether this is a sparse (mixture-of-experts) block.
    pub fn is_sparse(&self) -> bool {
        self.routing.is_some()
    }

    /// [`Mlp::forward`], and for a sparse block given `real` (`[B, L]`, 1 at non-padding positions) its
    /// routing statistics over those positions.
    pub fn forward_routed(&self, x: &Array, real: Option<&Array>) -> Result<(Array, Option<RouterLoad>), Exception> {
        let (router, experts) = (self.gate.as_ref().or(self.router.as_ref()), self.switch_mlp.as_ref().or(self.experts.as_ref()));
        if let (Some(router), Some(experts), Some(routing)) = (router, experts, &self.routing) {
            // Each token's chosen experts, weighted by their routing scores (mlx-lm's sparse block).
            let logits = router.forward(x)?;
            let (inds, scores) = routing.route(&logits)?;
            let load = real.map(|real| RouterLoad::of_layer(&logits, &inds, real)).transpose()?;
            let y = experts.forward(x, &inds)?;
            return Ok((y.multiply(scores.expand_dims(-1)?)?.sum_axis(-2, None)?.as_dtype(y.dtype())?, load));
        }
        Ok((self.forward_dense(x)?, None))
    }

    fn forward_dense(&self, x: &Array) -> Result<Array, Exception> {
        // Activations as plain ops: mlx-rs's `nn::silu`/`gelu_approximate` compile a fresh closure on every
        // call, which retraces.
        let (gate, up) = match (&self.gate_up_proj, &self.gate_proj, &self.up_proj) {
            (Some(fused), _, _) => {
                let both = fused.forward(x)?;
                let half = both.shape()[both.ndim() - 1] / 2;
                (both.index((.., .., ..half)), both.index((.., .., half..)))
            }
            (None, Some(g), Some(u)) => (g.forward(x)?, u.forward(x)?),
            _ => return Err(Exception::custom("mlp has neither gate_up_proj nor gate/up_proj")),
        };
        let activated = match self.activation {
            Activation::Silu => gate.multiply(ops::sigmoid(&gate)?)?,
            Activation::GeluTanh => gelu_tanh(&gate)?,
        };
        match &self.down_proj {
            Some(down) => down.forward(&activated.multiply(up)?),
            None => Err(Exception::custom("mlp has no down_proj")),
        }
    }
}

/// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), MLX's `gelu_approx`, with constants in x's dtype.
fn gelu_tanh(x: &Array) -> Result<Array, Exception> {
    let c = |v: f32| Array::from_f32(v).as_dtype(x.dtype());
    let inner = x.add(x.multiply(x)?.multiply(x)?.multiply(c(0.044715)?)?)?.multiply(c((2.0 / std::f32::consts::PI).sqrt())?)?;
    x.multiply(c(0.5)?)?.multiply(c(1.0)?.add(ops::tanh(&inner)?)?)
}

/// The present one of a layer's two feed-forward fields, with its checkpoint name (the fields borrowed
/// apart, so the attention can be borrowed beside it).
pub fn ffn_of<'a>(mlp: &'a mut Option<Mlp>, block_sparse_moe: &'a mut Option<Mlp>) -> Option<(&'static str, &'a mut Mlp)> {
    match (mlp, block_sparse_moe) {
        (Some(m), _) => Some(("mlp", m)),
        (None, Some(m)) => Some(("block_sparse_moe", m)),
        (None, None) => None,
    }
}

impl Layer {
    fn new(c: &TransformerConfig, index: i32, quant: &QuantizeFn<'_>, dtype: Dtype) -> Result<Self, Exception> {
        let prefix = format!("model.layers.{index}");
        let norm = || c.norm(c.hidden_size);
        let (input, pre_ff, post_ff) = match c.norms {
            NormPlacement::Pre => (true, false, false),
            NormPlacement::Post => (false, false, true),
            NormPlacement::Sandwich => (true, true, true),
        };
        let optional = |on: bool| if on { norm().map(Some) } else { Ok(None) };
        Ok(Layer {
            self_attn: Attention::new(c, index as usize, &format!("{prefix}.self_attn"), quant, dtype)?,
            mlp: (!c.block_sparse_moe).then(|| Mlp::new(c, index as usize, &format!("{prefix}.mlp"), quant, dtype)).transpose()?,
            block_sparse_moe: c.block_sparse_moe.then(|| Mlp::new(c, index as usize, &format!("{prefix}.block_sparse_moe"), quant, dtype)).transpose()?,
            input_layernorm: optional(input)?,
            post_attention_layernorm: norm()?,
            pre_feedforward_layernorm: optional(pre_ff)?,
            post_feedforward_layernorm: optional(post_ff)?,
            norms: c.norms,
            residual_multiplier: c.residual_multiplier,
        })
    }

    /// The feed-forward block, whichever name it has.
    pub fn ffn(&self) -> Result<&Mlp, Exception> {
        self.mlp.as_ref().or(self.block_sparse_moe.as_ref()).ok_or_else(|| Exception::custom("layer without a feed-forward block"))
    }

    pub fn forward(&self, x: &Array, cache: Option<&mut Box<dyn KvCache>>) -> Result<Array, Exception> {
        Ok(self.forward_routed(x, cache, None, None)?.0)
    }

    /// [`Layer::forward`], with a sparse block's routing statistics over `real` (see [`Mlp::forward_routed`]),
    /// and without a cache, attention within each packed row given `segments`.
    pub fn forward_routed(
        &self,
        x: &Array,
        cache: Option<&mut Box<dyn KvCache>>,
        real: Option<&Array>,
        segments: Option<&Segments>,
    ) -> Result<(Array, Option<RouterLoad>), Exception> {
        // The multiplier in the activations' dtype, as mlx-lm's Python scalar: bf16 stays bf16.
        let residual = |x: &Array, r: Array| {
            if self.residual_multiplier == 1.0 {
                x.add(r)
            } else {
                x.add(r.multiply(Array::from_f32(self.residual_multiplier).as_dtype(r.dtype())?)?)
            }
        };
        let apply = |n: Option<&RmsNorm>, x: &Array| match n {
            Some(n) => n.forward(x),
            None => Ok(x.clone()),
        };
        match self.norms {
            NormPlacement::Pre => {
                let h = residual(x, self.self_attn.forward(&apply(self.input_layernorm.as_ref(), x)?, cache, segments)?)?;
                let (fed, load) = self.ffn()?.forward_routed(&self.post_attention_layernorm.forward(&h)?, real)?;
                Ok((residual(&h, fed)?, load))
            }
            NormPlacement::Post => {
                let h = residual(x, self.post_attention_layernorm.forward(&self.self_attn.forward(x, cache, segments)?)?)?;
                let (fed, load) = self.ffn()?.forward_routed(&h, real)?;
                Ok((residual(&h, apply(self.post_feedforward_layernorm.as_ref(), &fed)?)?, load))
            }
            NormPlacement::Sandwich => {
                let attended = self.self_attn.forward(&apply(self.input_layernorm.as_ref(), x)?, cache, segments)?;
                let h = residual(x, self.post_attention_layernorm.forward(&attended)?)?;
                let (fed, load) = self.ffn()?.forward_routed(&apply(self.pre_feedforward_layernorm.as_ref(), &h)?, real)?;
                Ok((residual(&h, apply(self.post_feedforward_layernorm.as_ref(), &fed)?)?, load))
            }
        }
    }

    /// [`Layer::forward`] without a cache, its activations recomputed in the backward pass. The layer's
    /// trainable parameters go in as inputs so their gradients flow through the checkpoint.
    /// The real-token mask and the segment ids go in as inputs too, so the checkpoint holds no array of the
    /// outer graph.
    pub fn forward_checkpointed(&self, x: &Array, real: Option<&Array>, segments: Option<&Segments>) -> Result<(Array, Option<RouterLoad>), Exception> {
        let params = self.trainable_parameters().flatten();
        let mut names: Vec<std::rc::Rc<str>> = params.keys().cloned().collect();
        names.sort();
        let mut inputs = vec![x.clone()];
        inputs.extend(real.cloned());
        inputs.extend(segments.map(|s| s.ids().clone()));
        let (has_real, has_segments) = (real.is_some(), segments.is_some());
        let first_param = inputs.len();
        inputs.extend(names.iter().map(|n| params[n].clone()));
        let mut layer = self.clone();
        let out = crate::nn::checkpointed(&inputs, move |args| {
            layer.update_flattened(names.iter().cloned().zip(args[first_param..].iter().cloned()).collect());
            let real = has_real.then(|| &args[1]);
            let segments = has_segments.then(|| Segments::new(args[1 + usize::from(has_real)].clone()));
            let (h, load) = layer.forward_routed(&args[0], None, real, segments.as_ref())?;
            Ok(std::iter::once(h).chain(load.and_then(RouterLoad::layer_parts).into_iter().flatten()).collect())
        })?;
        let mut out = out.into_iter();
        let h = out.next().ok_or_else(|| Exception::custom("checkpointed layer returned nothing"))?;
        let load = match (out.next(), out.next()) {
            (Some(counts), Some(probs)) => Some(RouterLoad::of_one_layer(counts, probs)),
            _ => None,
        };
        Ok((h, load))
    }
}

impl Decoder {
    pub fn new(c: &TransformerConfig, quant: &QuantizeFn<'_>, dtype: Dtype) -> Result<Self, Exception> {
        Ok(Decoder {
            embed_tokens: Embedding::placeholder(c.vocab_size, c.hidden_size, quant("model.embed_tokens", c.hidden_size), dtype)?,
            layers: (0..c.num_hidden_layers).map(|i| Layer::new(c, i, quant, dtype)).collect::<Result<_, _>>()?,
            norm: c.norm(c.hidden_size)?,
            embedding_multiplier: c.embedding_multiplier,
            checkpoint_layers: 0,
        })
    }

    /// Final hidden states [B, L, hidden] for token ids [B, L].
    pub fn forward(&self, tokens: &Array, caches: Option<&mut [Box<dyn KvCache>]>) -> Result<Array, Exception> {
        Ok(self.forward_routed(tokens, caches, None, None)?.0)
    }

    /// Whether any layer has a sparse (mixture-of-experts) block.
    pub fn has_sparse_layers(&self) -> bool {
        self.layers.iter().any(|l| l.ffn().is_ok_and(Mlp::is_sparse))
    }

    /// [`Decoder::forward`], and given `real` (`[B, L]`, 1 at non-padding positions) the routers'
    /// load-balancing loss over those positions (see [`RouterLoad`]); None without sparse layers. Without
    /// caches, `segments` packs several rows into each sequence (see [`Segments`]).
    pub fn forward_routed(
        &self,
        tokens: &Array,
        caches: Option<&mut [Box<dyn KvCache>]>,
        real: Option<&Array>,
        segments: Option<&Segments>,
    ) -> Result<(Array, Option<Array>), Exception> {
        let mut total: Option<RouterLoad> = None;
        let mut add = |load: Option<RouterLoad>| -> Result<(), Exception> {
            if let Some(load) = load {
                total = Some(match total.take() {
                    Some(t) => t.merge(load)?,
                    None => load,
                });
            }
            Ok(())
        };
        let mut h = self.embed_tokens.forward(tokens)?;
        if self.embedding_multiplier != 1.0 {
            h = h.multiply(Array::from_f32(self.embedding_multiplier).as_dtype(h.dtype())?)?;
        }
        match caches {
            Some(caches) => {
                if caches.len() != self.layers.len() {
                    return Err(Exception::custom(format!("{} caches for {} layers", caches.len(), self.layers.len())));
                }
                for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
                    let (next, load) = layer.forward_routed(&h, Some(cache), real, None)?;
                    add(load)?;
                    h = next;
                }
            }
            None => {
                // The backward pass starts at the first layer with trainable parameters; earlier layers keep
                // nothing for it, so only the later ones are worth checkpointing.
                let first = if self.checkpoint_layers > 0 {
                    self.layers.iter().position(|l| !l.trainable_parameters().flatten().is_empty()).unwrap_or(self.layers.len())
                } else {
                    self.layers.len()
                };
                let end = first.saturating_add(self.checkpoint_layers);
                for (i, layer) in self.layers.iter().enumerate() {
                    let (next, load) = if (first..end).contains(&i) { layer.forward_checkpointed(&h, real, segments)? } else { layer.forward_routed(&h, None, real, segments)? };
                    add(load)?;
                    h = next;
                }
            }
        }
        let aux = match (total, real) {
            (Some(load), Some(real)) => Some(load.loss(&real.sum(None)?)?),
            _ => None,
        };
        Ok((self.norm.forward(&h)?, aux))
    }
}
