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
    /// YaRN (gpt-oss, DeepSeek): high frequencies kept, low ones interpolated by `factor`, a linear ramp
    /// between the dimensions that turn `beta_fast` and `beta_slow` times over the original context, and q
    /// and k scaled by mscale = get(factor, mscale) / get(factor, mscale_all_dim), get(s, m) = 0.1·m·ln s + 1
    /// (or `attention_factor` when the config gives it). `truncate` rounds the ramp's ends to whole
    /// dimensions (transformers' default; gpt-oss sets it false).
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        mscale: f64,
        mscale_all_dim: f64,
        attention_factor: Option<f64>,
        truncate: bool,
    },
}

/// YaRN's per-pair periods and q/k scale for `dims` rotated features (transformers'
/// `_compute_yarn_parameters`, in float32 as mlx-lm computes them).
fn yarn(dims: i32, base: f64, scaling: &RopeScaling) -> (Vec<f32>, f32) {
    let RopeScaling::Yarn { factor, original_max_position_embeddings: old, beta_fast, beta_slow, mscale, mscale_all_dim, attention_factor, truncate } =
        *scaling
    else {
        return (Vec::new(), 1.0);
    };
    let d = f64::from(dims);
    // The dimension whose pair turns `rotations` times over the original context.
    let dim_of = |rotations: f64| d * (old / (rotations * 2.0 * PI)).ln() / (2.0 * base.ln());
    let (mut low, mut high) = (dim_of(beta_fast), dim_of(beta_slow));
    if truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, high) = (low.max(0.0), high.min(d - 1.0));
    let high = if low == high { high + 0.001 } else { high };
    let get = |s: f64, m: f64| if s <= 1.0 { 1.0 } else { 0.1 * m * s.ln() + 1.0 };
    let scale = attention_factor.unwrap_or_else(|| get(factor, mscale) / get(factor, mscale_all_dim));
    let periods = (0..dims / 2)
        .map(|i| {
            let extra = (base as f32).powf(2.0 * i as f32 / dims as f32);
            let inter = factor as f32 * extra;
            // 1 for the high-frequency pairs kept as they are, 0 for the interpolated ones.
            let keep = 1.0 - ((i as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0);
            inter * extra / (inter * keep + extra * (1.0 - keep))
        })
        .collect();
    (periods, scale as f32)
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
            RopeScaling::Yarn { .. } => {
                let (periods, mscale) = yarn(dims, base, scaling);
                Rope { dims, base: base as f32, scale: 1.0, periods: Some(Array::from_slice(&periods, &[dims / 2])), mscale }
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
        self.forward_shifted(x, offset, &[])
    }

    /// As [`Rope::forward`], row b's positions starting at `offset + shifts[b]` (empty: no shifts).
    pub fn forward_shifted(&self, x: &Array, offset: i32, shifts: &[i32]) -> Result<Array, Exception> {
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
        if !shifts.is_empty() {
            let starts: Vec<i32> = shifts.iter().map(|s| offset + s).collect();
            let starts = Array::from_slice(&starts, &[starts.len() as i32]);
            return match &self.periods {
                Some(periods) => fast::rope_dynamic(x, self.dims, false, None, self.scale, &starts, periods),
                None => fast::rope_dynamic(x, self.dims, false, self.base, self.scale, &starts, None),
            };
        }
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
    fn yarn_periods_and_scale_match_hand_computed_values() {
        // dims 16, base 10000, factor 4, original context 64, betas 32 / 1. The pair turning r times:
        // 16·ln(64 / 2πr) / (2 ln 10000): r = 32 → −0.9943, r = 1 → 2.0160. Truncated: ramp over [0, 3];
        // not: over [0, 2.0160] (the low end clamped at 0).
        let scaling = |truncate| RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 64.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: 1.0,
            mscale_all_dim: 0.0,
            attention_factor: None,
            truncate,
        };
        let base = |i: usize| 10000f64.powf(2.0 * i as f64 / 16.0);
        for (truncate, high) in [(true, 3.0), (false, 2.016_0)] {
            let (periods, mscale) = yarn(16, 10000.0, &scaling(truncate));
            // 0.1·ln 4 + 1, over get(4, 0) = 1.
            assert!((mscale - 1.138_629).abs() < 1e-6, "{mscale}");
            for (i, p) in periods.iter().enumerate() {
                let keep = 1.0 - (i as f64 / high).clamp(0.0, 1.0);
                // period = 4·b / (4·keep + (1 − keep)): b at keep = 1, 4b at keep = 0.
                let want = 4.0 * base(i) / (4.0 * keep + 1.0 - keep);
                assert!((f64::from(*p) / want - 1.0).abs() < 2e-4, "truncate {truncate}, pair {i}: {p} vs {want}");
            }
        }
        // The scale multiplies q and k before rotation.
        let x: Vec<f32> = (0..16).map(|i| i as f32 / 8.0 - 1.0).collect();
        let rope = Rope::new(16, 10000.0, &scaling(true));
        let y = rope.forward(&Array::from_slice(&x, &[1, 1, 1, 16]), 0).unwrap();
        for (g, e) in y.as_slice::<f32>().iter().zip(&x) {
            assert!((g - e * 1.138_629).abs() < 1e-5, "{g} vs {e}");
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
