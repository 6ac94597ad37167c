//! The learning rate as state of the compiled training step.
//!
//! mlx-rs optimizers keep `lr` in a field that is not part of their compile state (`Updatable` projects only
//! the moment estimates), so a compiled step captures whatever array `lr` held when it was traced: writing a
//! new value afterwards changes nothing, silently. [`LearningRate`] is compile state instead; the step copies
//! it into the optimizer before updating, so each call sees the schedule's current value with no retrace.

use mlx_rs::{
    error::{Exception, StateProjectionError},
    optimizers::{Adam, AdamW},
    utils::{StateProjection, Updatable},
    Array,
};

/// The current learning rate, an input of the compiled step (and its value, for optimizers that cannot take
/// an array).
pub struct LearningRate(pub Array, f64);

impl LearningRate {
    pub fn new(lr: f64) -> Self {
        LearningRate(Array::from_f32(lr as f32), lr)
    }

    /// Sets the value the next step uses.
    pub fn set(&mut self, lr: f64) {
        self.0 = Array::from_f32(lr as f32);
        self.1 = lr;
    }

    pub fn value(&self) -> f64 {
        self.1
    }
}

impl Updatable for LearningRate {
    fn state_projection(&mut self) -> Result<StateProjection<'_>, StateProjectionError> {
        let mut projection = StateProjection::new();
        projection.required("lr", &mut self.0)?;
        Ok(projection)
    }
}

/// Optimizers whose learning rate is an array, so it can come from [`LearningRate`] inside a compiled step.
pub trait ScheduledOptimizer {
    /// Called inside the step, before `update`.
    fn use_lr(&mut self, lr: &LearningRate) -> Result<(), Exception>;
}

impl ScheduledOptimizer for AdamW {
    fn use_lr(&mut self, lr: &LearningRate) -> Result<(), Exception> {
        self.lr = lr.0.clone();
        Ok(())
    }
}

impl ScheduledOptimizer for Adam {
    fn use_lr(&mut self, lr: &LearningRate) -> Result<(), Exception> {
        self.lr = lr.0.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, rc::Rc};

    use mlx_rs::{
        builder::Builder,
        module::{Module, ModuleParameters},
        nn,
        optimizers::{AdamWBuilder, Optimizer},
        transforms::{compile::compile_with_state, eval},
        Array,
    };
    use sdk::ScheduleContext;

    use super::*;
    use crate::plugins::Registry;

    type State = (nn::Linear, (AdamW, LearningRate));

    #[test]
    fn compiled_step_follows_the_schedule_without_retracing() {
        // L = Σ W·x + b for a fixed x: constant gradients gW = x, gb = 1, so AdamW's path has a closed form.
        let mut layer = nn::LinearBuilder::new(2, 1).build().unwrap();
        *layer.weight = mlx_rs::array!([[0.5f32, -1.0]]);
        *layer.bias = Some(mlx_rs::array!([0.25f32]));
        let x = mlx_rs::array!([[2.0f32, 3.0]]);
        let registry = Registry::builtin().unwrap();
        let table: toml::Table = "min_lr = 0.01".parse().unwrap();
        let schedule = registry.schedule("cosine", &table).unwrap();
        let ctx = ScheduleContext { base_lr: 0.1, total_steps: 6 };
        let mut state: State = (layer, (AdamWBuilder::new(0.0).build().unwrap(), LearningRate::new(0.0)));

        let traces = Rc::new(Cell::new(0));
        let counter = Rc::clone(&traces);
        let step = move |(model, (optimizer, lr)): &mut State, x: &Array| -> Result<Array, Exception> {
            counter.set(counter.get() + 1);
            let mut vg = nn::value_and_grad(|m: &mut nn::Linear, x: &Array| -> Result<Vec<Array>, Exception> {
                Ok(vec![m.forward(x)?.sum(None)?])
            });
            let (loss, grads) = vg(model, x)?;
            optimizer.use_lr(lr)?;
            optimizer.update(model, &grads)?;
            Ok(loss[0].clone())
        };
        let mut compiled = compile_with_state(step, None);

        // MLX computes in f32: use the f32 values of AdamW's constants (1 − 0.999 differs by 1.3e-5 otherwise).
        let f = |x: f32| f64::from(x);
        let (b1, b2, eps, wd) = (f(0.9), f(0.999), f(1e-8), f(0.01));
        let mut expected = [(0.5f64, 2.0f64), (-1.0, 3.0), (0.25, 1.0)]; // (parameter, its gradient)
        let mut moments = [(0.0f64, 0.0f64); 3];
        for s in 0..6 {
            let lr = schedule.lr(s, &ctx).unwrap();
            state.1 .1.set(lr);
            let lr = f(lr as f32);
            compiled(&mut state, &x).unwrap();
            for ((p, g), (m, v)) in expected.iter_mut().zip(moments.iter_mut()) {
                *m = b1 * *m + (1.0 - b1) * *g;
                *v = b2 * *v + (1.0 - b2) * *g * *g;
                *p = *p * (1.0 - lr * wd) - lr * *m / (v.sqrt() + eps);
            }
        }
        let params = state.0.parameters().flatten();
        eval(params.values().copied()).unwrap();
        let w = params["weight"].as_slice::<f32>();
        let b = params["bias"].as_slice::<f32>();
        let got = [w[0] as f64, w[1] as f64, b[0] as f64];
        for (g, (e, _)) in got.iter().zip(expected) {
            assert!((g - e).abs() < 2e-6, "got {got:?}, expected {expected:?}");
        }
        // A constant learning rate of 0.1 would end elsewhere: the schedule did reach the compiled step.
        assert!((got[0] - 0.5).abs() > 0.05);
        // Traced at most twice: once with the optimizer's empty moment state, once after it appeared.
        assert!(traces.get() <= 2, "retraced {} times over 6 steps", traces.get());
    }
}
