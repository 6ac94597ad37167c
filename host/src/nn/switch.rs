//! Mixture-of-experts feed-forward layers: `num_experts` stacked matrices applied to each token's chosen
//! experts with MLX's `gather_mm` (`gather_qmm` when quantized), never a loop over experts. With many
//! token-expert pairs they are sorted by expert first so each expert's rows are contiguous (mlx-lm's
//! `SwitchGLU` does the same, from 64 pairs on). Parameter names are mlx-lm's (`switch_mlp.gate_proj.weight`
//! of shape [experts, out, in]).

use mlx_rs::{
    error::Exception,
    macros::ModuleParameters,
    module::Param,
    ops::{self, indexing::IndexOp},
    Array, Dtype,
};

use super::Quant;

/// One projection per expert: weight [experts, out, in] (packed when quantized).
#[derive(Debug, Clone, ModuleParameters)]
pub struct SwitchLinear {
    #[param]
    pub weight: Param<Array>,
    #[param]
    pub scales: Param<Option<Array>>,
    #[param]
    pub biases: Param<Option<Array>>,
    pub quant: Option<Quant>,
    pub experts: i32,
    pub in_dims: i32,
    pub out_dims: i32,
}

impl SwitchLinear {
    pub fn placeholder(experts: i32, in_dims: i32, out_dims: i32, quant: Option<Quant>, dtype: Dtype) -> Result<Self, Exception> {
        let zeros = |shape: &[i32], dtype: Dtype| Array::zeros::<f32>(shape).and_then(|a| a.as_dtype(dtype));
        let (weight, scales, biases) = match quant {
            Some(q) => {
                let groups = in_dims / q.group_size;
                (zeros(&[experts, out_dims, q.packed_dims(in_dims)], Dtype::Uint32)?, Some(zeros(&[experts, out_dims, groups], dtype)?), Some(zeros(&[experts, out_dims, groups], dtype)?))
            }
            None => (zeros(&[experts, out_dims, in_dims], dtype)?, None, None),
        };
        Ok(SwitchLinear { weight: Param::new(weight), scales: Param::new(scales), biases: Param::new(biases), quant, experts, in_dims, out_dims })
    }

    /// `x` [..., 1, in] through the experts `indices` [...] (broadcast against x's batch dimensions).
    pub fn forward(&self, x: &Array, indices: &Array, sorted: bool) -> Result<Array, Exception> {
        match (self.quant, &*self.scales, &*self.biases) {
            (Some(q), Some(s), Some(b)) => ops::gather_qmm(x, &*self.weight, s, b, None, indices, true, q.group_size, q.bits, sorted),
            _ => ops::gather_mm(x, self.weight.swap_axes(-1, -2)?, None, indices, sorted),
        }
    }

    /// Quantizes a float layer in place, each expert's rows in groups along the input (mlx-lm's
    /// `SwitchLinear.to_quantized`); scales and biases keep the weight's dtype.
    pub fn quantize(&mut self, q: Quant) -> Result<(), Exception> {
        if self.quant.is_some() {
            return Ok(());
        }
        let dtype = self.weight.dtype();
        let (w, s, b) = q.quantize(&self.weight)?;
        *self.weight = w;
        *self.scales = Some(s.as_dtype(dtype)?);
        *self.biases = Some(b.as_dtype(dtype)?);
        self.quant = Some(q);
        Ok(())
    }
}

/// SwiGLU experts: down(silu(gate(x)) · up(x)) with each token's chosen experts.
#[derive(Debug, Clone, ModuleParameters)]
pub struct SwitchGlu {
    #[param]
    pub gate_proj: SwitchLinear,
    #[param]
    pub up_proj: SwitchLinear,
    #[param]
    pub down_proj: SwitchLinear,
}

/// Token-expert pairs from which they are sorted by expert (mlx-lm's threshold).
const SORT_FROM: usize = 64;

impl SwitchGlu {
    pub fn placeholder(experts: i32, hidden: i32, intermediate: i32, quant: &dyn Fn(&str, i32) -> Option<Quant>, dtype: Dtype) -> Result<Self, Exception> {
        Ok(SwitchGlu {
            gate_proj: SwitchLinear::placeholder(experts, hidden, intermediate, quant("gate_proj", hidden), dtype)?,
            up_proj: SwitchLinear::placeholder(experts, hidden, intermediate, quant("up_proj", hidden), dtype)?,
            down_proj: SwitchLinear::placeholder(experts, intermediate, hidden, quant("down_proj", intermediate), dtype)?,
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
        // Activations as plain ops (mlx-rs's nn::silu compiles a closure per call).
        let activated = gate.multiply(ops::sigmoid(&gate)?)?.multiply(&up)?;
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

/// How a sparse block routes: top-k of the softmax over the router's logits, renormalized or not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Routing {
    pub experts: i32,
    pub top_k: i32,
    /// Divide the chosen experts' weights by their sum (Qwen3-MoE's `norm_topk_prob`).
    pub normalize: bool,
}

impl Routing {
    /// (expert indices [..., k], weights [..., k]) from router logits [..., experts]: softmax in float32
    /// (precise), the k largest, as mlx-lm's `Qwen3MoeSparseMoeBlock`.
    pub fn route(&self, logits: &Array) -> Result<(Array, Array), Exception> {
        let gates = ops::softmax_axis(logits, -1, true)?;
        let kth = self.experts - self.top_k;
        let inds = ops::argpartition_axis(&gates, kth, -1)?.index((.., .., kth..));
        let inds = mlx_rs::stop_gradient(&inds)?;
        let mut scores = gates.take_along_axis(&inds, -1)?;
        if self.normalize {
            scores = scores.divide(scores.sum_axis(-1, true)?)?;
        }
        Ok((inds, scores))
    }
}
