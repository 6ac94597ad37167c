//! Reference log-probs for losses that compare the policy with a reference policy (DPO, KTO): the policy
//! with its adapters switched off (the base model without a second copy of its weights), a separate model,
//! or either of them run once over the data before training, the results kept through the data cache
//! policy under a key of the weights, the tokenized data and the settings.

use mlx_rs::{error::Exception, Array};
use sdk::DataCachePolicy;

use super::{step::token_logps, TrainError};
use crate::{
    data::{assemble, cache_key, plan_epoch, BatchSize, Dataset, Item, Packed},
    lora,
    model::CausalLm,
    text::TextTokenizer,
};

/// Where reference log-probs are computed.
pub enum ReferenceSource {
    /// The policy with its adapters switched off; in full fine-tuning (no adapters), the policy as it is,
    /// used only to precompute the base model's log-probs before the first step.
    AdaptersOff,
    /// A second model.
    Model(Box<CausalLm>),
}

impl ReferenceSource {
    /// `[B, T]` reference log-probs of the targets, evaluated (they carry no gradient); packed inputs and
    /// targets given their layout.
    pub fn logps(&self, policy: &mut CausalLm, inputs: &Array, targets: &Array, packed: Option<&Packed>) -> Result<Array, Exception> {
        let out = match self {
            ReferenceSource::AdaptersOff => {
                lora::set_enabled(policy, false);
                let out = token_logps(policy, inputs, targets, packed).and_then(|o| o.eval().map(|()| o));
                lora::set_enabled(policy, true);
                out?
            }
            ReferenceSource::Model(m) => token_logps(m, inputs, targets, packed)?,
        };
        out.eval()?;
        Ok(out)
    }
}

/// The item whose completion goes with item `i`'s prompt in KTO's mismatched pairs: the item before it,
/// cyclically (TRL shifts completions by one at data preparation; rows without a supervised token were left
/// out at load). Fixed per dataset, so the pairs — and their reference log-probs — do not depend on how
/// batches are drawn.
pub fn partner(dataset: &mut Dataset, i: usize, t: &TextTokenizer) -> Result<Item, TrainError> {
    let n = dataset.len();
    if n < 2 {
        return Err(TrainError::Config(format!("{}: KTO's reference point needs at least two usable rows", dataset.path().display())));
    }
    Ok(dataset.item((i + n - 1) % n, t)?)
}

/// Precomputed reference log-probs of one item: per sequence (its targets, unpadded), and of its
/// mismatched pair when the loss uses those.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemLogps {
    pub sequences: Vec<Vec<f32>>,
    pub kl: Option<Vec<f32>>,
}

/// Reference log-probs for every item of a dataset.
pub struct ReferenceTable {
    pub items: Vec<Option<ItemLogps>>,
    pub cache_hit: bool,
}

/// Rows of a `[B, T]` array, each cut to its sequence's target count.
fn split_rows(logps: &Array, lengths: &[usize]) -> Result<Vec<Vec<f32>>, Exception> {
    let width = logps.shape()[1] as usize;
    let flat = logps.as_dtype(mlx_rs::Dtype::Float32)?;
    flat.eval()?;
    let values = flat.as_slice::<f32>();
    Ok(lengths.iter().enumerate().map(|(r, &n)| values[r * width..r * width + n.saturating_sub(1).min(width)].to_vec()).collect())
}

impl ReferenceTable {
    /// Computes (or loads) the table for `dataset`. `identity` names the reference weights and settings.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        dataset: &mut Dataset,
        t: &TextTokenizer,
        source: &ReferenceSource,
        policy: &mut CausalLm,
        identity: &[u8],
        kl_pairs: bool,
        batch_size: usize,
        max_len: usize,
        cache: &mut dyn DataCachePolicy,
    ) -> Result<ReferenceTable, TrainError> {
        let key = cache_key(&[b"host-reference-v1", dataset.key.as_bytes(), identity, format!("{kl_pairs} {max_len}").as_bytes()]);
        if let Some(blob) = cache.load(&key).map_err(|e| TrainError::Config(format!("data cache: {e}")))? {
            if let Some(items) = decode(&blob).filter(|items| items.len() == dataset.len()) {
                return Ok(ReferenceTable { items, cache_hit: true });
            }
        }
        let mut items: Vec<Option<ItemLogps>> = vec![None; dataset.len()];
        for indices in plan_epoch(dataset.lengths(), BatchSize::rows(batch_size), 0, 0) {
            let mut present = Vec::new();
            let mut partners = Vec::new();
            for i in indices {
                let item = dataset.item(i, t)?;
                if kl_pairs {
                    partners.push(partner(dataset, i, t)?);
                }
                present.push((i, item));
            }
            if present.is_empty() {
                continue;
            }
            let refs: Vec<&Item> = present.iter().map(|(_, item)| item).collect();
            let partner_refs: Vec<&Item> = partners.iter().collect();
            let batch = assemble(&refs, kl_pairs.then_some(&partner_refs[..]), 1, max_len, None);
            let logps = source.logps(policy, &batch.inputs, &batch.targets, None)?;
            // Batch rows are the items' first sequences, then their second ones (pairs).
            let sequences = refs[0].examples.len();
            let lengths: Vec<usize> = (0..sequences).flat_map(|k| refs.iter().map(move |item| item.examples[k].tokens.len())).collect();
            let rows = split_rows(&logps, &lengths)?;
            let kl_rows = match &batch.kl {
                Some(kl) => {
                    let lengths: Vec<usize> = refs.iter().zip(&partners).map(|(item, p)| item.examples[0].with_completion_of(&p.examples[0], max_len).tokens.len()).collect();
                    Some(split_rows(&source.logps(policy, &kl.inputs, &kl.targets, None)?, &lengths)?)
                }
                None => None,
            };
            let n = refs.len();
            for (j, (i, _)) in present.iter().enumerate() {
                items[*i] = Some(ItemLogps {
                    sequences: (0..sequences).map(|k| rows[k * n + j].clone()).collect(),
                    kl: kl_rows.as_ref().map(|r| r[j].clone()),
                });
            }
        }
        cache.store(&key, &encode(&items)).map_err(|e| TrainError::Config(format!("data cache: {e}")))?;
        Ok(ReferenceTable { items, cache_hit: false })
    }

    /// The precomputed rows for a batch of these dataset indices, in batch row order.
    pub fn rows(&self, indices: &[usize], sequences: usize) -> Option<(Vec<&[f32]>, Option<Vec<&[f32]>>)> {
        let items: Vec<&ItemLogps> = indices.iter().map(|&i| self.items.get(i)?.as_ref()).collect::<Option<_>>()?;
        let rows = (0..sequences).flat_map(|k| items.iter().map(move |it| it.sequences.get(k).map(Vec::as_slice))).collect::<Option<Vec<_>>>()?;
        let kl = items.iter().map(|it| it.kl.as_deref()).collect::<Option<Vec<_>>>();
        Some((rows, kl))
    }
}

const MAGIC: &[u8; 4] = b"HRL1";

fn encode(items: &[Option<ItemLogps>]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    let put = |out: &mut Vec<u8>, v: &[f32]| {
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
    };
    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
    for item in items {
        match item {
            None => out.push(0),
            Some(it) => {
                out.push(1 + u8::from(it.kl.is_some()));
                out.push(it.sequences.len() as u8);
                it.sequences.iter().for_each(|s| put(&mut out, s));
                if let Some(kl) = &it.kl {
                    put(&mut out, kl);
                }
            }
        }
    }
    out
}

fn decode(data: &[u8]) -> Option<Vec<Option<ItemLogps>>> {
    let mut r = crate::data::ByteReader::new(data);
    if r.take(4)? != MAGIC {
        return None;
    }
    let count = r.u64()? as usize;
    let mut items = Vec::with_capacity(count.min(1 << 24));
    for _ in 0..count {
        let tag = r.byte()?;
        if tag == 0 {
            items.push(None);
            continue;
        }
        let sequences = (0..r.byte()?).map(|_| r.f32s()).collect::<Option<Vec<_>>>()?;
        let kl = if tag == 2 { Some(r.f32s()?) } else { None };
        items.push(Some(ItemLogps { sequences, kl }));
    }
    r.at_end().then_some(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip_and_reject_truncation() {
        let items = vec![
            Some(ItemLogps { sequences: vec![vec![-1.0, -2.5], vec![-0.25]], kl: None }),
            None,
            Some(ItemLogps { sequences: vec![vec![-3.0]], kl: Some(vec![-0.5, -0.75]) }),
        ];
        let blob = encode(&items);
        assert_eq!(decode(&blob), Some(items));
        assert_eq!(decode(&blob[..blob.len() - 1]), None);
        assert_eq!(decode(b"HRL1"), None);
    }
}
