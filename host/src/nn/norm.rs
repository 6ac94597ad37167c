use mlx_rs::{error::Exception, fast, macros::ModuleParameters, module::Param, Array};

/// Root-mean-square normalization with a learned per-feature gain: `weight`, or `1 + weight` when the
/// checkpoint stores the gain's offset from 1 (Gemma), so parameters keep their checkpoint values.
#[derive(Debug, Clone, ModuleParameters)]
pub struct RmsNorm {
    #[param]
    pub weight: Param<Array>,
    pub eps: f32,
    pub plus_one: bool,
}

impl RmsNorm {
    pub fn new(dims: i32, eps: f32) -> Result<Self, Exception> {
        Ok(RmsNorm { weight: Param::new(Array::ones::<f32>(&[dims])?), eps, plus_one: false })
    }

    /// A norm whose gain is `1 + weight`.
    pub fn offset(dims: i32, eps: f32) -> Result<Self, Exception> {
        Ok(RmsNorm { weight: Param::new(Array::zeros::<f32>(&[dims])?), eps, plus_one: true })
    }

    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        if self.plus_one {
            // As mlx-lm: the gain 1 + w in the weight's dtype.
            let gain = self.weight.add(Array::from_f32(1.0).as_dtype(self.weight.dtype())?)?;
            return fast::rms_norm(x, Some(&gain), self.eps);
        }
        fast::rms_norm(x, Some(&*self.weight), self.eps)
    }
}
