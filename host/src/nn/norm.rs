use mlx_rs::{error::Exception, fast, macros::ModuleParameters, module::Param, Array};

/// Root-mean-square normalization with a learned per-feature gain (`weight`).
#[derive(Debug, Clone, ModuleParameters)]
pub struct RmsNorm {
    #[param]
    pub weight: Param<Array>,
    pub eps: f32,
}

impl RmsNorm {
    pub fn new(dims: i32, eps: f32) -> Result<Self, Exception> {
        Ok(RmsNorm { weight: Param::new(Array::ones::<f32>(&[dims])?), eps })
    }

    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        fast::rms_norm(x, Some(&*self.weight), self.eps)
    }
}
