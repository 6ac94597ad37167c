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
}

/// Rotary position embedding over the first `dims` features of each head (non-traditional: pairs (i, i+d/2)).
#[derive(Debug, Clone)]
pub struct Rope {
    dims: i32,
    base: f32,
    scale: f32,
    /// Per-pair periods (angle = position / period) when the scaling is frequency-dependent.
    periods: Option<Array>,
}

impl Rope {
    pub fn new(dims: i32, base: f64, scaling: &RopeScaling) -> Self {
        match scaling {
            RopeScaling::None => Rope { dims, base: base as f32, scale: 1.0, periods: None },
            RopeScaling::Linear { factor } => Rope { dims, base: base as f32, scale: (1.0 / factor) as f32, periods: None },
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
                Rope { dims, base: base as f32, scale: 1.0, periods: Some(Array::from_slice(&periods, &[dims / 2])) }
            }
        }
    }

    /// x: [B, H, L, D]; positions start at `offset`.
    pub fn forward(&self, x: &Array, offset: i32) -> Result<Array, Exception> {
        match &self.periods {
            Some(periods) => fast::rope(x, self.dims, false, None, self.scale, offset, periods),
            None => fast::rope(x, self.dims, false, self.base, self.scale, offset, None),
        }
    }
}
