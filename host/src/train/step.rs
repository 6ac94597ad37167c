//! The training step as two functions of explicit state, compiled once per batch shape: `micro` adds one
//! micro-batch's weighted gradient to the accumulator; `apply` clips and applies the accumulated gradient.
//! Everything that changes between calls — parameters, optimizer moments, learning rate, PRNG key, the
//! accumulator — is state, so nothing is frozen into the trace.

use std::{cell::RefCell, collections::HashMap, rc::Rc};

use mlx_rs::{
    error::{Exception, StateProjectionError},
    module::{FlattenedModuleParam, ModuleParameters},
    nn, ops,
    ops::indexing::{take_along_axis, IndexOp},
    random::RandomState,
    utils::{StateProjection, Updatable},
    Array, Dtype,
};
use sdk::Loss;

use super::{
    inputs::{loss_inputs, Needs},
    optimizer::TrainOptimizer,
};
use crate::{
    data::Packed,
    lora,
    model::{CausalLm, Segments},
    optim::LearningRate,
};

/// log p(target) for each position: `[B, T]`, in float32 whatever the model's dtype. With `packed`, inputs
/// and targets are packed sequences and the log-probs come back in its row layout.
pub fn token_logps(model: &CausalLm, inputs: &Array, targets: &Array, packed: Option<&Packed>) -> Result<Array, Exception> {
    Ok(logps_and_entropy(model, inputs, targets, false, packed)?.0)
}

/// Per-position values of packed sequences (`[bins, width]`) in the batch's row layout `[B, T]`.
pub fn unpack(values: &Array, packed: Option<&Packed>) -> Result<Array, Exception> {
    match packed {
        Some(p) => values.flatten(None, None)?.take(&p.gather),
        None => Ok(values.clone()),
    }
}

/// Float32 logits of at most this many elements exist at once (256 MB): a 262,144-token vocabulary over
/// 8 × 1024 positions would otherwise need 8.6 GB before the softmax.
pub const LOGIT_CHUNK_ELEMENTS: usize = 1 << 26;

/// [`token_logps`], and with `entropy` also each position's predictive entropy −Σ p log p (`[B, T]`).
pub fn logps_and_entropy(model: &CausalLm, inputs: &Array, targets: &Array, entropy: bool, packed: Option<&Packed>) -> Result<(Array, Option<Array>), Exception> {
    let (logps, h, _) = logps_entropy_and_router_loss(model, inputs, targets, entropy, None, packed)?;
    Ok((logps, h))
}

/// [`logps_and_entropy`], and given `real` (`[B, T]`, 1 at non-padding inputs) the routers' load-balancing
/// loss over those positions (None without sparse layers).
pub fn logps_entropy_and_router_loss(
    model: &CausalLm,
    inputs: &Array,
    targets: &Array,
    entropy: bool,
    real: Option<&Array>,
    packed: Option<&Packed>,
) -> Result<(Array, Option<Array>, Option<Array>), Exception> {
    let segments = packed.map(|p| Segments::new(p.segments.clone()));
    let (hidden, router_loss) = model.model.forward_routed(inputs, None, real, segments.as_ref())?;
    let chunk = (LOGIT_CHUNK_ELEMENTS / model.config.vocab_size.max(1) as usize).max(1);
    let (logps, h) = logps_from_hidden(model, &hidden, targets, entropy, chunk)?;
    Ok((unpack(&logps, packed)?, h.map(|h| unpack(&h, packed)).transpose()?, router_loss))
}

/// Adds `coef` × the router loss to the step's loss (`values[0]`) and the unscaled router loss to its metrics,
/// named `router_aux_loss`.
pub(super) fn add_router_loss(values: &mut Vec<Array>, names: &mut Vec<String>, coef: f32, router_loss: Option<Array>) -> Result<(), Exception> {
    let aux = router_loss.ok_or_else(|| Exception::custom("router_aux_loss_coef is set but the model has no router"))?;
    values[0] = values[0].add(aux.multiply(Array::from_f32(coef))?)?;
    values.push(mlx_rs::stop_gradient(&aux)?);
    names.push("router_aux_loss".to_owned());
    Ok(())
}

/// Log-probs (and entropies) of `targets` from final hidden states `[B, T, H]`, through the output head
/// `chunk` positions at a time when there are more: each chunk's logits are dropped after its forward and
/// recomputed in the backward pass (MLX's checkpoint) instead of being kept for it. Measured (BENCHMARKS.md):
/// a step's peak falls by about a third, not to one chunk, because one MLX evaluation keeps the chunks' logits
/// alive side by side. With one chunk this is the plain computation.
pub fn logps_from_hidden(model: &CausalLm, hidden: &Array, targets: &Array, entropy: bool, chunk: usize) -> Result<(Array, Option<Array>), Exception> {
    let s = hidden.shape();
    let (b, t, h) = (s[0], s[1], s[2]);
    let n = (b * t) as usize;
    if n <= chunk {
        return head_logps(model, hidden, targets, entropy);
    }
    let flat_hidden = hidden.reshape(&[1, b * t, h])?;
    let flat_targets = targets.reshape(&[1, b * t])?;
    // Trainable head parameters (an adapted lm_head, a trained embedding) go in as inputs, so their
    // gradients flow through the checkpoints.
    let params = model.trainable_parameters().flatten();
    let mut names: Vec<Rc<str>> = params.keys().filter(|k| k.starts_with("lm_head.") || k.starts_with("model.embed_tokens.")).cloned().collect();
    names.sort();
    let (mut logps, mut entropies) = (Vec::new(), Vec::new());
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n) as i32;
        let mut inputs = vec![flat_hidden.index((.., start as i32..end, ..))];
        inputs.extend(names.iter().map(|k| params[k].clone()));
        let chunk_targets = flat_targets.index((.., start as i32..end));
        let (mut head, names) = (model.clone(), names.clone());
        let out = crate::nn::checkpointed(&inputs, move |args| {
            head.update_flattened(names.iter().cloned().zip(args[1..].iter().cloned()).collect());
            let (lp, ent) = head_logps(&head, &args[0], &chunk_targets, entropy)?;
            Ok(std::iter::once(lp).chain(ent).collect())
        })?;
        let mut out = out.into_iter();
        logps.push(out.next().ok_or_else(|| Exception::custom("chunked log-probs returned nothing"))?);
        entropies.extend(out);
    }
    let logps = ops::concatenate(&logps, 1)?.reshape(&[b, t])?;
    let entropies = if entropy { Some(ops::concatenate(&entropies, 1)?.reshape(&[b, t])?) } else { None };
    Ok((logps, entropies))
}

/// The head over hidden states `[B, L, H]` and the log-probs (entropies) of `targets` `[B, L]`, in float32.
pub(super) fn head_logps(model: &CausalLm, hidden: &Array, targets: &Array, entropy: bool) -> Result<(Array, Option<Array>), Exception> {
    let logits = model.head(hidden)?.as_dtype(Dtype::Float32)?;
    let lse = logits.logsumexp_axis(-1, true)?;
    let picked = take_along_axis(&logits, &targets.expand_dims(-1)?, -1)?;
    let logps = picked.subtract(&lse)?.squeeze_axes(&[-1])?;
    let h = if entropy {
        let logp = logits.subtract(&lse)?;
        Some(logp.exp()?.multiply(&logp)?.sum_axis(-1, None)?.negative()?)
    } else {
        None
    };
    Ok((logps, h))
}

/// The gradient accumulator: one array per trainable parameter, in a fixed order.
pub struct GradBuffer {
    names: Vec<Rc<str>>,
    values: Vec<Array>,
}

impl GradBuffer {
    pub fn zeros_like(model: &CausalLm) -> Result<Self, Exception> {
        let params = model.trainable_parameters().flatten();
        let mut names: Vec<Rc<str>> = params.keys().cloned().collect();
        names.sort();
        // Float32 for half-precision weights: micro-batch gradients summed in bfloat16 lose low bits, and
        // the float32 weights would promote the buffer after its first micro-batch.
        let values = names.iter().map(|n| ops::zeros_dtype(params[n].shape(), super::optimizer::moment_dtype(params[n].dtype()))).collect::<Result<_, _>>()?;
        Ok(GradBuffer { names, values })
    }

    pub(super) fn accumulate(&mut self, grads: &FlattenedModuleParam, weight: &Array) -> Result<(), Exception> {
        for (name, value) in self.names.iter().zip(self.values.iter_mut()) {
            if let Some(g) = grads.get(name) {
                *value = value.add(g.multiply(weight)?)?;
            }
        }
        Ok(())
    }

    /// Adds `other` into this buffer and zeroes it.
    pub(super) fn add_and_clear(&mut self, other: &mut GradBuffer) -> Result<(), Exception> {
        for (v, o) in self.values.iter_mut().zip(other.values.iter_mut()) {
            *v = v.add(&*o)?;
            *o = ops::zeros_like(&*o)?;
        }
        Ok(())
    }

    /// Sums the buffer over the ranks of `world` (nothing with one process): the arrays laid end to end in
    /// groups of at most 32 MiB, one all-sum per group, split back.
    pub(super) fn reduce(&mut self, world: &crate::dist::World) -> Result<(), crate::dist::DistError> {
        if world.size() == 1 {
            return Ok(());
        }
        const GROUP_BYTES: usize = 32 << 20;
        let mut start = 0;
        while start < self.values.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < self.values.len() && (end == start || bytes + self.values[end].nbytes() <= GROUP_BYTES) {
                bytes += self.values[end].nbytes();
                end += 1;
            }
            let group = &mut self.values[start..end];
            let flat: Vec<Array> = group.iter().map(|v| v.flatten(None, None)).collect::<Result<_, _>>()?;
            let summed = world.sum(&ops::concatenate(&flat, 0)?)?;
            let mut offset = 0i32;
            for v in group.iter_mut() {
                let n = v.size() as i32;
                *v = summed.index(offset..offset + n).reshape(v.shape())?;
                offset += n;
            }
            start = end;
        }
        Ok(())
    }

    #[cfg(test)]
    pub(super) fn values(&self) -> (&[Rc<str>], &[Array]) {
        (&self.names, &self.values)
    }

    fn global_norm(&self) -> Result<Array, Exception> {
        let mut total = Array::from_f32(0.0);
        for v in &self.values {
            total = total.add(v.square()?.sum(None)?)?;
        }
        total.sqrt()
    }

    fn take_scaled(&mut self, scale: &Array) -> Result<FlattenedModuleParam, Exception> {
        let mut out = FlattenedModuleParam::new();
        for (name, value) in self.names.iter().zip(self.values.iter_mut()) {
            out.insert(name.clone(), value.multiply(scale)?);
            *value = ops::zeros_like(&*value)?;
        }
        Ok(out)
    }
}

impl Updatable for GradBuffer {
    fn state_projection(&mut self) -> Result<StateProjection<'_>, StateProjectionError> {
        let mut p = StateProjection::new();
        for (name, value) in self.names.iter().zip(self.values.iter_mut()) {
            p.required(name.clone(), value)?;
        }
        Ok(p)
    }
}

/// Everything a step reads and writes. One tuple for both functions (they share the model); each ignores
/// the parts it does not use.
pub type TrainState = (CausalLm, (TrainOptimizer, (LearningRate, (GradBuffer, RandomState))));

/// Micro-step. Args: inputs, targets, mask, weight (this micro-batch's share of the step), then the
/// loss's optional inputs (see [`super::inputs`]), with `router_coef` the real-token mask, and last, with
/// `packed`, the packed layout's segment ids and gather indices (see [`Packed`]). Returns
/// the loss followed by the loss plugin's metrics (their names land in `metric_names` when traced), with
/// `entropy` the mean predictive entropy over the mask, named `entropy`, and with `router_coef` the routers'
/// load-balancing loss (added to the loss times the coefficient), named `router_aux_loss`.
///
/// Old-policy log-probs come as a pair (stored log-probs, flag): with the flag 1 the step uses its own
/// log-probs without gradient, so the first pass over fresh rollouts has a ratio of exactly 1.
pub fn micro(
    loss: Rc<dyn Loss>,
    needs: Needs,
    dropout: bool,
    entropy: bool,
    router_coef: Option<f32>,
    packed: bool,
    metric_names: Rc<RefCell<Vec<String>>>,
) -> impl FnMut(&mut TrainState, &[Array]) -> Result<Vec<Array>, Exception> {
    move |(model, (_, (_, (grads, rng)))), args| {
        let MicroArgs { weight, view, loss_key, real, packed } = MicroArgs::take(args, needs, dropout, router_coef.is_some(), packed, model, rng)?;
        let weight = &weight;
        let loss = loss.clone();
        let names = metric_names.clone();
        let f = move |m: &mut CausalLm, view: &[Array]| -> Result<Vec<Array>, Exception> {
            let (logps, h, router_loss) = logps_entropy_and_router_loss(m, &view[0], &view[1], entropy, real.as_ref(), packed.as_ref())?;
            let mut old = None;
            let inputs = loss_inputs(needs, view, &logps, loss_key.as_ref(), &mut old)?;
            let out = loss.forward(&inputs).map_err(|e| Exception::custom(e.to_string()))?;
            let mut metric_names: Vec<String> = out.metrics.iter().map(|(n, _)| n.clone()).collect();
            let mut values = vec![out.loss];
            values.extend(out.metrics.into_iter().map(|(_, a)| a));
            if let Some(h) = h {
                let mask = &view[2];
                let tokens = ops::maximum(mask.sum(None)?, Array::from_f32(1.0))?;
                values.push(mlx_rs::stop_gradient(&h.multiply(mask)?.sum(None)?.divide(&tokens)?)?);
                metric_names.push("entropy".to_owned());
            }
            if let Some(coef) = router_coef {
                add_router_loss(&mut values, &mut metric_names, coef, router_loss)?;
            }
            *names.borrow_mut() = metric_names;
            Ok(values)
        };
        let mut vg = nn::value_and_grad(f);
        let (values, g) = vg(model, &view[..])?;
        grads.accumulate(&g, weight)?;
        if dropout {
            lora::set_dropout_key(model, None)?;
        }
        Ok(values)
    }
}

/// A micro-step's arguments taken apart: its weight, the rest (`view`: inputs, targets, mask, the loss's
/// inputs), this step's PRNG draws (the dropout key is set on the model's adapters; the loss's key kept),
/// with `routed` the real-token mask, and with `packed` the packed layout (the last two arguments).
pub(super) struct MicroArgs {
    pub weight: Array,
    pub view: Vec<Array>,
    pub loss_key: Option<Array>,
    pub real: Option<Array>,
    pub packed: Option<Packed>,
}

impl MicroArgs {
    pub fn take(args: &[Array], needs: Needs, dropout: bool, routed: bool, packed: bool, model: &mut CausalLm, rng: &mut RandomState) -> Result<MicroArgs, Exception> {
        let (args, packed) = match (packed, args.len().checked_sub(2)) {
            (true, Some(n)) => (&args[..n], Some(Packed { segments: args[n].clone(), gather: args[n + 1].clone() })),
            (true, None) => return Err(Exception::custom("a packed micro step takes the segment ids and gather indices last")),
            (false, _) => (args, None),
        };
        let (args, real) = match (routed, args.split_last()) {
            (true, Some((real, rest))) => (rest, Some(real.clone())),
            _ => (args, None),
        };
        if args.len() < 4 {
            return Err(Exception::custom("micro step takes inputs, targets, mask, weight and the loss's inputs"));
        }
        let view: Vec<Array> = args[..3].iter().chain(&args[4..]).cloned().collect();
        if dropout {
            let key = rng.next_key()?;
            lora::set_dropout_key(model, Some(&key))?;
        }
        let loss_key = if needs.rng { Some(rng.next_key()?) } else { None };
        Ok(MicroArgs { weight: args[3].clone(), view, loss_key, real, packed })
    }
}

/// Apply step: clips the accumulated gradient to `max_norm` (global norm) and updates. The update is applied
/// only when the gradient norm is finite, else parameters and optimizer state stay as they were: decided in
/// the graph, so the host need not read the norm before the update is encoded. Returns the norm before
/// clipping. The accumulator is cleared either way.
pub fn apply(max_norm: Option<f32>) -> impl FnMut(&mut TrainState, &[Array]) -> Result<Vec<Array>, Exception> {
    move |(model, (optimizer, (lr, (grads, _)))), _args| {
        let norm = grads.global_norm()?;
        let finite = norm.is_finite()?;
        let scale = match max_norm {
            Some(m) => ops::minimum(Array::from_f32(1.0), Array::from_f32(m).divide(norm.add(Array::from_f32(1e-6))?)?)?,
            None => Array::from_f32(1.0),
        };
        let g = grads.take_scaled(&scale)?;
        let params_before: HashMap<Rc<str>, Array> = model.trainable_parameters().flatten().into_iter().map(|(k, v)| (k, v.clone())).collect();
        let state_before = optimizer.state_snapshot()?;
        optimizer.set_lr(&lr.0, lr.value());
        optimizer.update(model, &g)?;
        let mut kept = FlattenedModuleParam::new();
        for (name, new) in model.trainable_parameters().flatten() {
            if let Some(old) = params_before.get(&name) {
                kept.insert(name, ops::select(&finite, &new, old)?);
            }
        }
        model.update_flattened(kept);
        optimizer.keep_state_where(&finite, &state_before)?;
        Ok(vec![norm])
    }
}