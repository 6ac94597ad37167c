use serde::Deserialize;
use sdk::{from_table, register_schedule, LrSchedule, Plugin, PluginError, ScheduleContext};

use crate::{non_zero, positive};

/// The configured rate throughout.
pub struct Constant;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoKeys {}

impl Plugin for Constant {
    const NAME: &'static str = "constant";
    const SUMMARY: &'static str = "the optimizer's lr throughout";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        from_table::<NoKeys>(config)?;
        Ok(Constant)
    }
}

impl LrSchedule for Constant {
    fn lr(&self, _step: u64, ctx: &ScheduleContext) -> Result<f64, PluginError> {
        Ok(ctx.base_lr)
    }
}

register_schedule!(Constant);

/// Multiplies the rate by `gamma` every `step_size` steps.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    step_size: u64,
    #[serde(default = "Step::default_gamma")]
    gamma: f64,
}

impl Step {
    fn default_gamma() -> f64 {
        0.1
    }
}

impl Plugin for Step {
    const NAME: &'static str = "step";
    const SUMMARY: &'static str = "lr × gamma every step_size steps";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let s: Step = from_table(config)?;
        non_zero(s.step_size, "step_size")?;
        positive(s.gamma, "gamma")?;
        Ok(s)
    }
}

impl LrSchedule for Step {
    fn lr(&self, step: u64, ctx: &ScheduleContext) -> Result<f64, PluginError> {
        Ok(ctx.base_lr * self.gamma.powf((step / self.step_size) as f64))
    }
}

register_schedule!(Step);

/// Decays the rate by `decay_rate` every `decay_steps` steps, continuously.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exponential {
    decay_rate: f64,
    #[serde(default = "Exponential::default_decay_steps")]
    decay_steps: u64,
}

impl Exponential {
    fn default_decay_steps() -> u64 {
        1
    }
}

impl Plugin for Exponential {
    const NAME: &'static str = "exponential";
    const SUMMARY: &'static str = "lr × decay_rate^(step / decay_steps)";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let e: Exponential = from_table(config)?;
        positive(e.decay_rate, "decay_rate")?;
        non_zero(e.decay_steps, "decay_steps")?;
        Ok(e)
    }
}

impl LrSchedule for Exponential {
    fn lr(&self, step: u64, ctx: &ScheduleContext) -> Result<f64, PluginError> {
        Ok(ctx.base_lr * self.decay_rate.powf(step as f64 / self.decay_steps as f64))
    }
}

register_schedule!(Exponential);
