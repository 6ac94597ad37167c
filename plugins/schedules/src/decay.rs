use std::f64::consts::PI;

use serde::Deserialize;
use sdk::{from_table, register_schedule, LrSchedule, Plugin, PluginError, ScheduleContext};

use crate::{decay_span, non_zero};

fn cosine_between(high: f64, low: f64, progress: f64) -> f64 {
    low + (high - low) * 0.5 * (1.0 + (PI * progress).cos())
}

/// Linear decay to `end_lr` over `decay_steps`, then constant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Linear {
    #[serde(default)]
    end_lr: f64,
    decay_steps: Option<u64>,
}

impl Plugin for Linear {
    const NAME: &'static str = "linear";
    const SUMMARY: &'static str = "linear decay from lr to end_lr over decay_steps (default: the whole run)";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let l: Linear = from_table(config)?;
        if let Some(d) = l.decay_steps {
            non_zero(d, "decay_steps")?;
        }
        Ok(l)
    }
}

impl LrSchedule for Linear {
    fn lr(&self, step: u64, ctx: &ScheduleContext) -> Result<f64, PluginError> {
        let span = decay_span(self.decay_steps, ctx, Self::NAME)?;
        let progress = step.min(span) as f64 / span as f64;
        Ok(ctx.base_lr + (self.end_lr - ctx.base_lr) * progress)
    }
}

register_schedule!(Linear);

/// Half-cosine decay to `min_lr` over `decay_steps`, then constant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cosine {
    #[serde(default)]
    min_lr: f64,
    decay_steps: Option<u64>,
}

impl Plugin for Cosine {
    const NAME: &'static str = "cosine";
    const SUMMARY: &'static str = "cosine decay from lr to min_lr over decay_steps (default: the whole run)";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let c: Cosine = from_table(config)?;
        if let Some(d) = c.decay_steps {
            non_zero(d, "decay_steps")?;
        }
        Ok(c)
    }
}

impl LrSchedule for Cosine {
    fn lr(&self, step: u64, ctx: &ScheduleContext) -> Result<f64, PluginError> {
        let span = decay_span(self.decay_steps, ctx, Self::NAME)?;
        Ok(cosine_between(ctx.base_lr, self.min_lr, step.min(span) as f64 / span as f64))
    }
}

register_schedule!(Cosine);

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DecayShape {
    Linear,
    Cosine,
    Sqrt,
}

/// Warmup-stable-decay: the configured rate until the last `decay_steps`, then a decay to `min_lr`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wsd {
    decay_steps: Option<u64>,
    decay_ratio: Option<f64>,
    #[serde(default)]
    min_lr: f64,
    #[serde(default = "Wsd::default_shape")]
    decay_shape: DecayShape,
}

impl Wsd {
    fn default_shape() -> DecayShape {
        DecayShape::Linear
    }

    fn span(&self, ctx: &ScheduleContext) -> Result<u64, PluginError> {
        match (self.decay_steps, self.decay_ratio) {
            (Some(steps), _) => Ok(steps),
            (None, ratio) => {
                let steps = (ctx.total_steps as f64 * ratio.unwrap_or(0.1)).round() as u64;
                decay_span(Some(steps.max(1)), ctx, Self::NAME)
            }
        }
    }
}

impl Plugin for Wsd {
    const NAME: &'static str = "wsd";
    const SUMMARY: &'static str = "warmup-stable-decay: lr until the last decay_steps (or decay_ratio), then decay to min_lr";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let w: Wsd = from_table(config)?;
        if w.decay_steps.is_some() && w.decay_ratio.is_some() {
            return Err(PluginError::Config("set either `decay_steps` or `decay_ratio`, not both".to_owned()));
        }
        if let Some(d) = w.decay_steps {
            non_zero(d, "decay_steps")?;
        }
        if let Some(r) = w.decay_ratio {
            if !(r > 0.0 && r <= 1.0) {
                return Err(PluginError::Config(format!("`decay_ratio` must be in (0, 1], got {r}")));
            }
        }
        Ok(w)
    }
}

impl LrSchedule for Wsd {
    fn lr(&self, step: u64, ctx: &ScheduleContext) -> Result<f64, PluginError> {
        let span = self.span(ctx)?;
        let decay_start = ctx.total_steps.saturating_sub(span);
        if step < decay_start {
            return Ok(ctx.base_lr);
        }
        let progress = ((step - decay_start) as f64 / span as f64).min(1.0);
        let (high, low) = (ctx.base_lr, self.min_lr);
        Ok(match self.decay_shape {
            DecayShape::Linear => high - (high - low) * progress,
            DecayShape::Cosine => cosine_between(high, low, progress),
            DecayShape::Sqrt => high - (high - low) * progress.sqrt(),
        })
    }
}

register_schedule!(Wsd);
