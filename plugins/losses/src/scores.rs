//! Sequence scores from per-token log-probs, shared by the preference losses: log-prob sums and token
//! counts per row, the chosen/rejected halves of a pair batch, and the metrics every pair loss logs.

use sdk::{
    mlx_rs::{error::Exception, nn::log_sigmoid, ops, ops::indexing::IndexOp, Array},
    LossInputs, PluginError,
};

/// Σ_t logps·mask per row: `[B]`.
pub(crate) fn row_sums(logps: &Array, mask: &Array) -> Result<Array, Exception> {
    logps.multiply(mask)?.sum_axis(-1, None)
}

/// Supervised tokens per row (at least 1, so a mean never divides by zero): `[B]`.
pub(crate) fn row_counts(mask: &Array) -> Result<Array, Exception> {
    ops::maximum(mask.sum_axis(-1, None)?, Array::from_f32(1.0))
}

/// Rows `[0, P)` and `[P, 2P)` of a `[2P]` array.
pub(crate) fn halves(x: &Array, pairs: i32) -> (Array, Array) {
    (x.index(..pairs), x.index(pairs..))
}

/// The number of pairs P, checked against the batch (B = 2P).
pub(crate) fn pairs(inputs: &LossInputs<'_>, loss: &str) -> Result<i32, PluginError> {
    let rows = inputs.policy_logps.shape()[0];
    let p = inputs.num_pairs as i32;
    if p == 0 || rows != 2 * p {
        return Err(PluginError::Invalid(format!("{loss} needs a batch of preference pairs (got {p} pairs for {rows} rows)")));
    }
    Ok(p)
}

/// −(1−ε)·log σ(z) − ε·log σ(−z): the logistic loss with label smoothing ε (conservative DPO).
pub(crate) fn smoothed_logistic(z: &Array, epsilon: f32) -> Result<Array, Exception> {
    let positive = log_sigmoid(z)?.multiply(Array::from_f32(-(1.0 - epsilon)))?;
    if epsilon == 0.0 {
        return Ok(positive);
    }
    positive.subtract(log_sigmoid(z.negative()?)?.multiply(Array::from_f32(epsilon))?)
}

/// Mean over a `[B]` array.
pub(crate) fn mean(x: &Array) -> Result<Array, Exception> {
    x.mean(None)
}

/// The metrics of a pair loss, named and defined as TRL's DPO, CPO and ORPO trainers log them: mean chosen
/// and rejected rewards, their mean margin, the share of pairs whose chosen reward is higher, and the mean
/// chosen and rejected log-probs.
pub(crate) fn pair_metrics(chosen_rewards: &Array, rejected_rewards: &Array, chosen_logps: &Array, rejected_logps: &Array) -> Result<Vec<(String, Array)>, Exception> {
    Ok(vec![
        ("rewards/chosen".to_owned(), mean(chosen_rewards)?),
        ("rewards/rejected".to_owned(), mean(rejected_rewards)?),
        ("rewards/margins".to_owned(), mean(&chosen_rewards.subtract(rejected_rewards)?)?),
        ("rewards/accuracies".to_owned(), mean(&chosen_rewards.gt(rejected_rewards)?.as_dtype(sdk::mlx_rs::Dtype::Float32)?)?),
        ("logps/chosen".to_owned(), mean(chosen_logps)?),
        ("logps/rejected".to_owned(), mean(rejected_logps)?),
    ])
}

/// Mean token NLL over the supervised tokens of the first `pairs` rows (the chosen completions).
pub(crate) fn chosen_nll(inputs: &LossInputs<'_>, pairs: i32) -> Result<Array, Exception> {
    let logps = inputs.policy_logps.index(..pairs);
    let mask = inputs.mask.index(..pairs);
    let tokens = ops::maximum(mask.sum(None)?, Array::from_f32(1.0))?;
    logps.multiply(&mask)?.sum(None)?.negative()?.divide(&tokens)
}
