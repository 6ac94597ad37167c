use mlx_rs::{
    error::Exception,
    macros::ModuleParameters,
    module::{Param, Parameter},
    ops, random, Array, Dtype,
};

use super::{quant, Quant};

/// y = x Wᵀ (+ b). With `quant`, `weight` holds packed integers and `scales`/`biases` their groups' affine
/// parameters, exactly as mlx-lm writes quantized checkpoints. With an adapter, the low-rank update
/// `scale · (dropout(x) A) B` is added (LoRA), and with `m` the rows are renormalized to learned magnitudes
/// (DoRA); the parameter names are mlx-lm's (`lora_a`, `lora_b`, `m`), directly under the layer.
#[derive(Debug, Clone, ModuleParameters)]
pub struct Linear {
    #[param]
    pub weight: Param<Array>,
    #[param]
    pub bias: Param<Option<Array>>,
    #[param]
    pub scales: Param<Option<Array>>,
    #[param]
    pub biases: Param<Option<Array>>,
    /// [in, rank]
    #[param]
    pub lora_a: Param<Option<Array>>,
    /// [rank, out]
    #[param]
    pub lora_b: Param<Option<Array>>,
    /// DoRA's per-output-row magnitude, [out].
    #[param]
    pub m: Param<Option<Array>>,
    pub quant: Option<Quant>,
    pub in_dims: i32,
    pub out_dims: i32,
    pub adapter: Option<Adapter>,
}

/// ‖W_i‖₂ of each row i.
fn row_norms(w: &Array) -> Result<Array, Exception> {
    w.square()?.sum_axis(1, None)?.sqrt()
}

/// How an adapted layer applies its adapter.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub rank: i32,
    /// A plain multiplier of the update (mlx-lm's `scale`, not α/r).
    pub scale: f32,
    pub dropout: f32,
    /// Off: the layer computes its base output only (reference policy, adapter-free inference).
    pub enabled: bool,
    /// Key for this step's dropout mask; `None` outside training (no dropout).
    pub dropout_key: Option<Array>,
    /// While sampling: A and B in the compute dtype, so the update is `addmm(y, x A, B, scale)`, two kernels
    /// instead of the six of the training form (casts to and from float32, two products, scale, add), which
    /// on a GPU's one-token decode steps cost more than the base layer. Set by [`Linear::set_sampling`].
    pub sampling: Option<(Array, Array)>,
}

impl Adapter {
    /// The adapter's input: `x` with this step's dropout applied (kept entries scaled by 1/keep), or `x`.
    pub(super) fn dropped(&self, x: &Array) -> Result<Array, Exception> {
        match &self.dropout_key {
            Some(key) if self.dropout > 0.0 => {
                let keep = 1.0 - self.dropout;
                let mask = random::bernoulli(&Array::from_f32(keep), x.shape(), key)?;
                ops::select(&mask, &x.divide(Array::from_f32(keep).as_dtype(x.dtype())?)?, &Array::from_f32(0.0).as_dtype(x.dtype())?)
            }
            _ => Ok(x.clone()),
        }
    }
}

/// What [`Linear::add_adapter`] creates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdapterSpec {
    pub rank: i32,
    pub scale: f32,
    pub dropout: f32,
    pub dora: bool,
}

impl Linear {
    /// A layer of the given shape with placeholder parameters, to be replaced from a checkpoint.
    pub fn placeholder(in_dims: i32, out_dims: i32, bias: bool, quant: Option<Quant>, dtype: Dtype) -> Result<Self, Exception> {
        let (weight, scales, biases) = quant::placeholder_matrix(out_dims, in_dims, quant, dtype)?;
        let bias = if bias { Some(Array::zeros::<f32>(&[out_dims])?.as_dtype(dtype)?) } else { None };
        Ok(Linear {
            weight: Param::new(weight),
            bias: Param::new(bias),
            scales: Param::new(scales),
            biases: Param::new(biases),
            lora_a: Param::new(None),
            lora_b: Param::new(None),
            m: Param::new(None),
            quant,
            in_dims,
            out_dims,
            adapter: None,
        })
    }

    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        let y = quant::matmul_t(x, &self.weight, (*self.scales).as_ref(), (*self.biases).as_ref(), self.quant)?;
        let y = match (&self.adapter, &*self.lora_a, &*self.lora_b) {
            (Some(adapter), Some(a), Some(b)) if adapter.enabled => self.adapted(x, y, adapter, a, b)?,
            _ => y,
        };
        match &*self.bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }

    /// The base output `y` (no bias yet) plus the adapter's contribution.
    fn adapted(&self, x: &Array, y: Array, adapter: &Adapter, a: &Array, b: &Array) -> Result<Array, Exception> {
        if let Some((a, b)) = &adapter.sampling {
            return ops::addmm(&y, x.matmul(a)?, b, adapter.scale, 1.0);
        }
        // The product in the activations' dtype (A and B cast to it, their gradients cast back to float32),
        // as PyTorch autocast runs PEFT's adapters: over a bfloat16 base a float32 product would keep a
        // float32 copy of every adapted layer's input for the backward pass and run off the bf16 matmul path.
        let dtype = x.dtype();
        let (ca, cb) = if a.dtype() == dtype { (a.clone(), b.clone()) } else { (a.as_dtype(dtype)?, b.as_dtype(dtype)?) };
        let out = ops::addmm(&y, adapter.dropped(x)?.matmul(&ca)?, &cb, adapter.scale, 1.0)?;
        match &*self.m {
            Some(m) => {
                // DoRA: divide by the (constant) norm of the adapted rows, scale by the learned magnitude.
                let adapted = self.adapted_weight(adapter, a, b)?;
                let norm = mlx_rs::stop_gradient(&row_norms(&adapted)?)?;
                out.multiply(m.divide(&norm)?.as_dtype(x.dtype())?)
            }
            None => Ok(out),
        }
    }

    /// W + scale · Bᵀ Aᵀ, in the compute dtype.
    fn adapted_weight(&self, adapter: &Adapter, a: &Array, b: &Array) -> Result<Array, Exception> {
        let dtype = a.dtype();
        let update = b.t().multiply(Array::from_f32(adapter.scale))?.matmul(a.t())?;
        self.dense_weight(dtype)?.add(update)
    }

    /// Adds a fresh adapter (mlx-lm's initialisation: A ~ U(±1/√in), B = 0, so the layer's output is unchanged;
    /// DoRA's magnitude starts at the base rows' norms). Its parameters are trainable; the rest stays as it was.
    /// Adapter parameters are float32 whatever the model's dtype, as in mlx-lm: small updates survive, and an
    /// optimizer step (float32 learning rate) leaves their dtype, and a compiled step's state layout, unchanged.
    pub fn add_adapter(&mut self, spec: AdapterSpec, key: &Array) -> Result<(), Exception> {
        let dtype = Dtype::Float32;
        let bound = 1.0 / (self.in_dims as f32).sqrt();
        let a = random::uniform::<_, f32>(-bound, bound, &[self.in_dims, spec.rank], key)?;
        let b = Array::zeros::<f32>(&[spec.rank, self.out_dims])?;
        self.lora_a = Param::new(Some(a));
        self.lora_b = Param::new(Some(b));
        self.m = Param::new(if spec.dora {
            Some(row_norms(&self.dense_weight(dtype)?)?)
        } else {
            None
        });
        for p in [&mut self.lora_a, &mut self.lora_b, &mut self.m] {
            p.unfreeze(false);
        }
        self.adapter = Some(Adapter { rank: spec.rank, scale: spec.scale, dropout: spec.dropout, enabled: true, dropout_key: None, sampling: None });
        Ok(())
    }

    /// Switches the adapter's sampling form on (A and B cast to `dtype`, lazily: the caller evaluates) or off,
    /// and returns the arrays it now holds. DoRA layers keep their one form: the magnitude renormalization
    /// needs the adapted weight anyway.
    pub fn set_sampling(&mut self, dtype: Option<Dtype>) -> Result<Option<&(Array, Array)>, Exception> {
        let form = match (dtype, &*self.lora_a, &*self.lora_b, &*self.m) {
            (Some(dtype), Some(a), Some(b), None) => Some((a.as_dtype(dtype)?, b.as_dtype(dtype)?)),
            _ => None,
        };
        Ok(match &mut self.adapter {
            Some(adapter) => {
                adapter.sampling = form;
                adapter.sampling.as_ref()
            }
            None => None,
        })
    }

    /// Merges the adapter into the weight (mlx-lm's `fuse`): a float layer stays float; a quantized one is
    /// re-quantized with its own settings (mode included) unless `dequantize`. The layer has no adapter afterwards.
    pub fn fuse(&mut self, dequantize: bool, compute: Dtype) -> Result<(), Exception> {
        let (Some(adapter), Some(a), Some(b)) = (self.adapter.take(), (*self.lora_a).clone(), (*self.lora_b).clone()) else {
            return Ok(());
        };
        // A quantized weight comes back in the model's compute dtype (microscaling scales are 8-bit codes).
        let dtype = if self.quant.is_some() { compute } else { self.weight.dtype() };
        let mut fused = self.adapted_weight(&adapter, &a, &b)?;
        if let Some(m) = &*self.m {
            let norm = row_norms(&fused)?;
            fused = fused.multiply(m.divide(&norm)?.expand_dims(1)?)?;
        }
        let quant = self.quant;
        *self.weight = fused.as_dtype(dtype)?;
        *self.scales = None;
        *self.biases = None;
        self.quant = None;
        *self.lora_a = None;
        *self.lora_b = None;
        *self.m = None;
        if let (Some(q), false) = (quant, dequantize) {
            self.quantize(q)?;
        }
        Ok(())
    }

    /// The float weight, dequantized if needed.
    pub fn dense_weight(&self, dtype: Dtype) -> Result<Array, Exception> {
        quant::dense(&self.weight, (*self.scales).as_ref(), (*self.biases).as_ref(), self.quant, dtype)
    }

    /// Makes a quantized layer float (`dtype`) in place.
    pub fn dequantize(&mut self, dtype: Dtype) -> Result<(), Exception> {
        quant::dequantize_in_place(&mut self.quant, &mut self.weight, &mut self.scales, &mut self.biases, dtype)
    }

    /// Quantizes a float layer in place (an already quantized one is left as is).
    pub fn quantize(&mut self, q: Quant) -> Result<(), Exception> {
        if self.quant.is_none() {
            quant::quantize_in_place(q, &mut self.weight, &mut self.scales, &mut self.biases)?;
            self.quant = Some(q);
        }
        Ok(())
    }
}
