use mlx_rs::{error::Exception, macros::ModuleParameters, module::Param, Array, Dtype};

use super::{quant, Quant};

/// Token embeddings, optionally quantized like mlx-lm's `QuantizedEmbedding`. Doubles as the output projection
/// when the checkpoint ties them.
#[derive(Debug, Clone, ModuleParameters)]
pub struct Embedding {
    #[param]
    pub weight: Param<Array>,
    #[param]
    pub scales: Param<Option<Array>>,
    #[param]
    pub biases: Param<Option<Array>>,
    pub quant: Option<Quant>,
    pub dims: i32,
    /// What quantized rows come back as (microscaling scales carry no float dtype).
    pub dtype: Dtype,
}

impl Embedding {
    pub fn placeholder(vocab: i32, dims: i32, quant: Option<Quant>, dtype: Dtype) -> Result<Self, Exception> {
        let (weight, scales, biases) = quant::placeholder_matrix(vocab, dims, quant, dtype)?;
        Ok(Embedding { weight: Param::new(weight), scales: Param::new(scales), biases: Param::new(biases), quant, dims, dtype })
    }

    /// Rows for `ids` (any shape) → ids.shape + [dims].
    pub fn forward(&self, ids: &Array) -> Result<Array, Exception> {
        match (&self.quant, &*self.scales) {
            (Some(q), Some(s)) => {
                let rows = |a: &Array| a.take_axis(ids, 0);
                let biases = (*self.biases).as_ref().map(rows).transpose()?;
                q.dequantize(&rows(&self.weight)?, &rows(s)?, biases.as_ref(), self.dtype)
            }
            _ => self.weight.take_axis(ids, 0),
        }
    }

    /// x Eᵀ: logits over the vocabulary for tied embeddings.
    pub fn as_linear(&self, x: &Array) -> Result<Array, Exception> {
        quant::matmul_t(x, &self.weight, (*self.scales).as_ref(), (*self.biases).as_ref(), self.quant)
    }

    /// Makes quantized embeddings float (`dtype`) in place.
    pub fn dequantize(&mut self, dtype: Dtype) -> Result<(), Exception> {
        quant::dequantize_in_place(&mut self.quant, &mut self.weight, &mut self.scales, &mut self.biases, dtype)
    }

    pub fn quantize(&mut self, q: Quant) -> Result<(), Exception> {
        if self.quant.is_none() {
            quant::quantize_in_place(q, &mut self.weight, &mut self.scales, &mut self.biases)?;
            self.quant = Some(q);
        }
        Ok(())
    }
}
