use mlx_rs::{error::Exception, ops, Array};

/// cap·tanh(x/cap): values bounded smoothly by ±cap (Gemma 2's attention and logit soft-capping), with the
/// cap in x's dtype.
pub fn softcap(x: &Array, cap: f32) -> Result<Array, Exception> {
    let c = Array::from_f32(cap).as_dtype(x.dtype())?;
    ops::tanh(&x.divide(&c)?)?.multiply(&c)
}
