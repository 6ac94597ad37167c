//! Mixture-of-experts feed-forward layers: `num_experts` stacked matrices applied to each token's chosen
//! experts with MLX's `gather_mm` (`gather_qmm` when quantized), never a loop over experts. With many
//! token-expert pairs they are sorted by expert first so each expert's rows are contiguous (mlx-lm's
//! `SwitchGLU` does the same, from 64 pairs on). Parameter names are mlx-lm's (`switch_mlp.gate_proj.weight`
//! of shape [experts, out, in]).

use mlx_rs::{
    error::Exception,
    macros::ModuleParameters,
    module::{Param, Parameter},
    ops::{self, indexing::IndexOp},
    random, Array, Dtype,
};

use super::{Adapter, AdapterSpec, Quant};

/// One projection per expert: weight [experts, out, in] (packed when quantized). With an adapter, each
/// expert has its own low-rank update, `lora_a` [experts, rank, in] and `lora_b` [experts, out, rank], as
/// mlx-lm's `LoRASwitchLinear` (same names and layout, so adapter files interoperate).
#[derive(Debug, Clone, ModuleParameters)]
pub struct SwitchLinear {
    #[param]
    pub weight: Param<Array>,
    #[param]
    pub scales: Param<Option<Array>>,
    #[param]
    pub biases: Param<Option<Array>>,
    /// One output bias per expert, [experts, out] (gpt-oss).
    #[param]
    pub bias: Param<Option<Array>>,
    #[param]
    pub lora_a: Param<Option<Array>>,
    #[param]
    pub lora_b: Param<Option<Array>>,
    pub quant: Option<Quant>,
    pub experts: i32,
    pub in_dims: i32,
    pub out_dims: i32,
    pub adapter: Option<Adapter>,
}

impl SwitchLinear {
    pub fn placeholder(experts: i32, in_dims: i32, out_dims: i32, bias: bool, quant: Option<Quant>, dtype: Dtype) -> Result<Self, Exception> {
        let (weight, scales, biases) = super::quant::placeholder_rows(&[experts, out_dims], in_dims, quant, dtype)?;
        let bias = bias.then(|| Array::zeros::<f32>(&[experts, out_dims]).and_then(|b| b.as_dtype(dtype))).transpose()?;
        Ok(SwitchLinear {
            weight: Param::new(weight),
            scales: Param::new(scales),
            biases: Param::new(biases),
            bias: Param::new(bias),
            lora_a: Param::new(None),
            lora_b: Param::new(None),
            quant,
            experts,
            in_dims,
            out_dims,
            adapter: None,
        })
    }

    /// `x` [..., 1, in] through the experts `indices` [...] (broadcast against x's batch dimensions).
    pub fn forward(&self, x: &Array, indices: &Array, sorted: bool) -> Result<Array, Exception> {
        let y = match (self.quant, &*self.scales) {
            (Some(q), Some(s)) => mlx_ext::gather_qmm(
                x,
                &self.weight,
                s,
                (*self.biases).as_ref(),
                None,
                Some(indices),
                true,
                q.group_size,
                q.bits,
                q.mode.name(),
                sorted,
            )?,
            _ => ops::gather_mm(x, self.weight.swap_axes(-1, -2)?, None, indices, sorted)?,
        };
        let y = match &*self.bias {
            Some(bias) => y.add(bias.take_axis(indices, 0)?.expand_dims(-2)?)?,
            None => y,
        };
        match (&self.adapter, &*self.lora_a, &*self.lora_b) {
            (Some(adapter), Some(a), Some(b)) if adapter.enabled => {
                // In the activations' dtype, as the dense layers' adapters (see `Linear::adapted`).
                let dtype = x.dtype();
                let cast = |w: &Array| if w.dtype() == dtype { Ok(w.clone()) } else { w.as_dtype(dtype) };
                let z = ops::gather_mm(adapter.dropped(x)?, cast(a)?.swap_axes(-1, -2)?, None, indices, sorted)?;
                let z = ops::gather_mm(&z, cast(b)?.swap_axes(-1, -2)?, None, indices, sorted)?;
                y.add(z.multiply(Array::from_f32(adapter.scale).as_dtype(dtype)?)?)
            }
            _ => Ok(y),
        }
    }

    /// Adds fresh per-expert adapters (mlx-lm's initialisation: A ~ U(±1/√in), B = 0), trainable, float32.
    pub fn add_adapter(&mut self, spec: AdapterSpec, key: &Array) -> Result<(), Exception> {
        if spec.dora {
            return Err(Exception::custom("DoRA on experts is not supported (nor in mlx-lm): use LoRA for the switch layers"));
        }
        let bound = 1.0 / (self.in_dims as f32).sqrt();
        self.lora_a = Param::new(Some(random::uniform::<_, f32>(-bound, bound, &[self.experts, spec.rank, self.in_dims], key)?));
        self.lora_b = Param::new(Some(Array::zeros::<f32>(&[self.experts, self.out_dims, spec.rank])?));
        self.lora_a.unfreeze(false);
        self.lora_b.unfreeze(false);
        self.adapter = Some(Adapter { rank: spec.rank, scale: spec.scale, dropout: spec.dropout, enabled: true, dropout_key: None, sampling: None });
        Ok(())
    }

    /// The experts' float weights, [experts, out, in].
    pub fn dense_weight(&self, dtype: Dtype) -> Result<Array, Exception> {
        super::quant::dense(&self.weight, (*self.scales).as_ref(), (*self.biases).as_ref(), self.quant, dtype)
    }

    /// Makes quantized experts float (`dtype`) in place.
    pub fn dequantize(&mut self, dtype: Dtype) -> Result<(), Exception> {
        super::quant::dequantize_in_place(&mut self.quant, &mut self.weight, &mut self.scales, &mut self.biases, dtype)
    }

    /// Merges the adapter into each expert's weight (W + scale · B A, mlx-lm's `LoRASwitchLinear.fuse`); a
    /// quantized layer is re-quantized with its own settings unless `dequantize`. No adapter afterwards.
    pub fn fuse(&mut self, dequantize: bool, compute: Dtype) -> Result<(), Exception> {
        let (Some(adapter), Some(a), Some(b)) = (self.adapter.take(), (*self.lora_a).clone(), (*self.lora_b).clone()) else {
            return Ok(());
        };
        // A quantized weight comes back in the model's compute dtype (microscaling scales are 8-bit codes).
        let dtype = if self.quant.is_some() { compute } else { self.weight.dtype() };
        let update = b.multiply(Array::from_f32(adapter.scale))?.matmul(&a)?;
        let quant = self.quant;
        *self.weight = self.dense_weight(dtype)?.add(update.as_dtype(dtype)?)?;
        *self.scales = None;
        *self.biases = None;
        *self.lora_a = None;
        *self.lora_b = None;
        self.quant = None;
        if let (Some(q), false) = (quant, dequantize) {
            self.quantize(q)?;
        }
        Ok(())
    }

    /// Quantizes a float layer in place, each expert's rows in groups along the input (mlx-lm's
    /// `SwitchLinear.to_quantized`); scales and biases keep the weight's dtype.
    pub fn quantize(&mut self, q: Quant) -> Result<(), Exception> {
        if self.quant.is_none() {
            super::quant::quantize_in_place(q, &mut self.weight, &mut self.scales, &mut self.biases)?;
            self.quant = Some(q);
        }
        Ok(())
    }
}

/// The experts' gated activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExpertActivation {
    /// silu(gate) · up.
    Swiglu,
    /// gpt-oss's clamped variant: (clip(up, ±limit) + 1) · g·σ(alpha·g) with g = min(gate, limit).
    SwigluClamped { alpha: f32, limit: f32 },
}

impl ExpertActivation {
    pub fn apply(self, gate: &Array, up: &Array) -> Result<Array, Exception> {
        // Plain ops (mlx-rs's nn::silu compiles a closure per call).
        match self {
            ExpertActivation::Swiglu => gate.multiply(ops::sigmoid(gate)?)?.multiply(up),
            ExpertActivation::SwigluClamped { alpha, limit } => {
                let dt = gate.dtype();
                let lim = Array::from_f32(limit).as_dtype(dt)?;
                let g = ops::minimum(gate, &lim)?;
                let u = ops::clip(up, (&lim.negative()?, &lim))?;
                let glu = g.multiply(ops::sigmoid(&g.multiply(Array::from_f32(alpha).as_dtype(dt)?)?)?)?;
                u.add(Array::from_f32(1.0).as_dtype(dt)?)?.multiply(&glu)
            }
        }
    }
}

/// Gated experts: down(act(gate(x), up(x))) with each token's chosen experts.
#[derive(Debug, Clone, ModuleParameters)]
pub struct SwitchGlu {
    #[param]
    pub gate_proj: SwitchLinear,
    #[param]
    pub up_proj: SwitchLinear,
    #[param]
    pub down_proj: SwitchLinear,
    pub activation: ExpertActivation,
}

/// Token-expert pairs from which they are sorted by expert (mlx-lm's threshold).
const SORT_FROM: usize = 64;

impl SwitchGlu {
    #[allow(clippy::too_many_arguments)]
    pub fn placeholder(
        experts: i32,
        hidden: i32,
        intermediate: i32,
        bias: bool,
        activation: ExpertActivation,
        quant: &dyn Fn(&str, i32) -> Option<Quant>,
        dtype: Dtype,
    ) -> Result<Self, Exception> {
        Ok(SwitchGlu {
            gate_proj: SwitchLinear::placeholder(experts, hidden, intermediate, bias, quant("gate_proj", hidden), dtype)?,
            up_proj: SwitchLinear::placeholder(experts, hidden, intermediate, bias, quant("up_proj", hidden), dtype)?,
            down_proj: SwitchLinear::placeholder(experts, intermediate, hidden, bias, quant("down_proj", intermediate), dtype)?,
            activation,
        })
    }

    /// `x` [..., D] through the experts `indices` [..., k]: [..., k, D], one output per chosen expert.
    pub fn forward(&self, x: &Array, indices: &Array) -> Result<Array, Exception> {
        let indices = mlx_rs::stop_gradient(indices)?;
        let idx_shape = indices.shape().to_vec();
        let k = idx_shape[idx_shape.len() - 1];
        let d = x.shape()[x.ndim() - 1];
        let x = x.expand_dims_axes(&[-2, -3])?;
        let sort = indices.size() >= SORT_FROM;
        let (x, idx, inverse) = if sort {
            let flat = indices.flatten(None, None)?;
            let order = ops::argsort_axis(&flat, 0)?;
            let inverse = ops::argsort_axis(&order, 0)?;
            let rows = x.reshape(&[-1, 1, d])?;
            let tokens = order.floor_divide(Array::from_int(k))?;
            (rows.take_axis(&tokens, 0)?, flat.take_axis(&order, 0)?, Some(inverse))
        } else {
            (x, indices.clone(), None)
        };
        let up = self.up_proj.forward(&x, &idx, sort)?;
        let gate = self.gate_proj.forward(&x, &idx, sort)?;
        let activated = self.activation.apply(&gate, &up)?;
        let mut out = self.down_proj.forward(&activated, &idx, sort)?;
        if let Some(inverse) = inverse {
            out = out.take_axis(&inverse, 0)?;
            let mut shape = idx_shape.clone();
            shape.extend([1, d]);
            out = out.reshape(&shape)?;
        }
        out.squeeze_axes(&[-2])
    }
}

/// How a sparse block routes its tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Routing {
    pub experts: i32,
    pub top_k: i32,
    /// Divide the chosen experts' weights by their sum (Qwen3-MoE's `norm_topk_prob`).
    pub normalize: bool,
    /// Softmax over the k chosen logits only (Mixtral), instead of over all experts before choosing.
    pub softmax_after_top_k: bool,
}

impl Routing {
    /// (expert indices [B, L, k], weights [B, L, k]) from router logits [B, L, experts]. Softmax first
    /// (precise), then the k largest, as mlx-lm's `Qwen3MoeSparseMoeBlock`; or the k largest logits, then
    /// their softmax, as its `MixtralSparseMoeBlock`.
    pub fn route(&self, logits: &Array) -> Result<(Array, Array), Exception> {
        let kth = self.experts - self.top_k;
        let gates = if self.softmax_after_top_k { logits.clone() } else { ops::softmax_axis(logits, -1, true)? };
        let inds = ops::argpartition_axis(&gates, kth, -1)?.index((.., .., kth..));
        let inds = mlx_rs::stop_gradient(&inds)?;
        let mut scores = gates.take_along_axis(&inds, -1)?;
        if self.softmax_after_top_k {
            scores = ops::softmax_axis(&scores, -1, true)?;
        }
        if self.normalize {
            scores = scores.divide(scores.sum_axis(-1, true)?)?;
        }
        Ok((inds, scores))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(a: &Array) -> Vec<f32> {
        a.as_dtype(Dtype::Float32).unwrap().to_vec_exact::<f32>().unwrap()
    }

    #[test]
    fn routing_picks_the_top_k_and_weights_them_as_each_model_defines() {
        // Logits [1, 3, 2, 0]: experts 1 and 2 win. Softmax over all four: e³/Σ = 0.643914, e²/Σ = 0.236883
        // (Σ = e + e³ + e² + 1 = 31.19287); renormalized, or as Mixtral's softmax of the two logits alone:
        // 0.731059 and 0.268941.
        let logits = Array::from_slice(&[1.0f32, 3.0, 2.0, 0.0], &[1, 1, 4]);
        let check = |r: Routing, want: [f32; 2]| {
            let (inds, scores) = r.route(&logits).unwrap();
            let (i, s) = (inds.as_dtype(Dtype::Int32).unwrap().to_vec_exact::<i32>().unwrap(), values(&scores));
            let mut pairs: Vec<(i32, f32)> = i.into_iter().zip(s).collect();
            pairs.sort_by_key(|p| p.0);
            assert_eq!((pairs[0].0, pairs[1].0), (1, 2), "{r:?}");
            assert!((pairs[0].1 - want[0]).abs() < 1e-6 && (pairs[1].1 - want[1]).abs() < 1e-6, "{r:?}: {pairs:?}");
        };
        let r = Routing { experts: 4, top_k: 2, normalize: false, softmax_after_top_k: false };
        check(r, [0.643_914, 0.236_883]);
        check(Routing { normalize: true, ..r }, [0.731_059, 0.268_941]);
        check(Routing { softmax_after_top_k: true, ..r }, [0.731_059, 0.268_941]);
    }

    #[test]
    fn switch_glu_equals_a_loop_over_each_tokens_experts() {
        // 3 experts, hidden 4, width 6; each token's two experts computed one matrix product at a time.
        let key = random::key(5).unwrap();
        let w = |shape: &[i32], k: u32| random::normal::<f32>(shape, None, Some(0.5), &key.add(Array::from_slice(&[k, 0], &[2])).unwrap()).unwrap();
        let mut glu = SwitchGlu::placeholder(3, 4, 6, false, ExpertActivation::Swiglu, &|_, _| None, Dtype::Float32).unwrap();
        *glu.gate_proj.weight = w(&[3, 6, 4], 1);
        *glu.up_proj.weight = w(&[3, 6, 4], 2);
        *glu.down_proj.weight = w(&[3, 4, 6], 3);
        for tokens in [3, 40] {
            // 3 tokens × 2 = 6 pairs (unsorted); 40 × 2 = 80 pairs (sorted by expert).
            let x = w(&[1, tokens, 4], 4);
            let inds: Vec<i32> = (0..tokens * 2).map(|i| (i * 7 + i / 2) % 3).collect();
            let inds: Vec<i32> = inds.chunks(2).flat_map(|c| if c[0] == c[1] { vec![c[0], (c[0] + 1) % 3] } else { c.to_vec() }).collect();
            let idx = Array::from_slice(&inds, &[1, tokens, 2]);
            let got = values(&glu.forward(&x, &idx).unwrap());
            for t in 0..tokens {
                let xt = x.index((0, t..t + 1, ..));
                for slot in 0..2 {
                    let e = inds[(t * 2 + slot) as usize];
                    let expert = |l: &SwitchLinear| l.weight.index(e).t();
                    let g = xt.matmul(expert(&glu.gate_proj)).unwrap();
                    let u = xt.matmul(expert(&glu.up_proj)).unwrap();
                    let h = g.multiply(ops::sigmoid(&g).unwrap()).unwrap().multiply(&u).unwrap();
                    let want = values(&h.matmul(expert(&glu.down_proj)).unwrap());
                    let at = ((t * 2 + slot) * 4) as usize;
                    for (a, b) in got[at..at + 4].iter().zip(&want) {
                        assert!((a - b).abs() < 1e-5, "{tokens} tokens, token {t} slot {slot}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
