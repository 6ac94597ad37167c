//! The layers adapters attach to, seen alike by the LoRA code: a linear layer (one matrix) or a switch
//! layer (one matrix per expert).

use mlx_rs::{error::Exception, Array, Dtype};

use super::{Adapter, AdapterSpec, Linear, Quant, SwitchLinear};

pub enum AdaptedLayer<'a> {
    Linear(&'a mut Linear),
    Switch(&'a mut SwitchLinear),
}

impl AdaptedLayer<'_> {
    pub fn adapter(&self) -> Option<&Adapter> {
        match self {
            AdaptedLayer::Linear(l) => l.adapter.as_ref(),
            AdaptedLayer::Switch(s) => s.adapter.as_ref(),
        }
    }

    pub fn adapter_mut(&mut self) -> Option<&mut Adapter> {
        match self {
            AdaptedLayer::Linear(l) => l.adapter.as_mut(),
            AdaptedLayer::Switch(s) => s.adapter.as_mut(),
        }
    }

    pub fn add_adapter(&mut self, spec: AdapterSpec, key: &Array) -> Result<(), Exception> {
        match self {
            AdaptedLayer::Linear(l) => l.add_adapter(spec, key),
            AdaptedLayer::Switch(s) => s.add_adapter(spec, key),
        }
    }

    /// DoRA's magnitudes are present (linear layers only).
    pub fn dora(&self) -> bool {
        match self {
            AdaptedLayer::Linear(l) => l.m.is_some(),
            AdaptedLayer::Switch(_) => false,
        }
    }

    pub fn fuse(&mut self, dequantize: bool, compute: Dtype) -> Result<(), Exception> {
        match self {
            AdaptedLayer::Linear(l) => l.fuse(dequantize, compute),
            AdaptedLayer::Switch(s) => s.fuse(dequantize, compute),
        }
    }

    /// How the layer is quantized (None: float).
    pub fn quant(&self) -> Option<Quant> {
        match self {
            AdaptedLayer::Linear(l) => l.quant,
            AdaptedLayer::Switch(s) => s.quant,
        }
    }

    /// Input width: what a quantization group size must divide.
    pub fn in_dims(&self) -> i32 {
        match self {
            AdaptedLayer::Linear(l) => l.in_dims,
            AdaptedLayer::Switch(s) => s.in_dims,
        }
    }

    /// Quantizes a float layer in place (a quantized one is left as is).
    pub fn quantize(&mut self, q: Quant) -> Result<(), Exception> {
        match self {
            AdaptedLayer::Linear(l) => l.quantize(q),
            AdaptedLayer::Switch(s) => s.quantize(q),
        }
    }

    /// Makes a quantized layer float (`dtype`) in place.
    pub fn dequantize(&mut self, dtype: Dtype) -> Result<(), Exception> {
        match self {
            AdaptedLayer::Linear(l) => l.dequantize(dtype),
            AdaptedLayer::Switch(s) => s.dequantize(dtype),
        }
    }

    /// The sampling form's casts to evaluate (switch layers keep their one form).
    pub fn set_sampling(&mut self, dtype: Option<Dtype>) -> Result<Vec<Array>, Exception> {
        match self {
            AdaptedLayer::Linear(l) => Ok(l.set_sampling(dtype)?.map(|(a, b)| vec![a.clone(), b.clone()]).unwrap_or_default()),
            AdaptedLayer::Switch(_) => Ok(Vec::new()),
        }
    }

    /// Parameters counting quantized weights as the float matrices they stand for, adapters included.
    pub fn float_count(&self) -> usize {
        let size = |p: &Option<Array>| p.as_ref().map_or(0, Array::size);
        match self {
            AdaptedLayer::Linear(l) => (l.in_dims * l.out_dims) as usize + size(&l.bias) + size(&l.lora_a) + size(&l.lora_b) + size(&l.m),
            AdaptedLayer::Switch(s) => (s.experts * s.in_dims * s.out_dims) as usize + size(&s.lora_a) + size(&s.lora_b),
        }
    }
}
