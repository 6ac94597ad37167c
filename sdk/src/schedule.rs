//! Learning-rate schedules: a pure function of the optimizer step.

use crate::PluginError;

/// What a schedule may depend on besides the step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleContext {
    /// The optimizer's configured learning rate (`[optimizer] lr`): the peak most schedules start from.
    pub base_lr: f64,
    /// Optimizer steps this schedule spans (after any warmup).
    pub total_steps: u64,
}

/// A learning-rate schedule. The host asks for the rate before every optimizer step and writes it into the
/// optimizer's learning-rate array, so a compiled training step is not retraced when it changes.
pub trait LrSchedule {
    /// The learning rate at optimizer step `step`, counted from 0.
    fn lr(&self, step: u64, ctx: &ScheduleContext) -> Result<f64, PluginError>;
}

/// Linear warmup in front of any schedule (mlx-lm's `warmup`/`warmup_init`): the rate rises linearly from
/// `init` at step 0 to the wrapped schedule's first rate at step `steps`; from there the wrapped schedule
/// runs from its own step 0 over the remaining `total_steps − steps` steps.
pub struct Warmup<S> {
    pub inner: S,
    pub steps: u64,
    pub init: f64,
}

impl<S: LrSchedule> Warmup<S> {
    fn inner_ctx(&self, ctx: &ScheduleContext) -> ScheduleContext {
        ScheduleContext { total_steps: ctx.total_steps.saturating_sub(self.steps), ..*ctx }
    }
}

impl<S: LrSchedule> LrSchedule for Warmup<S> {
    fn lr(&self, step: u64, ctx: &ScheduleContext) -> Result<f64, PluginError> {
        let inner_ctx = self.inner_ctx(ctx);
        if step >= self.steps {
            return self.inner.lr(step - self.steps, &inner_ctx);
        }
        let peak = self.inner.lr(0, &inner_ctx)?;
        Ok(self.init + (peak - self.init) * step as f64 / self.steps as f64)
    }
}

impl LrSchedule for Box<dyn LrSchedule> {
    fn lr(&self, step: u64, ctx: &ScheduleContext) -> Result<f64, PluginError> {
        (**self).lr(step, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Halving;
    impl LrSchedule for Halving {
        fn lr(&self, step: u64, ctx: &ScheduleContext) -> Result<f64, PluginError> {
            // Records total_steps in the value so the test sees the context the wrapper passes on.
            Ok(ctx.base_lr * 0.5f64.powi(step as i32) + ctx.total_steps as f64 * 1e-9)
        }
    }

    #[test]
    fn warmup_rises_linearly_then_hands_over_at_inner_step_zero() {
        let ctx = ScheduleContext { base_lr: 1.0, total_steps: 14 };
        let w = Warmup { inner: Halving, steps: 4, init: 0.2 };
        let peak = 1.0 + 10.0 * 1e-9; // inner sees total_steps 14 − 4 = 10
        let at = |s| w.lr(s, &ctx).unwrap();
        assert!((at(0) - 0.2).abs() < 1e-12);
        assert!((at(1) - (0.2 + (peak - 0.2) * 0.25)).abs() < 1e-12);
        assert!((at(3) - (0.2 + (peak - 0.2) * 0.75)).abs() < 1e-12);
        assert!((at(4) - peak).abs() < 1e-12);
        assert!((at(6) - (0.25 + 10.0 * 1e-9)).abs() < 1e-12);
    }
}
