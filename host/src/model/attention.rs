//! The attention kernels of the decoder: the fused SDPA (in query blocks on the CPU), and explicit scores
//! where the fused kernel cannot go (soft-capping, quantized keys and values), sinks joining the softmax.

use mlx_rs::{
    error::Exception,
    fast::{self, ScaledDotProductAttentionMask},
    ops,
    ops::indexing::IndexOp,
    Array, Dtype,
};

use crate::{cache::AttentionMask, nn::Quant};

/// New tokens per attention call when many arrive at once on the CPU. MLX's CPU attention exponentiates every
/// score, masked or not, and the exponential dominates prefill there; in blocks of queries the masked upper
/// triangle is skipped (37% fewer exponentials for a 512-token prompt).
const QUERY_BLOCK: i32 = 128;

fn on_cpu() -> bool {
    !matches!(mlx_rs::Device::try_default().and_then(|d| d.get_type()), Ok(mlx_rs::DeviceType::Gpu))
}

pub(super) fn dense_attention(q: &Array, k: &Array, v: &Array, scale: f32, mask: &AttentionMask, sinks: Option<&Array>) -> Result<Array, Exception> {
    let (queries, keys) = (q.shape()[2], k.shape()[2]);
    if queries <= QUERY_BLOCK || matches!(mask, AttentionMask::None) || !on_cpu() {
        return sdpa(q, k, v, scale, mask, sinks);
    }
    let mut blocks = Vec::new();
    for start in (0..queries).step_by(QUERY_BLOCK as usize) {
        let end = (start + QUERY_BLOCK).min(queries);
        // The block's last query sees the keys up to its own position, no further.
        let visible = keys - queries + end;
        let (qb, kb, vb) = (q.index((.., .., start..end, ..)), k.index((.., .., ..visible, ..)), v.index((.., .., ..visible, ..)));
        let mb = match mask {
            AttentionMask::Array(m) => AttentionMask::Array(m.index((.., .., start..end, ..visible))),
            _ => AttentionMask::Causal,
        };
        // Each query's softmax is whole within its block, so a sink joins it there as in one call.
        blocks.push(sdpa(&qb, &kb, &vb, scale, &mb, sinks)?);
    }
    ops::concatenate(&blocks, 2)
}

fn sdpa(q: &Array, k: &Array, v: &Array, scale: f32, mask: &AttentionMask, sinks: Option<&Array>) -> Result<Array, Exception> {
    match mask {
        AttentionMask::None => fast::scaled_dot_product_attention(q, k, v, scale, None, sinks),
        AttentionMask::Causal => fast::scaled_dot_product_attention(q, k, v, scale, ScaledDotProductAttentionMask::Causal, sinks),
        AttentionMask::Array(m) => fast::scaled_dot_product_attention(q, k, v, scale, m, sinks),
    }
}

/// `mask` as booleans for scores `[B, kv_heads, repeats, L, S]` (None: everything visible).
fn visible(mask: &AttentionMask, l: i32, keys_len: i32) -> Result<Option<Array>, Exception> {
    Ok(match mask {
        AttentionMask::None => None,
        AttentionMask::Causal => {
            let qpos = ops::arange::<_, i32>(keys_len - l, keys_len, None)?.reshape(&[l, 1])?;
            let kpos = ops::arange::<_, i32>(0, keys_len, None)?.reshape(&[1, keys_len])?;
            Some(kpos.le(&qpos)?)
        }
        // [B, 1, L, S] → [B, 1, 1, L, S] to broadcast over KV heads and their query groups.
        AttentionMask::Array(m) => Some(m.expand_dims(2)?),
    })
}

/// Masked scores set to the dtype's lowest finite value, not −∞ (as mlx-lm): a query that sees no key at
/// all (a left-padding position) then gets finite uniform weights instead of NaN, which a later matmul
/// would spread into every row that attends over it, even with weight 0.
fn masked(scores: Array, visible: Option<Array>) -> Result<Array, Exception> {
    let Some(visible) = visible else { return Ok(scores) };
    let lowest = match scores.dtype() {
        Dtype::Float16 => -65504.0,
        Dtype::Bfloat16 => -3.38e38,
        _ => f32::MIN,
    };
    ops::select(&visible, &scores, Array::from_f32(lowest).as_dtype(scores.dtype())?)
}

/// The softmax over the last axis of scores [B, kv_heads, repeats, L, S], with each query head's sink logit
/// (`sinks` [heads]) joining it as one more column that has no value: what the fused kernel computes.
fn softmax_with_sinks(scores: &Array, sinks: Option<&Array>) -> Result<Array, Exception> {
    let Some(sinks) = sinks else { return ops::softmax_axis(scores, -1, true) };
    let s = scores.shape();
    let (b, kv, rep, l, keys) = (s[0], s[1], s[2], s[3], s[4]);
    let column = ops::broadcast_to(sinks.as_dtype(scores.dtype())?.reshape(&[1, kv, rep, 1, 1])?, &[b, kv, rep, l, 1])?;
    let probs = ops::softmax_axis(&ops::concatenate(&[scores.clone(), column], -1)?, -1, true)?;
    Ok(probs.index((.., .., .., .., ..keys)))
}

/// Attention with explicit scores, soft-capped before the mask and softmax (mlx-lm's gemma2 order):
/// q·scale, s = q·kᵀ, cap·tanh(s/cap), mask, softmax, ·v; query heads grouped over their KV head.
#[allow(clippy::too_many_arguments)]
pub(super) fn softcapped_attention(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    mask: &AttentionMask,
    cap: f32,
    kv_heads: i32,
    sinks: Option<&Array>,
) -> Result<Array, Exception> {
    let s = q.shape();
    let (b, heads, l, d) = (s[0], s[1], s[2], s[3]);
    let q = q.multiply(Array::from_f32(scale).as_dtype(q.dtype())?)?.reshape(&[b, kv_heads, heads / kv_heads, l, d])?;
    let (k, v) = (k.expand_dims(2)?, v.expand_dims(2)?);
    let scores = crate::nn::softcap(&q.matmul(k.swap_axes(-1, -2)?)?, cap)?;
    let scores = masked(scores, visible(mask, l, k.shape()[3])?)?;
    let probs = softmax_with_sinks(&scores, sinks)?;
    probs.matmul(&v)?.reshape(&[b, heads, l, d])
}

/// Attention over quantized keys and values (mlx-lm's `quantized_scaled_dot_product_attention`): scores and
/// outputs come from quantized matmuls, with query heads grouped over their shared KV head.
#[allow(clippy::too_many_arguments)]
pub(super) fn quantized_attention(
    q: &Array,
    keys: &[Array; 3],
    values: &[Array; 3],
    scale: f32,
    mask: &AttentionMask,
    quant: Quant,
    kv_heads: i32,
    softcap: Option<f32>,
    sinks: Option<&Array>,
) -> Result<Array, Exception> {
    let s = q.shape();
    let (b, heads, l, d) = (s[0], s[1], s[2], s[3]);
    let repeats = heads / kv_heads;
    let q = q.multiply(Array::from_f32(scale))?.reshape(&[b, kv_heads, repeats, l, d])?;
    let grouped = |t: &[Array; 3]| -> Result<Vec<Array>, Exception> { t.iter().map(|a| a.expand_dims(2)).collect() };
    let (k, v) = (grouped(keys)?, grouped(values)?);
    let mut scores = ops::quantized_matmul(&q, &k[0], &k[1], &k[2], true, quant.group_size, quant.bits)?;
    if let Some(cap) = softcap {
        scores = crate::nn::softcap(&scores, cap)?;
    }
    let scores = masked(scores, visible(mask, l, keys[0].shape()[2])?)?;
    let probs = softmax_with_sinks(&scores, sinks)?;
    let out = ops::quantized_matmul(&probs, &v[0], &v[1], &v[2], false, quant.group_size, quant.bits)?;
    out.reshape(&[b, heads, l, d])
}

#[cfg(test)]
mod tests {
    use mlx_rs::random;

    use super::*;

    fn max_diff(a: &Array, b: &Array) -> f32 {
        a.subtract(b).unwrap().abs().unwrap().max(None).unwrap().item_exact::<f32>()
    }

    #[test]
    fn sinks_in_explicit_scores_equal_the_fused_kernel() {
        // Softcapped attention with a cap so large that cap·tanh(s/cap) = s to float precision: only the sink
        // handling differs between the two paths. Without sinks the fused result must differ (they matter).
        let key = random::key(4).unwrap();
        let keys3 = random::split(&key, 3).unwrap();
        let (b, heads, kv_heads, l, d) = (2, 4, 2, 5, 8);
        let q = random::normal::<f32>(&[b, heads, l, d], None, None, &key).unwrap();
        let k = random::normal::<f32>(&[b, kv_heads, l, d], None, None, &keys3.0).unwrap();
        let v = random::normal::<f32>(&[b, kv_heads, l, d], None, None, &keys3.1).unwrap();
        let sinks = Array::from_slice(&[0.5f32, -1.0, 2.0, 0.0], &[4]);
        let fused = sdpa(&q, &k, &v, 0.35, &AttentionMask::Causal, Some(&sinks)).unwrap();
        let explicit = softcapped_attention(&q, &k, &v, 0.35, &AttentionMask::Causal, 1e6, kv_heads, Some(&sinks)).unwrap();
        assert!(max_diff(&fused, &explicit) < 1e-5, "{}", max_diff(&fused, &explicit));
        let without = sdpa(&q, &k, &v, 0.35, &AttentionMask::Causal, None).unwrap();
        assert!(max_diff(&fused, &without) > 1e-2);
    }

    #[test]
    fn query_blocks_give_the_same_attention() {
        let key = random::key(3).unwrap();
        let (b, heads, kv_heads, d) = (2, 4, 2, 16);
        // 300 new tokens after 20 cached ones: three blocks, the last one partial.
        let (queries, keys) = (300, 320);
        let q = random::normal::<f32>(&[b, heads, queries, d], None, None, &key).unwrap();
        let k = random::normal::<f32>(&[b, kv_heads, keys, d], None, None, &random::split(&key, 2).unwrap().0).unwrap();
        let v = random::normal::<f32>(&[b, kv_heads, keys, d], None, None, &random::split(&key, 2).unwrap().1).unwrap();
        let scale = 0.25;
        let whole = sdpa(&q, &k, &v, scale, &AttentionMask::Causal, None).unwrap();
        let blocked = dense_attention(&q, &k, &v, scale, &AttentionMask::Causal, None).unwrap();
        assert!(max_diff(&whole, &blocked) < 1e-5);
        // With an explicit mask (row 1 left-padded by 7 slots).
        let positions: Vec<usize> = (0..keys as usize).collect();
        let mask = crate::cache::AttentionMask::build(queries as usize, &positions, 20, None, 0, &[0, 7]).unwrap();
        let whole = sdpa(&q, &k, &v, scale, &mask, None).unwrap();
        let blocked = dense_attention(&q, &k, &v, scale, &mask, None).unwrap();
        assert!(max_diff(&whole, &blocked) < 1e-5);
    }
}
