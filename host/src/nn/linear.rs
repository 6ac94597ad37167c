use mlx_rs::{error::Exception, macros::ModuleParameters, module::Param, Array, Dtype};

use super::{quant, Quant};

/// y = x Wᵀ (+ b). With `quant`, `weight` holds packed integers and `scales`/`biases` their groups' affine
/// parameters, exactly as mlx-lm writes quantized checkpoints.
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
    pub quant: Option<Quant>,
    pub in_dims: i32,
    pub out_dims: i32,
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
            quant,
            in_dims,
            out_dims,
        })
    }

    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        let y = quant::matmul_t(x, &self.weight, (*self.scales).as_ref(), (*self.biases).as_ref(), self.quant)?;
        match &*self.bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }

    /// The float weight, dequantized if needed.
    pub fn dense_weight(&self, dtype: Dtype) -> Result<Array, Exception> {
        match (&self.quant, &*self.scales, &*self.biases) {
            (Some(q), Some(s), Some(b)) => q.dequantize(&self.weight, s, b, dtype),
            _ => self.weight.as_dtype(dtype),
        }
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
