use std::f64::consts::PI;

use mlx_rs::{error::Exception, fast, Array};

/// How a checkpoint stretches RoPE beyond its training context (`rope_scaling` in config.json).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
    /// Phi-3's LongRoPE ("su"): per-pair periods stretched by `factors`, and the rotated features of q and k
    /// multiplied by `mscale` (so scores by mscale²).
    LongRope { factors: Vec<f64>, mscale: f64 },
}

/// Rotary position embedding over the first `dims` features of each head (non-traditional: pairs (i, i+d/2)).
#[derive(Debug, Clone)]
pub struct Rope {
    dims: i32,
    base: f32,
    scale: f32,
    /// Per-pair periods (angle = position / period) when the scaling is frequency-dependent.
    periods: Option<Array>,
    /// Factor on the rotated features before rotation (LongRoPE's attention scaling).
    mscale: f32,
}

impl Rope {
    pub fn new(dims: i32, base: f64, scaling: &RopeScaling) -> Self {
        match scaling {
            RopeScaling::None => Rope { dims, base: base as f32, scale: 1.0, periods: None, mscale: 1.0 },
            RopeScaling::Linear { factor } => Rope { dims, base: base as f32, scale: (1.0 / factor) as f32, periods: None, mscale: 1.0 },
            RopeScaling::LongRope { factors, mscale } => {
                // As mlx-lm: the base periods in float32, then times the factors.
                let periods: Vec<f32> =
                    (0..dims / 2).map(|i| factors[i as usize] as f32 * (base as f32).powf(2.0 * i as f32 / dims as f32)).collect();
                Rope { dims, base: base as f32, scale: 1.0, periods: Some(Array::from_slice(&periods, &[dims / 2])), mscale: *mscale as f32 }
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: old } => {
                let periods: Vec<f32> = (0..dims / 2)
                    .map(|i| {
                        let period = base.powf(2.0 * f64::from(i) / f64::from(dims));
                        let wavelen = 2.0 * PI * period;
                        let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                        let scaled = if wavelen > low_wavelen {
                            period * factor
                        } else if wavelen > high_wavelen && wavelen < low_wavelen {
                            // Between the two: interpolate smoothly between scaled and unscaled.
                            let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            period / ((1.0 - smooth) / factor + smooth)
                        } else {
                            period
                        };
                        scaled as f32
                    })
                    .collect();
                Rope { dims, base: base as f32, scale: 1.0, periods: Some(Array::from_slice(&periods, &[dims / 2])), mscale: 1.0 }
            }
        }
    }

    /// x: [B, H, L, D]; positions start at `offset`.
    pub fn forward(&self, x: &Array, offset: i32) -> Result<Array, Exception> {
        let scaled;
        let x = if self.mscale == 1.0 {
            x
        } else {
            let m = Array::from_f32(self.mscale).as_dtype(x.dtype())?;
            let d = x.shape()[x.ndim() - 1];
            scaled = if self.dims == d {
                x.multiply(&m)?
            } else {
                use mlx_rs::ops::indexing::IndexOp;
                mlx_rs::ops::concatenate(&[x.index((.., .., .., ..self.dims)).multiply(&m)?, x.index((.., .., .., self.dims..))], -1)?
            };
            &scaled
        };
        match &self.periods {
            Some(periods) => fast::rope(x, self.dims, false, None, self.scale, offset, periods),
            None => fast::rope(x, self.dims, false, self.base, self.scale, offset, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Non-traditional RoPE by hand: pairs (i, i + d/2) rotated by position / period_i.
    fn by_hand(x: &[f32], len: usize, d: usize, offset: usize, period: impl Fn(usize) -> f64) -> Vec<f64> {
        let mut out = vec![0.0; len * d];
        for p in 0..len {
            for i in 0..d / 2 {
                let theta = (p + offset) as f64 / period(i);
                let (a, b) = (f64::from(x[p * d + i]), f64::from(x[p * d + i + d / 2]));
                out[p * d + i] = a * theta.cos() - b * theta.sin();
                out[p * d + i + d / 2] = a * theta.sin() + b * theta.cos();
            }
        }
        out
    }

    fn check(scaling: RopeScaling, period: impl Fn(usize) -> f64) {
        let (len, d, offset) = (6usize, 16usize, 300usize);
        let x: Vec<f32> = (0..len * d).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect();
        let rope = Rope::new(d as i32, 10000.0, &scaling);
        let y = rope.forward(&Array::from_slice(&x, &[1, 1, len as i32, d as i32]), offset as i32).unwrap();
        let expected = by_hand(&x, len, d, offset, period);
        for (g, e) in y.as_slice::<f32>().iter().zip(&expected) {
            assert!((f64::from(*g) - e).abs() < 2e-4, "{scaling:?}: {g} vs {e}");
        }
    }

    #[test]
    fn plain_linear_and_llama3_scaling_match_their_formulas() {
        let base = |i: usize| 10000f64.powf(2.0 * i as f64 / 16.0);
        check(RopeScaling::None, base);
        check(RopeScaling::Linear { factor: 4.0 }, |i| base(i) * 4.0);
        // Llama 3.1 with a short original context (64) so all three regions occur among 8 frequencies.
        let (factor, low, high, old) = (8.0, 1.0, 4.0, 64.0);
        check(
            RopeScaling::Llama3 { factor, low_freq_factor: low, high_freq_factor: high, original_max_position_embeddings: old },
            |i| {
                let p = base(i);
                let wavelen = 2.0 * PI * p;
                if wavelen > old / low {
                    p * factor
                } else if wavelen > old / high {
                    let smooth = (old / wavelen - low) / (high - low);
                    p / ((1.0 - smooth) / factor + smooth)
                } else {
                    p
                }
            },
        );
    }
}
