//! Rows packed side by side into one sequence (padding-free batches). Attention is confined to each row by a
//! block-diagonal causal mask built from the rows' segment ids. Positions are not restarted per row: every
//! position scheme the families use (RoPE with or without scaling, none at all) makes a score depend on the
//! distance between query and key only, so a row attends exactly as it would from position 0; the only
//! difference is the rounding of larger rotation angles.

use std::cell::RefCell;

use mlx_rs::{error::Exception, ops, Array};

use crate::cache::AttentionMask;

/// `[P, W]` int32: at each position of P packed sequences, 1 + the index of the row it belongs to, 0 at
/// padding. Padding positions form a segment of their own (they see each other), so no query is left without
/// a key (a fully masked softmax row is NaN, which the backward pass would spread).
#[derive(Clone)]
pub struct Segments {
    ids: Array,
    /// Masks built so far, by window: one per forward pass and window, not one per layer.
    masks: RefCell<Vec<(Option<usize>, Array)>>,
}

impl Segments {
    pub fn new(ids: Array) -> Self {
        Segments { ids, masks: RefCell::new(Vec::new()) }
    }

    pub fn ids(&self) -> &Array {
        &self.ids
    }

    /// The boolean `[P, 1, W, W]` mask: same segment, key not after the query, and with `window` at most
    /// `window - 1` positions back (a sliding-window layer).
    pub fn mask(&self, window: Option<usize>) -> Result<AttentionMask, Exception> {
        if let Some((_, m)) = self.masks.borrow().iter().find(|(w, _)| *w == window) {
            return Ok(AttentionMask::Array(m.clone()));
        }
        let m = self.build(window)?;
        self.masks.borrow_mut().push((window, m.clone()));
        Ok(AttentionMask::Array(m))
    }

    fn build(&self, window: Option<usize>) -> Result<Array, Exception> {
        let ids = &self.ids;
        let width = ids.shape()[1];
        let positions = ops::arange::<_, i32>(0, width, None)?;
        let (queries, keys) = (positions.reshape(&[width, 1])?, positions.reshape(&[1, width])?);
        let mut visible = keys.le(&queries)?;
        if let Some(w) = window {
            visible = visible.logical_and(&queries.subtract(&keys)?.lt(Array::from_int(w as i32))?)?;
        }
        let same = ids.expand_dims(2)?.eq(&ids.expand_dims(1)?)?;
        same.logical_and(&visible)?.expand_dims(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_is_causal_within_each_segment() {
        let s = Segments::new(Array::from_slice(&[1i32, 1, 1, 2, 2, 0], &[1, 6]));
        let AttentionMask::Array(m) = s.mask(None).unwrap() else { panic!("an array mask") };
        assert_eq!(m.shape(), &[1, 1, 6, 6]);
        #[rustfmt::skip]
        let expected = [
            true,  false, false, false, false, false,
            true,  true,  false, false, false, false,
            true,  true,  true,  false, false, false,
            false, false, false, true,  false, false,
            false, false, false, true,  true,  false,
            false, false, false, false, false, true,
        ];
        assert_eq!(m.as_slice::<bool>(), &expected);
        // A window of 2: a query sees itself and the one before, within its segment.
        let AttentionMask::Array(w) = s.mask(Some(2)).unwrap() else { panic!("an array mask") };
        let row2: Vec<bool> = w.as_slice::<bool>()[12..18].to_vec();
        assert_eq!(row2, [false, true, true, false, false, false]);
    }
}
