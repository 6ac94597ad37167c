use mlx_rs::{error::Exception, Array};

/// The mask of one attention call.
pub enum AttentionMask {
    /// Every key is visible (a single new query over a plain cache).
    None,
    /// Causal, aligned so the last query sees the last key (MLX's built-in mode).
    Causal,
    /// Boolean `[B or 1, 1, L, S]`, true where a query may attend.
    Array(Array),
}

impl AttentionMask {
    /// The mask for `queries` new tokens at absolute positions `query_start..`, over keys whose absolute
    /// positions are `key_positions` (in slot order): causal, within an optional sliding `window` of recent
    /// positions that spares the first `keep`, and hiding from row b the positions below `padding[b]` (its
    /// left padding).
    pub fn build(
        queries: usize,
        key_positions: &[usize],
        query_start: usize,
        window: Option<usize>,
        keep: usize,
        padding: &[usize],
    ) -> Result<AttentionMask, Exception> {
        let contiguous = key_positions.iter().enumerate().all(|(i, &p)| i == p);
        let padded = padding.iter().any(|&p| p > 0);
        let windowed = window.is_some_and(|w| query_start + queries > w);
        if contiguous && !padded && !windowed && query_start + queries == key_positions.len() {
            return Ok(if queries == 1 { AttentionMask::None } else { AttentionMask::Causal });
        }
        let rows = padding.len().max(1);
        let slots = key_positions.len();
        let mut visible = Vec::with_capacity(rows * queries * slots);
        for b in 0..rows {
            let pad = padding.get(b).copied().unwrap_or(0);
            for q in 0..queries {
                let qpos = query_start + q;
                for &kpos in key_positions {
                    let causal = kpos <= qpos;
                    // Future keys (a prefill chunk over a rotating cache) are hidden by `causal`; no underflow here.
                    let in_window = window.is_none_or(|w| kpos < keep || qpos.saturating_sub(kpos) < w);
                    visible.push(causal && in_window && kpos >= pad);
                }
            }
        }
        Ok(AttentionMask::Array(Array::from_slice(&visible, &[rows as i32, 1, queries as i32, slots as i32])))
    }
}
