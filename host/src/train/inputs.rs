//! What a loss asks for, turned into the arrays a training step receives and back. A step's arguments are
//! `[inputs, targets, mask, weight, …]` followed by the optional inputs the loss declared, in a fixed order,
//! so one compiled step serves the whole run.

use mlx_rs::{error::Exception, Array};
use sdk::{LossInputs, Requirements};

use super::{reference::ReferenceSource, step::token_logps, TrainError};
use crate::{data::Batch, model::CausalLm};

/// A loss's `Requirements` once a trainer has accepted them (read its fields through `Deref`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs(Requirements);

impl std::ops::Deref for Needs {
    type Target = Requirements;

    fn deref(&self) -> &Requirements {
        &self.0
    }
}

impl Needs {
    /// The inputs a loss asks for, refusing combinations no trainer produces: rollout inputs (old-policy
    /// log-probs, rewards, advantages, group ids) come with sampled completions, never with pairs or labels.
    pub fn of(loss: &str, r: Requirements) -> Result<Needs, TrainError> {
        if r.pairs && (r.labels || r.kl_pairs) {
            return Err(TrainError::Config(format!("loss `{loss}` asks for preference pairs and labelled rows at once")));
        }
        if r.rollout() && (r.pairs || r.labels || r.kl_pairs) {
            return Err(TrainError::Config(format!("loss `{loss}` asks for rollout inputs and for fixed pairs or labelled rows at once")));
        }
        Ok(Needs(r))
    }

    pub fn shape(self) -> crate::data::RowShape {
        match (self.pairs, self.labels) {
            (true, _) => crate::data::RowShape::Pair,
            (false, true) => crate::data::RowShape::Labeled,
            (false, false) => crate::data::RowShape::Single,
        }
    }

    /// Micro-batches are weighted by pairs or rows for losses that average over them, by supervised (or
    /// completion) tokens for token means.
    pub fn per_row(self) -> bool {
        self.pairs || self.labels || self.row_mean
    }

    /// A micro-batch's share of its step: of the step's rows (pairs) or of its tokens, as [`Needs::per_row`] says.
    pub fn share(self, rows: usize, step_rows: usize, tokens: usize, step_tokens: usize) -> f32 {
        let (part, whole) = if self.per_row() { (rows, step_rows) } else { (tokens, step_tokens) };
        part as f32 / whole.max(1) as f32
    }
}

/// Everything a batch contributes to a step, in the step's argument order (weight excluded): inputs,
/// targets, mask, then reference log-probs, labels, and the mismatched pairs' policy log-probs, reference
/// log-probs and mask, as needed (rollout inputs follow them, appended by the GRPO trainer). Reference and
/// mismatched-pair log-probs carry no gradient, so they are computed here, before the step.
pub fn batch_arrays(b: &Batch, needs: Needs, model: &mut CausalLm, source: Option<&ReferenceSource>) -> Result<Vec<Array>, TrainError> {
    let missing = |what: &str| TrainError::Config(format!("the batch has no {what}"));
    let mut out = vec![b.inputs.clone(), b.targets.clone(), b.mask.clone()];
    let reference = |model: &mut CausalLm, batch: &Batch| -> Result<Array, TrainError> {
        match (&batch.reference, source) {
            (Some(r), _) => Ok(r.clone()),
            (None, Some(source)) => Ok(source.logps(model, &batch.inputs, &batch.targets, batch.packed.as_ref())?),
            (None, None) => Err(missing("reference log-probs")),
        }
    };
    if needs.reference {
        out.push(reference(model, b)?);
    }
    if needs.labels {
        out.push(b.labels.clone().ok_or_else(|| missing("labels"))?);
    }
    if needs.kl_pairs {
        let kl = b.kl.as_deref().ok_or_else(|| missing("mismatched pairs"))?;
        let policy = token_logps(model, &kl.inputs, &kl.targets, kl.packed.as_ref())?;
        policy.eval()?;
        out.push(policy);
        out.push(reference(model, kl)?);
        out.push(kl.mask.clone());
    }
    Ok(out)
}

/// The loss's view of a step's arguments (weight removed) and its policy log-probs. The old-policy argument
/// pair (stored log-probs, use-current flag) becomes one array, held in `old`: with the flag 1 it is the step's
/// own log-probs without gradient, so the first pass over fresh rollouts has a ratio of exactly 1.
pub fn loss_inputs<'a>(
    needs: Needs,
    args: &'a [Array],
    logps: &'a Array,
    rng_key: Option<&'a Array>,
    old: &'a mut Option<Array>,
) -> Result<LossInputs<'a>, Exception> {
    let mut rest = args.get(3..).unwrap_or_default().iter();
    let mut next = |what: &str| rest.next().ok_or_else(|| Exception::custom(format!("step arguments lack {what}")));
    let mask = &args[2];
    let mut inputs = LossInputs::new(logps, mask);
    if needs.reference {
        inputs.reference_logps = Some(next("reference log-probs")?);
    }
    if needs.labels {
        inputs.labels = Some(next("labels")?);
    }
    if needs.kl_pairs {
        inputs.kl_policy_logps = Some(next("mismatched-pair policy log-probs")?);
        inputs.kl_reference_logps = Some(next("mismatched-pair reference log-probs")?);
        inputs.kl_mask = Some(next("mismatched-pair mask")?);
    }
    if needs.old_policy {
        let stored = next("old-policy log-probs")?;
        let flag = next("old-policy flag")?;
        let current = mlx_rs::stop_gradient(logps)?;
        let mixed = current.multiply(flag)?.add(stored.multiply(Array::from_f32(1.0).subtract(flag)?)?)?;
        inputs.old_logps = Some(old.insert(mixed));
    }
    if needs.advantages {
        inputs.advantages = Some(next("advantages")?);
    }
    if needs.rewards {
        inputs.rewards = Some(next("rewards")?);
    }
    if needs.group_ids {
        inputs.group_ids = Some(next("group ids")?);
    }
    if needs.pairs {
        inputs.num_pairs = (logps.shape()[0] / 2) as usize;
    }
    inputs.rng_key = rng_key;
    Ok(inputs)
}
