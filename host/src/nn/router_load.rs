//! The routers' load-balancing loss (Switch Transformer's auxiliary loss, as transformers'
//! `load_balancing_loss_func` computes it for Mixtral, Qwen3-MoE and gpt-oss): over every sparse layer's
//! real tokens, with f_e the share of expert choices that went to expert e and P_e its mean router
//! probability (softmax over all experts), the loss is E · Σ_e f_e · P_e. It is E·k·(1/E) = k when routing is
//! uniform and grows as a few experts take the load. Only P carries a gradient.
//!
//! transformers concatenates the layers' router logits before taking the means, so f and P are means over
//! (layer, token) pairs, not per-layer losses averaged: each layer contributes sums here, divided once at the end.

use mlx_rs::{error::Exception, ops, Array, Dtype};

/// Summed routing statistics of the sparse layers seen so far.
#[derive(Debug, Clone)]
pub struct RouterLoad {
    /// `[E]`: how often each expert was chosen (over layers, real tokens and the k slots).
    counts: Array,
    /// `[E]`: each expert's router probability summed over layers and real tokens.
    probs: Array,
    layers: i32,
}

impl RouterLoad {
    /// One layer's statistics from its router logits `[B, L, E]` and chosen experts `[B, L, k]`, over the
    /// positions where `real` (`[B, L]`, 1 or 0) is 1.
    pub fn of_layer(logits: &Array, inds: &Array, real: &Array) -> Result<Self, Exception> {
        let experts = logits.shape()[logits.ndim() - 1];
        let weight = real.as_dtype(Dtype::Float32)?.expand_dims(-1)?;
        let probs = ops::softmax_axis(&logits.as_dtype(Dtype::Float32)?, -1, true)?;
        let probs = probs.multiply(&weight)?.sum_axes(&[0, 1], false)?;
        // One-hot of each choice, [B, L, k, E], summed over the k slots: a choice is a count, not a gradient.
        let ids = ops::arange::<_, i32>(0, experts, None)?;
        let chosen = mlx_rs::stop_gradient(&inds.as_dtype(Dtype::Int32)?.expand_dims(-1)?)?.eq(&ids)?.as_dtype(Dtype::Float32)?;
        let counts = chosen.sum_axis(2, false)?.multiply(&weight)?.sum_axes(&[0, 1], false)?;
        Ok(RouterLoad { counts, probs, layers: 1 })
    }

    /// Both sets of layers together.
    pub fn merge(self, other: RouterLoad) -> Result<Self, Exception> {
        Ok(RouterLoad { counts: self.counts.add(other.counts)?, probs: self.probs.add(other.probs)?, layers: self.layers + other.layers })
    }

    /// E · Σ_e f_e · P_e, with `tokens` (a scalar) the number of real positions each layer saw.
    pub fn loss(&self, tokens: &Array) -> Result<Array, Exception> {
        let experts = self.probs.shape()[0] as f32;
        let seen = ops::maximum(tokens.as_dtype(Dtype::Float32)?.multiply(Array::from_f32(self.layers as f32))?, Array::from_f32(1.0))?;
        let f = self.counts.divide(&seen)?;
        let p = self.probs.divide(&seen)?;
        f.multiply(&p)?.sum(None)?.multiply(Array::from_f32(experts))
    }

    /// One layer's counts and probabilities, for a checkpointed layer to return ([`RouterLoad::of_one_layer`]
    /// puts them back); None when this spans more than one layer.
    pub fn layer_parts(self) -> Option<[Array; 2]> {
        (self.layers == 1).then(|| [self.counts, self.probs])
    }

    pub fn of_one_layer(counts: Array, probs: Array) -> Self {
        RouterLoad { counts, probs, layers: 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_balancing_loss_by_hand() {
        // Two layers, two experts, top-1, one row of three positions of which the last is padding.
        // Layer 1 logits per token: [0, 0] → p = [½, ½], chooses expert 0 (tie: either is a count of 1);
        // [ln 3, 0] → p = [¾, ¼], chooses 0. Layer 2: [0, ln 3] → [¼, ¾], chooses 1; [0, 0] → chooses 1.
        // The padded position chooses expert 0 with p = [1, 0]-ish and must not count.
        let l3 = 3f32.ln();
        let real = Array::from_slice(&[1.0f32, 1.0, 0.0], &[1, 3]);
        let l1 = RouterLoad::of_layer(
            &Array::from_slice(&[0.0f32, 0.0, l3, 0.0, 30.0, 0.0], &[1, 3, 2]),
            &Array::from_slice(&[0i32, 0, 0], &[1, 3, 1]),
            &real,
        )
        .unwrap();
        let l2 = RouterLoad::of_layer(
            &Array::from_slice(&[0.0f32, l3, 0.0, 0.0, 30.0, 0.0], &[1, 3, 2]),
            &Array::from_slice(&[1i32, 1, 0], &[1, 3, 1]),
            &real,
        )
        .unwrap();
        let both = l1.merge(l2).unwrap();
        // Four (layer, token) pairs: f = [2/4, 2/4]; P = [(½ + ¾ + ¼ + ½)/4, (½ + ¼ + ¾ + ½)/4] = [½, ½].
        // Loss = 2 · (½·½ + ½·½) = 1 (balanced top-1 gives k = 1).
        let loss = both.loss(&Array::from_f32(2.0)).unwrap().item_exact::<f32>();
        assert!((loss - 1.0).abs() < 1e-6, "{loss}");

        // Layer 1 alone: f = [1, 0], P = [(½ + ¾)/2, (½ + ¼)/2] = [0.625, 0.375]; loss = 2 · 0.625 = 1.25.
        let l1 = RouterLoad::of_layer(
            &Array::from_slice(&[0.0f32, 0.0, l3, 0.0, 30.0, 0.0], &[1, 3, 2]),
            &Array::from_slice(&[0i32, 0, 0], &[1, 3, 1]),
            &real,
        )
        .unwrap();
        let loss = l1.loss(&Array::from_f32(2.0)).unwrap().item_exact::<f32>();
        assert!((loss - 1.25).abs() < 1e-6, "{loss}");
    }

    #[test]
    fn top_k_choices_each_count() {
        // Top-2 of three experts over one token: both chosen experts count once. p = softmax([1, 2, 3]).
        let logits = Array::from_slice(&[1.0f32, 2.0, 3.0], &[1, 1, 3]);
        let load = RouterLoad::of_layer(&logits, &Array::from_slice(&[2i32, 1], &[1, 1, 2]), &Array::from_slice(&[1.0f32], &[1, 1])).unwrap();
        let z = 1f32.exp() + 2f32.exp() + 3f32.exp();
        let want = 3.0 * (2f32.exp() + 3f32.exp()) / z;
        let loss = load.loss(&Array::from_f32(1.0)).unwrap().item_exact::<f32>();
        assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
    }
}
