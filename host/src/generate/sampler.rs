//! Token sampling over a batch of logits, with mlx-lm's filters: repetition penalty over recent tokens, then
//! top-p, min-p and top-k on the log-probabilities, then a categorical draw at the temperature.

use mlx_rs::{error::Exception, ops, ops::argpartition_axis, ops::indexing::{argmax_axis, take_along_axis, put_along_axis}, random, Array, Dtype};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// 0 samples greedily.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability mass reaches `top_p` (1 disables).
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens (0 disables).
    pub top_k: i32,
    /// Keep tokens at least `min_p` times as likely as the most likely one (0 disables).
    pub min_p: f32,
    /// Divide positive and multiply negative logits of recent tokens by this (1 disables).
    pub repetition_penalty: f32,
    /// How many of the most recent tokens (prompt included) the penalty covers.
    pub repetition_context: usize,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig { temperature: 0.0, top_p: 1.0, top_k: 0, min_p: 0.0, repetition_penalty: 1.0, repetition_context: 20 }
    }
}

impl SamplerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.top_k < 0 {
            return Err(format!("top_k must be ≥ 0, got {}", self.top_k));
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return Err(format!("min_p must be in [0, 1), got {}", self.min_p));
        }
        if !(self.repetition_penalty > 0.0) {
            return Err(format!("repetition_penalty must be > 0, got {}", self.repetition_penalty));
        }
        Ok(())
    }
}

/// Draws tokens with a private PRNG stream, so a seed reproduces a generation exactly.
pub struct Sampler {
    config: SamplerConfig,
    key: Array,
}

fn neg_inf() -> Array {
    Array::from_f32(f32::NEG_INFINITY)
}

impl Sampler {
    pub fn new(config: SamplerConfig, seed: u64) -> Result<Self, Exception> {
        Ok(Sampler { config, key: random::key(seed)? })
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Penalizes, for each row, the logits of its last `repetition_context` tokens.
    fn penalize(&self, logits: &Array, history: &[&[u32]]) -> Result<Array, Exception> {
        let c = &self.config;
        if c.repetition_penalty == 1.0 || history.iter().all(|h| h.is_empty()) {
            return Ok(logits.clone());
        }
        let width = history.iter().map(|h| h.len().min(c.repetition_context)).max().unwrap_or(0).max(1);
        let mut index = Vec::with_capacity(history.len() * width);
        let mut real = Vec::with_capacity(history.len() * width);
        for h in history {
            let recent = &h[h.len().saturating_sub(c.repetition_context)..];
            for i in 0..width {
                index.push(recent.get(i).or(recent.first()).copied().unwrap_or(0) as i32);
                real.push(i < recent.len());
            }
        }
        let shape = [history.len() as i32, width as i32];
        let index = Array::from_slice(&index, &shape);
        let real = Array::from_slice(&real, &shape);
        let selected = take_along_axis(logits, &index, -1)?;
        let p = Array::from_f32(c.repetition_penalty);
        let penalized = ops::select(&selected.lt(Array::from_f32(0.0))?, &selected.multiply(&p)?, &selected.divide(&p)?)?;
        // Padding slots (rows with shorter histories) write back their unchanged value.
        let values = ops::select(&real, &penalized, &selected)?;
        put_along_axis(logits, &index, &values, -1)
    }

    /// Samples one token per row of `logits` [B, V]. Returns the tokens [B] (int32) and their log-probability
    /// under the model's own distribution (before penalty, filters and temperature) [B].
    pub fn sample(&mut self, logits: &Array, history: &[&[u32]]) -> Result<(Array, Array), Exception> {
        let logits = logits.as_dtype(Dtype::Float32)?;
        let model_logprobs = logits.subtract(logits.logsumexp_axis(-1, true)?)?;
        let adjusted = self.penalize(&logits, history)?;
        let c = &self.config;
        let tokens = if c.temperature == 0.0 {
            argmax_axis(&adjusted, -1, None)?
        } else {
            let mut lp = adjusted.subtract(adjusted.logsumexp_axis(-1, true)?)?;
            if c.top_p < 1.0 {
                // Exclude the low tail whose cumulative mass (ascending) stays within 1 − top_p.
                let order = ops::argsort_axis(&lp, -1)?;
                let sorted = take_along_axis(&lp, &order, -1)?;
                let cumulative = sorted.exp()?.cumsum(-1, None, None)?;
                let kept = ops::select(&cumulative.gt(Array::from_f32(1.0 - c.top_p))?, &sorted, &neg_inf())?;
                lp = put_along_axis(&lp, &order, &kept, -1)?;
            }
            if c.min_p > 0.0 {
                let threshold = lp.max_axis(-1, true)?.add(Array::from_f32(c.min_p.ln()))?;
                lp = ops::select(&lp.lt(&threshold)?, &neg_inf(), &lp)?;
            }
            let vocab = lp.shape()[1];
            if c.top_k > 0 && c.top_k < vocab {
                let order = argpartition_axis(lp.negative()?, c.top_k - 1, -1)?;
                let dropped = order.index((.., c.top_k..));
                let fill = ops::broadcast_to(neg_inf(), dropped.shape())?;
                lp = put_along_axis(&lp, &dropped, &fill, -1)?;
            }
            let (next, sub) = random::split(&self.key, 2)?;
            self.key = next;
            random::categorical(lp.multiply(Array::from_f32(1.0 / c.temperature))?, -1, None, &sub)?
        };
        let tokens = tokens.as_dtype(Dtype::Int32)?;
        let chosen = take_along_axis(&model_logprobs, &tokens.expand_dims(-1)?, -1)?.squeeze_axes(&[-1])?;
        Ok((tokens, chosen))
    }
}

use mlx_rs::ops::indexing::IndexOp;

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Array {
        // Row 0: probabilities ∝ e^[2, 1, 0, −1]; row 1 prefers token 3.
        Array::from_slice(&[2.0f32, 1.0, 0.0, -1.0, 0.0, 0.5, 1.0, 3.0], &[2, 4])
    }

    fn counts(config: SamplerConfig, draws: usize) -> Vec<[usize; 4]> {
        let mut sampler = Sampler::new(config, 7).unwrap();
        let mut counts = vec![[0usize; 4]; 2];
        for _ in 0..draws {
            let (t, _) = sampler.sample(&logits(), &[&[], &[]]).unwrap();
            for (row, &tok) in t.as_slice::<i32>().iter().enumerate() {
                counts[row][tok as usize] += 1;
            }
        }
        counts
    }

    #[test]
    fn greedy_takes_the_argmax_and_reports_model_logprobs() {
        let mut s = Sampler::new(SamplerConfig::default(), 0).unwrap();
        let (t, lp) = s.sample(&logits(), &[&[], &[]]).unwrap();
        assert_eq!(t.as_slice::<i32>(), &[0, 3]);
        let z: f64 = [2.0f64, 1.0, 0.0, -1.0].iter().map(|x| x.exp()).sum();
        assert!((f64::from(lp.as_slice::<f32>()[0]) - (2.0 - z.ln())).abs() < 1e-6);
    }

    #[test]
    fn repetition_penalty_changes_the_argmax() {
        // Penalty 3 on token 0 of row 0: 2/3 < 1, so token 1 wins; row 1's history is empty.
        let config = SamplerConfig { repetition_penalty: 3.0, ..Default::default() };
        let mut s = Sampler::new(config, 0).unwrap();
        let (t, _) = s.sample(&logits(), &[&[0, 0], &[]]).unwrap();
        assert_eq!(t.as_slice::<i32>(), &[1, 3]);
        // Row 1: 3/3 = 1.0 ties with token 2's 1.0; argmax keeps the first.
        let (t, _) = s.sample(&logits(), &[&[], &[3]]).unwrap();
        assert_eq!(t.as_slice::<i32>()[1], 2);
        // Negative logits are multiplied: row 0's token 3 goes from −1 to −3 and stays last; token 0 still wins.
        let (t, _) = s.sample(&logits(), &[&[3], &[]]).unwrap();
        assert_eq!(t.as_slice::<i32>(), &[0, 3]);
    }

    #[test]
    fn filters_restrict_the_support() {
        // top_k 2: only tokens 0, 1 (row 0) and 3, 2 (row 1) are ever drawn.
        let c = counts(SamplerConfig { temperature: 1.0, top_k: 2, ..Default::default() }, 300);
        assert_eq!(c[0][2] + c[0][3], 0, "{c:?}");
        assert_eq!(c[1][0] + c[1][1], 0, "{c:?}");
        // min_p 0.3: tokens under 0.3 × max probability vanish (row 0: e^0/e^2 = 0.135 → tokens 2, 3).
        let c = counts(SamplerConfig { temperature: 1.0, min_p: 0.3, ..Default::default() }, 300);
        assert_eq!(c[0][2] + c[0][3], 0, "{c:?}");
        assert!(c[0][1] > 0);
        // top_p 0.6: row 0's token 0 alone has 0.644 ≥ 0.6.
        let c = counts(SamplerConfig { temperature: 1.0, top_p: 0.6, ..Default::default() }, 200);
        assert_eq!(c[0][0], 200, "{c:?}");
    }

    #[test]
    fn sampling_follows_the_distribution_and_is_reproducible() {
        let c = counts(SamplerConfig { temperature: 1.0, ..Default::default() }, 2000);
        let z: f64 = [2.0f64, 1.0, 0.0, -1.0].iter().map(|x| x.exp()).sum();
        for (tok, logit) in [2.0f64, 1.0, 0.0, -1.0].iter().enumerate() {
            let expected = logit.exp() / z * 2000.0;
            // 4 standard deviations of a binomial count.
            let sd = (expected * (1.0 - expected / 2000.0)).sqrt();
            assert!((c[0][tok] as f64 - expected).abs() < 4.0 * sd, "token {tok}: {} vs {expected}", c[0][tok]);
        }
        assert_eq!(counts(SamplerConfig { temperature: 1.0, ..Default::default() }, 50), counts(SamplerConfig { temperature: 1.0, ..Default::default() }, 50));
    }
}
