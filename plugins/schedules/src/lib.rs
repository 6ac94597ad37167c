//! Built-in learning-rate schedules. Each is a pure function of the step, the optimizer's configured rate
//! (`base_lr`) and the number of steps it spans (`total_steps`, the run's steps minus any warmup, which the
//! host applies to every schedule: `[schedule] warmup_steps`, `warmup_init`).
//!
//! | kind | rate at step s | keys |
//! |---|---|---|
//! | `constant` | base | — |
//! | `linear` | base + (end − base)·min(s, D)/D | `end_lr` (0), `decay_steps` D (total) |
//! | `cosine` | min + (base − min)·½(1 + cos(π·min(s, D)/D)) | `min_lr` (0), `decay_steps` D (total) |
//! | `step` | base·γ^⌊s/k⌋ | `step_size` k (required), `gamma` γ (0.1) |
//! | `exponential` | base·r^(s/k) | `decay_rate` r (required), `decay_steps` k (1) |
//! | `wsd` | base until total − D, then decays to `min_lr` over D steps | `decay_steps` D or `decay_ratio` (0.1), `min_lr` (0), `decay_shape` (`linear`, `cosine`, `sqrt`) |
//!
//! `wsd` is warmup-stable-decay (MiniCPM, arXiv:2404.06395); its warmup is the generic `warmup_steps`.

mod decay;
mod piecewise;

pub use decay::{Cosine, Linear, Wsd};
pub use piecewise::{Constant, Exponential, Step};

use sdk::{PluginError, ScheduleContext};

/// The span of a decay: `decay_steps` if set, else the schedule's whole span.
fn decay_span(decay_steps: Option<u64>, ctx: &ScheduleContext, kind: &str) -> Result<u64, PluginError> {
    match decay_steps.unwrap_or(ctx.total_steps) {
        0 => Err(PluginError::Invalid(format!(
            "{kind}: nothing to decay over (decay_steps unset and the run has no steps after warmup)"
        ))),
        span => Ok(span),
    }
}

fn positive(value: f64, key: &str) -> Result<f64, PluginError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(PluginError::Config(format!("`{key}` must be a positive number, got {value}")))
    }
}

fn non_zero(value: u64, key: &str) -> Result<u64, PluginError> {
    if value == 0 {
        Err(PluginError::Config(format!("`{key}` must be at least 1")))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests;
