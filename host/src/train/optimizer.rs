//! Optimizers by name. AdamW and Adam are mlx-rs's; SGD is ours because mlx-rs keeps its learning rate as a
//! plain float, which a compiled step would freeze; Adafactor (float learning rate too) runs uncompiled.

use std::{collections::HashMap, rc::Rc};

use mlx_rs::{
    builder::Builder,
    error::{Exception, StateProjectionError},
    module::{FlattenedModuleParam, ModuleParameters},
    optimizers::{Adafactor, AdafactorBuilder, Adam, AdamBuilder, AdamW, AdamWBuilder, Optimizer, OptimizerState, State},
    utils::{StateProjection, Updatable},
    Array, Dtype,
};

use crate::config::{OptimizerConfig, OptimizerKind};

/// SGD with momentum and (coupled) weight decay, as PyTorch defines it; the learning rate is an array.
pub struct Sgd {
    pub lr: Array,
    momentum: f32,
    weight_decay: f32,
    state: State,
}

impl Optimizer for Sgd {
    type State = State;

    fn state(&self) -> &State {
        &self.state
    }

    fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    fn update_single(&mut self, key: &Rc<str>, gradient: &Array, parameter: &mut Array) -> Result<(), Exception> {
        let mut g = gradient.clone();
        if self.weight_decay != 0.0 {
            g = g.add(parameter.multiply(Array::from_f32(self.weight_decay))?)?;
        }
        if self.momentum != 0.0 {
            let v = match self.state.get(key) {
                Some(v) => v.multiply(Array::from_f32(self.momentum))?.add(&g)?,
                None => g.clone(),
            };
            self.state.insert(key.clone(), v.clone());
            g = v;
        }
        *parameter = parameter.subtract(self.lr.multiply(&g)?)?;
        Ok(())
    }
}

impl Updatable for Sgd {
    fn state_projection(&mut self) -> Result<StateProjection<'_>, StateProjectionError> {
        self.state.state_projection()
    }
}

pub enum TrainOptimizer {
    AdamW(AdamW),
    Adam(Adam),
    Sgd(Sgd),
    Adafactor(Adafactor),
}

impl Updatable for TrainOptimizer {
    fn state_projection(&mut self) -> Result<StateProjection<'_>, StateProjectionError> {
        match self {
            TrainOptimizer::AdamW(o) => o.state_projection(),
            TrainOptimizer::Adam(o) => o.state_projection(),
            TrainOptimizer::Sgd(o) => o.state_projection(),
            TrainOptimizer::Adafactor(o) => o.state_projection(),
        }
    }
}

/// The dtype of a parameter's gradient accumulator and optimizer moments: float32 for half-precision weights.
pub fn moment_dtype(parameter: Dtype) -> Dtype {
    match parameter {
        Dtype::Bfloat16 | Dtype::Float16 => Dtype::Float32,
        other => other,
    }
}

fn flatten<S: OptimizerState>(state: &mut S) -> Result<Vec<(String, Array)>, Exception> {
    Ok(state.flatten()?.into_iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
}

impl TrainOptimizer {
    pub fn build(c: &OptimizerConfig) -> Result<Self, Exception> {
        let lr = c.lr as f32;
        let betas = c.betas.map(|[a, b]| (a as f32, b as f32));
        Ok(match c.kind {
            OptimizerKind::Adamw => {
                let mut b = AdamWBuilder::new(lr);
                if let Some(betas) = betas {
                    b = b.betas(betas);
                }
                if let Some(eps) = c.eps {
                    b = b.eps(eps as f32);
                }
                if let Some(wd) = c.weight_decay {
                    b = b.weight_decay(wd as f32);
                }
                TrainOptimizer::AdamW(b.build()?)
            }
            OptimizerKind::Adam => {
                let mut b = AdamBuilder::new(lr);
                if let Some(betas) = betas {
                    b = b.betas(betas);
                }
                if let Some(eps) = c.eps {
                    b = b.eps(eps as f32);
                }
                TrainOptimizer::Adam(b.build()?)
            }
            OptimizerKind::Sgd => TrainOptimizer::Sgd(Sgd {
                lr: Array::from_f32(lr),
                momentum: c.momentum.unwrap_or(0.0) as f32,
                weight_decay: c.weight_decay.unwrap_or(0.0) as f32,
                state: State::new(),
            }),
            // A fixed learning rate (from the schedule), not Adafactor's relative step size.
            OptimizerKind::Adafactor => TrainOptimizer::Adafactor(AdafactorBuilder::new().lr(lr).relative_step(false).build().map_err(|e| Exception::custom(format!("adafactor: {e:?}")))?),
        })
    }

    /// Whether the learning rate is an array a compiled step can take as an input.
    pub fn compilable(&self) -> bool {
        !matches!(self, TrainOptimizer::Adafactor(_))
    }

    /// Sets the learning rate for the next update (inside a compiled step: the step's LR input).
    pub fn set_lr(&mut self, lr: &Array, value: f64) {
        match self {
            TrainOptimizer::AdamW(o) => o.lr = lr.clone(),
            TrainOptimizer::Adam(o) => o.lr = lr.clone(),
            TrainOptimizer::Sgd(o) => o.lr = lr.clone(),
            TrainOptimizer::Adafactor(o) => o.lr = Some(value as f32),
        }
    }

    /// Updates the trainable parameters, each keeping its dtype: the update is computed in float32 (moments
    /// and gradients are float32) and a bfloat16 weight is rounded back to bfloat16, as MLX's own optimizers
    /// keep a parameter's dtype (a compiled step's state layout must not change either).
    pub fn update<M: ModuleParameters>(&mut self, model: &mut M, grads: &FlattenedModuleParam) -> Result<(), Exception> {
        let dtypes: HashMap<Rc<str>, Dtype> = model.trainable_parameters().flatten().into_iter().map(|(k, v)| (k, v.dtype())).collect();
        match self {
            TrainOptimizer::AdamW(o) => o.update(model, grads)?,
            TrainOptimizer::Adam(o) => o.update(model, grads)?,
            TrainOptimizer::Sgd(o) => o.update(model, grads)?,
            TrainOptimizer::Adafactor(o) => o.update(model, grads)?,
        }
        let mut restored = FlattenedModuleParam::new();
        for (k, v) in model.trainable_parameters().flatten() {
            if let Some(&dtype) = dtypes.get(&k).filter(|&&d| d != v.dtype()) {
                restored.insert(k, v.as_dtype(dtype)?);
            }
        }
        if !restored.is_empty() {
            model.update_flattened(restored);
        }
        Ok(())
    }

    /// Gives every trainable parameter its (zero) state now rather than at its first update, so the compiled
    /// steps see one state layout from the start. Numerically the same as lazily created state.
    pub fn init_state<M: ModuleParameters>(&mut self, model: &M) -> Result<(), Exception> {
        let params = model.trainable_parameters().flatten();
        // Float32 whatever the weight's dtype: bfloat16 moments lose the small updates (and the float32
        // gradients would promote them after the first step).
        let zeros = |a: &Array| mlx_rs::ops::zeros_dtype(a.shape(), moment_dtype(a.dtype()));
        match self {
            TrainOptimizer::AdamW(o) if o.state.is_empty() => {
                for (k, p) in &params {
                    o.state.insert(k.clone(), (zeros(p)?, zeros(p)?));
                }
            }
            TrainOptimizer::Adam(o) if o.state.is_empty() => {
                for (k, p) in &params {
                    o.state.insert(k.clone(), (zeros(p)?, zeros(p)?));
                }
            }
            TrainOptimizer::Sgd(o) if o.state.is_empty() && o.momentum != 0.0 => {
                for (k, p) in &params {
                    o.state.insert(k.clone(), zeros(p)?);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The optimizer's state arrays by their compile-state name.
    pub fn state_snapshot(&mut self) -> Result<HashMap<Rc<str>, Array>, Exception> {
        let projection = self.state_projection().map_err(|e| Exception::custom(format!("optimizer state: {e:?}")))?;
        Ok(projection.iter().filter_map(|(k, v)| v.map(|v| (Rc::from(k), v.clone()))).collect())
    }

    /// Keeps each state array's new value where `cond` holds, else its value in `before` ([`Self::state_snapshot`]
    /// taken before the update); state created by the update falls back to zeros, what a fresh state holds.
    pub fn keep_state_where(&mut self, cond: &Array, before: &HashMap<Rc<str>, Array>) -> Result<(), Exception> {
        let mut projection = self.state_projection().map_err(|e| Exception::custom(format!("optimizer state: {e:?}")))?;
        for (k, v) in projection.iter_mut() {
            if let Some(v) = v {
                let old = match before.get(k) {
                    Some(old) => old.clone(),
                    None => mlx_rs::ops::zeros_like(&*v)?,
                };
                *v = mlx_rs::ops::select(cond, &*v, &old)?;
            }
        }
        Ok(())
    }

    /// The optimizer's state by key, for checkpoints.
    pub fn state_arrays(&mut self) -> Result<Vec<(String, Array)>, Exception> {
        match self {
            TrainOptimizer::AdamW(o) => flatten(o.state_mut()),
            TrainOptimizer::Adam(o) => flatten(o.state_mut()),
            TrainOptimizer::Sgd(o) => flatten(o.state_mut()),
            TrainOptimizer::Adafactor(o) => flatten(o.state_mut()),
        }
    }

    /// Restores a state written by [`TrainOptimizer::state_arrays`].
    pub fn load_state(&mut self, arrays: HashMap<String, Array>) -> Result<(), String> {
        let err = |e: &dyn std::fmt::Display| format!("optimizer state: {e}");
        match self {
            TrainOptimizer::AdamW(o) => o.state = OptimizerState::unflatten(arrays).map_err(|e| err(&e))?,
            TrainOptimizer::Adam(o) => o.state = OptimizerState::unflatten(arrays).map_err(|e| err(&e))?,
            TrainOptimizer::Sgd(o) => o.state = OptimizerState::unflatten(arrays).map_err(|e| err(&e))?,
            TrainOptimizer::Adafactor(o) => o.state = OptimizerState::unflatten(arrays).map_err(|e| err(&e))?,
        }
        Ok(())
    }
}
