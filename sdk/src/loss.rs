//! Losses see what the host computed from the model, never the model itself, so the same plugin works for
//! every model family and across the C ABI.

use mlx_rs::Array;

use crate::PluginError;

/// What a loss needs the host to compute; anything not asked for is absent from [`LossInputs`], and the
/// host skips its cost (ORPO and SimPO never run a reference forward).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requirements {
    /// Reference-policy log-probs (the policy with adapters off, or precomputed).
    pub reference: bool,
    /// Preference pairs: the batch is `[chosen_0 … chosen_{P−1}, rejected_0 … rejected_{P−1}]`.
    pub pairs: bool,
    /// Per-row labels (KTO: 1 desirable, 0 undesirable).
    pub labels: bool,
    /// Log-probs under the policy that generated the samples (GRPO's importance ratio).
    pub old_policy: bool,
    /// Per-row rewards.
    pub rewards: bool,
    /// Per-row advantages.
    pub advantages: bool,
    /// Per-row group ids (GRPO: which prompt a completion answers).
    pub group_ids: bool,
    /// Policy and reference log-probs of mismatched prompt/completion pairs (KTO's KL reference point).
    pub kl_pairs: bool,
    /// A PRNG key (the plugin's copy of mlx-rs cannot see the host's random state).
    pub rng: bool,
    /// The loss averages over rows (sequences, completions), not over tokens, so a step's micro-batches are
    /// weighed by their rows rather than by their supervised tokens. Pairs and labelled rows imply it. Since ABI
    /// 1.1; a plugin built before reads as false (token weighting).
    pub row_mean: bool,
}

impl Requirements {
    const FLAGS: [fn(&mut Requirements) -> &mut bool; 10] = [
        |r| &mut r.reference,
        |r| &mut r.pairs,
        |r| &mut r.labels,
        |r| &mut r.old_policy,
        |r| &mut r.rewards,
        |r| &mut r.advantages,
        |r| &mut r.group_ids,
        |r| &mut r.kl_pairs,
        |r| &mut r.rng,
        |r| &mut r.row_mean,
    ];

    /// Bit i set when the i-th field (in declaration order) is true; the C ABI's encoding.
    pub fn to_bits(mut self) -> u64 {
        Self::FLAGS.iter().enumerate().fold(0, |bits, (i, f)| bits | (u64::from(*f(&mut self)) << i))
    }

    /// Inputs only a rollout trainer (GRPO) produces: the loss learns from sampled completions.
    pub fn rollout(&self) -> bool {
        self.old_policy || self.rewards || self.advantages || self.group_ids
    }

    /// Unknown bits (from a newer plugin) are ignored by an older host; the minor version rule already
    /// refuses plugins newer than the host.
    pub fn from_bits(bits: u64) -> Self {
        let mut r = Requirements::default();
        for (i, f) in Self::FLAGS.iter().enumerate() {
            *f(&mut r) = bits & (1 << i) != 0;
        }
        r
    }
}

/// The arrays a loss receives. Shapes: B rows, T target positions. Token arrays are aligned with the shifted
/// targets; positions outside `mask` hold finite but meaningless values.
#[derive(Clone, Copy)]
pub struct LossInputs<'a> {
    /// `[B, T]` log π_θ of each target token.
    pub policy_logps: &'a Array,
    /// `[B, T]` 1.0 on supervised (completion) targets, 0.0 elsewhere, float32.
    pub mask: &'a Array,
    /// `[B, T]` log π_ref, when [`Requirements::reference`].
    pub reference_logps: Option<&'a Array>,
    /// `[B, T]` log π_old, when [`Requirements::old_policy`].
    pub old_logps: Option<&'a Array>,
    /// `[B]` labels, when [`Requirements::labels`].
    pub labels: Option<&'a Array>,
    /// `[B]` group ids, when [`Requirements::group_ids`].
    pub group_ids: Option<&'a Array>,
    /// `[B]` rewards, when [`Requirements::rewards`].
    pub rewards: Option<&'a Array>,
    /// `[B]` advantages, when [`Requirements::advantages`].
    pub advantages: Option<&'a Array>,
    /// `[B, T]` policy log-probs of mismatched pairs, when [`Requirements::kl_pairs`].
    pub kl_policy_logps: Option<&'a Array>,
    /// `[B, T]` reference log-probs of mismatched pairs, when [`Requirements::kl_pairs`].
    pub kl_reference_logps: Option<&'a Array>,
    /// `[B, T]` mask of the mismatched pairs' completion targets, when [`Requirements::kl_pairs`].
    pub kl_mask: Option<&'a Array>,
    /// A PRNG key, when [`Requirements::rng`].
    pub rng_key: Option<&'a Array>,
    /// Number of preference pairs P (B = 2P) when [`Requirements::pairs`], else 0.
    pub num_pairs: usize,
}

impl<'a> LossInputs<'a> {
    /// Inputs with only the policy log-probs and mask; the rest absent.
    pub fn new(policy_logps: &'a Array, mask: &'a Array) -> Self {
        LossInputs {
            policy_logps,
            mask,
            reference_logps: None,
            old_logps: None,
            labels: None,
            group_ids: None,
            rewards: None,
            advantages: None,
            kl_policy_logps: None,
            kl_reference_logps: None,
            kl_mask: None,
            rng_key: None,
            num_pairs: 0,
        }
    }

    /// An input the loss declared it needs, or an error naming it.
    pub fn require(value: Option<&'a Array>, name: &str) -> Result<&'a Array, PluginError> {
        value.ok_or_else(|| PluginError::Invalid(format!("the host did not provide `{name}`")))
    }
}

/// A scalar loss to minimize, plus named metrics (scalars) for logging.
pub struct LossOutput {
    pub loss: Array,
    pub metrics: Vec<(String, Array)>,
}

/// A training objective over per-token log-probs.
pub trait Loss {
    fn requirements(&self) -> Requirements;
    /// Builds the loss graph; must not evaluate arrays (see the crate docs).
    fn forward(&self, inputs: &LossInputs<'_>) -> Result<LossOutput, PluginError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirement_bits_round_trip_in_declaration_order() {
        let r = Requirements { reference: true, labels: true, rng: true, ..Default::default() };
        assert_eq!(r.to_bits(), 0b1_0000_0101);
        assert_eq!(Requirements::from_bits(r.to_bits()), r);
        assert_eq!(Requirements::from_bits(u64::MAX).to_bits(), 0x3ff);
        // A plugin built before `row_mean` existed never sets bit 9.
        assert!(!Requirements::from_bits(0x1ff).row_mean);
        assert_eq!(Requirements { row_mean: true, ..Default::default() }.to_bits(), 1 << 9);
    }
}
