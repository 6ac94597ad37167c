//! Multi-turn decoding on one KV cache: each row generates a turn, the caller answers every finished turn
//! with observation tokens (a tool's reply rendered through the chat template) or ends the episode, and the
//! rows that go on continue in the same cache: it is realigned so their histories end together again (the
//! rows that ended and the positions decoded after a row's end of turn are dropped), the observations are
//! prefilled after them, and decoding resumes. Nothing already in the cache is computed twice except, per
//! row, the few last history tokens that fill out the observation block (see [`block_plan`]).

use std::time::Instant;

use mlx_rs::{error::Exception, ops::indexing::IndexOp, transforms::async_eval, Array};

use super::{
    decode::{prefill_groups, step, Prefilled},
    Completion, FinishReason, GenerateOptions, GenerationStats, Sampler,
};
use crate::{
    cache::{KvCache, Realign},
    model::CausalLm,
};

/// Limits of an episode besides `GenerateOptions::max_tokens` (the limit of one turn).
#[derive(Debug, Clone, Copy)]
pub struct EpisodeLimits {
    /// Assistant turns per episode.
    pub max_turns: usize,
    /// Tokens after the prompt per episode: generated and observed together.
    pub max_tokens: usize,
}

/// A turn that just ended, for the caller to answer.
#[derive(Debug)]
pub struct TurnEnd<'a> {
    /// The episode (prompt p's g-th sample is episode p · group + g).
    pub episode: usize,
    /// The tokens this turn generated (its EOS included when it has one).
    pub tokens: &'a [u32],
    pub finish: FinishReason,
    /// Assistant turns so far, this one included.
    pub turn: usize,
    /// The episode cannot go on: the turn did not end with EOS, it was the last turn, or the budget is spent.
    /// Observation tokens returned for it are ignored.
    pub last: bool,
}

/// The caller's answer to a finished turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Append these tokens (never empty) and let the model continue.
    Observe(Vec<u32>),
    End,
}

/// How the rows that go on are laid out for the observation prefill: `histories[i]` tokens already in row i's
/// sequence and `observations[i]` new ones. The block fed to the model is `width` = max(observation + 1)
/// positions wide, so each row's block is its observation after its last history tokens (at least the last
/// one, whose key and value may not be cached yet: a row's final sampled token is not always fed back);
/// everything before the block stays in the cache. Returns the realign plan (cache length, kept tokens) and,
/// per row, how many history tokens its block re-feeds and its total left padding.
pub(crate) fn block_plan(histories: &[usize], observations: &[usize], rows: Vec<usize>) -> (Realign, usize, Vec<usize>, Vec<usize>) {
    let totals: Vec<usize> = histories.iter().zip(observations).map(|(h, o)| h + o).collect();
    let width = observations.iter().map(|o| o + 1).max().unwrap_or(1);
    let len = totals.iter().copied().max().unwrap_or(0);
    let keep: Vec<usize> = totals.iter().map(|n| n.saturating_sub(width)).collect();
    let refed: Vec<usize> = histories.iter().zip(&keep).map(|(h, k)| h - k).collect();
    let padding: Vec<usize> = totals.iter().map(|n| len - n).collect();
    (Realign { rows, keep, len: len - width }, width, refed, padding)
}

/// Generates `group` episodes for each prompt. `answer` is called once per round with every turn that ended in
/// it and returns one [`Next`] per turn, in order. Returns one completion per episode (prompt 0's episodes
/// first): the tokens after the prompt, generated and observed, with `observations` marking the observed
/// ranges (log-prob 0); `finish` is how the last turn ended (`Length` also when an observation did not fit the
/// budget). `caches` must be fresh and realignable (`cache::for_episodes`).
#[allow(clippy::too_many_arguments)]
pub fn generate_episodes<E: From<Exception>>(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    group: usize,
    caches: &mut [Box<dyn KvCache>],
    sampler: &mut Sampler,
    options: &GenerateOptions,
    limits: EpisodeLimits,
    answer: &mut dyn FnMut(&[TurnEnd<'_>]) -> Result<Vec<Next>, E>,
) -> Result<(Vec<Completion>, GenerationStats), E> {
    let group = group.max(1);
    let episodes = prompts.len() * group;
    let mut completions: Vec<Completion> = (0..episodes).map(|_| Completion::empty()).collect();
    let budget = limits.max_tokens;
    if episodes == 0 || options.max_tokens == 0 || budget == 0 {
        return Ok((completions, GenerationStats::default()));
    }
    if prompts.iter().any(Vec::is_empty) {
        return Err(Exception::custom("a prompt has no tokens").into());
    }
    let Prefilled { mut tokens, mut logprobs, mut history, mut stats, start } = prefill_groups(model, prompts, group, caches, sampler, options)?;
    // Batch row b holds episode `active[b]`; `history[b]` is its whole sequence (prompt and completion).
    let mut active: Vec<usize> = (0..episodes).collect();
    let mut turns = vec![0usize; episodes];
    let mut first = true;
    let mut decode_start = Instant::now();
    let mut observed_seconds = 0.0;
    loop {
        // One turn for every active row, in lockstep.
        let rows = active.len();
        let limit: Vec<usize> = active.iter().map(|&e| options.max_tokens.min(budget - completions[e].tokens.len())).collect();
        let longest = limit.iter().copied().max().unwrap_or(0);
        let mut turn_len = vec![0usize; rows];
        let mut finish = vec![FinishReason::Length; rows];
        let mut done = vec![false; rows];
        for n in 0..longest {
            let next = if n + 1 < longest {
                let refs: Vec<&[u32]> = history.iter().map(Vec::as_slice).collect();
                let out = step(model, &tokens.expand_dims(-1)?, caches, sampler, &refs)?;
                async_eval([&out.0, &out.1])?;
                Some(out)
            } else {
                None
            };
            mlx_rs::transforms::eval([&tokens, &logprobs])?;
            let values: Vec<i32> = tokens.as_slice::<i32>().to_vec();
            let lps: Vec<f32> = logprobs.as_slice::<f32>().to_vec();
            if first {
                stats.prompt_seconds = start.elapsed().as_secs_f64();
                decode_start = Instant::now();
                first = false;
            }
            for b in 0..rows {
                if done[b] {
                    continue;
                }
                let token = values[b] as u32;
                let c = &mut completions[active[b]];
                history[b].push(token);
                c.tokens.push(token);
                c.logprobs.push(lps[b]);
                turn_len[b] += 1;
                stats.generated_tokens += 1;
                if options.eos_ids.contains(&token) {
                    finish[b] = FinishReason::Eos;
                    done[b] = true;
                } else if turn_len[b] >= limit[b] {
                    done[b] = true;
                }
            }
            if done.iter().all(|&d| d) {
                break;
            }
            match next {
                Some((t, l)) => (tokens, logprobs) = (t, l),
                None => break,
            }
        }

        // The caller answers every turn.
        let ends: Vec<TurnEnd<'_>> = (0..rows)
            .map(|b| {
                let e = active[b];
                turns[e] += 1;
                let c = &completions[e];
                let last = finish[b] != FinishReason::Eos || turns[e] >= limits.max_turns || c.tokens.len() + 1 >= budget;
                TurnEnd { episode: e, tokens: &c.tokens[c.tokens.len() - turn_len[b]..], finish: finish[b], turn: turns[e], last }
            })
            .collect();
        let lasts: Vec<bool> = ends.iter().map(|t| t.last).collect();
        let answers = answer(&ends)?;
        drop(ends);
        if answers.len() != rows {
            return Err(Exception::custom(format!("{} answers for {rows} finished turns", answers.len())).into());
        }
        let mut go_on: Vec<(usize, Vec<u32>)> = Vec::new();
        for (b, (next, last)) in answers.into_iter().zip(lasts).enumerate() {
            let e = active[b];
            completions[e].finish = finish[b];
            match next {
                Next::Observe(obs) if !last => {
                    if obs.is_empty() {
                        return Err(Exception::custom(format!("episode {e}: an empty observation")).into());
                    }
                    // An observation that leaves no room for a token of reply ends the episode as cut off.
                    if completions[e].tokens.len() + obs.len() >= budget {
                        completions[e].finish = FinishReason::Length;
                    } else {
                        go_on.push((b, obs));
                    }
                }
                _ => {}
            }
        }
        if go_on.is_empty() {
            break;
        }

        // Realign the rows that go on and prefill their observations.
        let t = Instant::now();
        let histories: Vec<usize> = go_on.iter().map(|(b, _)| history[*b].len()).collect();
        let observations: Vec<usize> = go_on.iter().map(|(_, o)| o.len()).collect();
        let (plan, width, refed, padding) = block_plan(&histories, &observations, go_on.iter().map(|(b, _)| *b).collect());
        for cache in caches.iter_mut() {
            cache.realign(&plan)?;
            cache.set_left_padding(padding.clone());
        }
        let mut block = Vec::with_capacity(go_on.len() * width);
        let mut new_history = Vec::with_capacity(go_on.len());
        let mut new_active = Vec::with_capacity(go_on.len());
        for (i, (b, obs)) in go_on.into_iter().enumerate() {
            let h = &history[b];
            let fed: Vec<u32> = h[h.len() - refed[i]..].iter().chain(&obs).copied().collect();
            block.extend(std::iter::repeat_n(options.pad_id as i32, width - fed.len()));
            block.extend(fed.iter().map(|&t| t as i32));
            let e = active[b];
            let c = &mut completions[e];
            let at = c.tokens.len();
            c.tokens.extend(&obs);
            c.logprobs.extend(std::iter::repeat_n(0.0, obs.len()));
            c.observations.push(at..at + obs.len());
            let mut hist = history[b].clone();
            hist.extend(&obs);
            new_history.push(hist);
            new_active.push(e);
            stats.prompt_tokens += obs.len();
        }
        let block = Array::from_slice(&block, &[new_active.len() as i32, width as i32]);
        history = new_history;
        active = new_active;
        let chunk = options.prefill_step.max(1);
        let mut at = 0;
        while width - at > chunk {
            let logits = model.forward(&block.index((.., at as i32..(at + chunk) as i32)), Some(caches))?;
            drop(logits);
            mlx_rs::transforms::eval(caches.iter().flat_map(|c| c.state()))?;
            at += chunk;
        }
        let refs: Vec<&[u32]> = history.iter().map(Vec::as_slice).collect();
        (tokens, logprobs) = step(model, &block.index((.., at as i32..)), caches, sampler, &refs)?;
        async_eval([&tokens, &logprobs])?;
        observed_seconds += t.elapsed().as_secs_f64();
    }
    stats.decode_seconds = decode_start.elapsed().as_secs_f64() - observed_seconds;
    stats.prompt_seconds += observed_seconds;
    stats.peak_memory_bytes = mlx_rs::memory::peak_memory().unwrap_or(0);
    Ok((completions, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_re_feeds_history_so_every_row_ends_together() {
        // Row 0: 10 history tokens and 3 observed; row 1: 6 and 1. The block is 4 wide (3 + 1); row 0 re-feeds
        // its last token, row 1 its last three; both end at position 13.
        let (plan, width, refed, padding) = block_plan(&[10, 6], &[3, 1], vec![2, 0]);
        assert_eq!(width, 4);
        assert_eq!(plan, Realign { rows: vec![2, 0], keep: vec![9, 3], len: 9 });
        assert_eq!(refed, vec![1, 3]);
        assert_eq!(padding, vec![0, 6]);
        // Cached + block = each row's total, behind its padding.
        for i in 0..2 {
            assert_eq!(padding[i] + plan.keep[i] + refed[i] + [3, 1][i], plan.len + width);
        }
        // A history shorter than the block: nothing stays cached, the block is left-padded.
        let (plan, width, refed, padding) = block_plan(&[2, 20], &[1, 5], vec![0, 1]);
        assert_eq!((width, plan.keep.clone(), plan.len, refed, padding), (6, vec![0, 19], 19, vec![2, 1], vec![22, 0]));
    }
}
