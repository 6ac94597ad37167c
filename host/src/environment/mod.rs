//! Multi-turn GRPO episodes: the model answers a prompt in turns, an [`Environment`] plugin answers each turn
//! (tool results, or the end of the episode with its reward), and everything happens on one KV cache per
//! batch (`generate::generate_episodes`). This module is the glue between the two: it parses each turn's tool
//! calls in the model family's format, keeps every episode's conversation as chat messages, renders what the
//! environment answers through the chat template into tokens, and counts what happened.
//!
//! Rendering: an observation's tokens are what the template adds to the conversation for the new messages and
//! the next generation prompt: render(conversation + messages, generation prompt) minus render(conversation),
//! preceded by whatever the template writes after the assistant's end-of-turn token (Qwen's newline after
//! `<|im_end|>`), since the model stopped at that token. A template that renders the earlier conversation
//! differently once more messages follow is refused (the tokens could not continue the cache).
//!
//! A turn whose call marker does not parse gets the observation `error: malformed tool call: <why>` from the
//! host itself (the environment never sees it), counted in `env/malformed_calls`; on an episode's last turn
//! the environment is asked for its reward as for any other last turn.

pub mod calculator;

use sdk::{EnvReply, EnvTurn, Environment};
use serde_json::{json, Value};

use crate::{
    config::EnvironmentConfig,
    data::PromptRow,
    generate::{generate_episodes, Completion, EpisodeLimits, FinishReason, GenerateOptions, GenerationStats, Next, Sampler, TurnEnd},
    model::CausalLm,
    cache::KvCache,
    text::TextTokenizer,
    tools::{CallFormat, Parsed},
    train::TrainError,
};

/// The environment of a run and how its episodes are bounded.
pub struct Episodes {
    env: Box<dyn Environment>,
    /// The environment's reward in metrics, and its weight in the sum.
    pub name: String,
    pub weight: f64,
    format: CallFormat,
    tools: Vec<Value>,
    pub limits: EpisodeLimits,
}

/// What happened in a batch of episodes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpisodeStats {
    pub episodes: usize,
    /// Assistant turns over all episodes, and the most in one.
    pub turns: usize,
    pub most_turns: usize,
    pub tool_calls: usize,
    pub malformed_calls: usize,
    /// Episodes the host ended (turn limit, token budget, a turn cut off by `max_tokens`), not the environment.
    pub truncated: usize,
    pub observation_tokens: usize,
    pub generated_tokens: usize,
}

impl EpisodeStats {
    pub fn add(&mut self, o: &EpisodeStats) {
        self.episodes += o.episodes;
        self.turns += o.turns;
        self.most_turns = self.most_turns.max(o.most_turns);
        self.tool_calls += o.tool_calls;
        self.malformed_calls += o.malformed_calls;
        self.truncated += o.truncated;
        self.observation_tokens += o.observation_tokens;
        self.generated_tokens += o.generated_tokens;
    }

    /// The `env/*` metrics.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let per = |x: usize| x as f64 / self.episodes.max(1) as f64;
        vec![
            ("env/turns".into(), per(self.turns)),
            ("env/max_turns".into(), self.most_turns as f64),
            ("env/tool_calls".into(), per(self.tool_calls)),
            ("env/malformed_calls".into(), self.malformed_calls as f64),
            ("env/truncated".into(), per(self.truncated)),
            ("env/observation_tokens".into(), per(self.observation_tokens)),
            ("env/tokens_per_turn".into(), self.generated_tokens as f64 / self.turns.max(1) as f64),
        ]
    }
}

/// A batch of finished episodes.
pub struct EpisodeBatch {
    pub completions: Vec<Completion>,
    /// Each episode after its prompt, special tokens kept (for logs).
    pub transcripts: Vec<String>,
    /// Each episode's last assistant turn (what `[[reward]]` functions score).
    pub answers: Vec<String>,
    /// The environment's reward per episode.
    pub rewards: Vec<Option<f64>>,
    pub stats: GenerationStats,
    pub episodes: EpisodeStats,
}

/// One episode's conversation while it runs.
struct Conversation {
    messages: Vec<Value>,
    reward: Option<f64>,
    truncated: bool,
    answer: String,
}

impl Episodes {
    /// The environment `config` names, for a model of `model_type` whose turns are at most `turn_tokens` long.
    pub fn new(mut env: Box<dyn Environment>, config: &EnvironmentConfig, model_type: &str, turn_tokens: usize) -> Result<Self, TrainError> {
        let name = config.reward_name();
        let format = match &config.tool_call_format {
            Some(f) => CallFormat::parse_name(f).ok_or_else(|| TrainError::Config(format!("[environment] tool_call_format `{f}` is not one of hermes, llama3_json, mistral")))?,
            None => CallFormat::of_model_type(model_type).ok_or_else(|| {
                TrainError::Config(format!("[environment]: model_type `{model_type}` has no tool-call format we know; set tool_call_format (hermes, llama3_json or mistral)"))
            })?,
        };
        let tools = env.tools().map_err(|e| TrainError::Reward(format!("environment `{name}`: {e}")))?;
        let limits = EpisodeLimits { max_turns: config.max_turns, max_tokens: config.episode_tokens(turn_tokens) };
        Ok(Episodes { env, name, weight: config.weight, format, tools, limits })
    }

    /// The tool schemas, for rendering prompts.
    pub fn tools(&self) -> &[Value] {
        &self.tools
    }

    /// Runs `group` episodes for each prompt; a failing environment is a `TrainError::Reward` naming it.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        tokenizer: &TextTokenizer,
        model: &CausalLm,
        prompts: &[&PromptRow],
        group: usize,
        caches: &mut [Box<dyn KvCache>],
        sampler: &mut Sampler,
        options: &GenerateOptions,
    ) -> Result<EpisodeBatch, TrainError> {
        let group = group.max(1);
        let mut talks: Vec<Conversation> = (0..prompts.len() * group)
            .map(|e| Conversation { messages: prompts[e / group].messages.clone(), reward: None, truncated: false, answer: String::new() })
            .collect();
        let mut counts = EpisodeStats { episodes: talks.len(), ..Default::default() };
        let tokens: Vec<Vec<u32>> = prompts.iter().map(|p| p.tokens.clone()).collect();
        let rows: Vec<Value> = prompts
            .iter()
            .map(|p| serde_json::from_str(&p.row).map_err(|e| TrainError::Config(format!("prompt row {}: {e}", p.line))))
            .collect::<Result<_, _>>()?;
        let (env, name, format, tools) = (&mut self.env, &self.name, self.format, &self.tools);
        let mut answer = |ends: &[TurnEnd<'_>]| -> Result<Vec<Next>, TrainError> {
            answer_turns(ends, &mut talks, &rows, group, &mut counts, env.as_mut(), name, format, tools, tokenizer)
        };
        let (completions, stats) = generate_episodes(model, &tokens, group, caches, sampler, options, self.limits, &mut answer)?;
        for (talk, c) in talks.iter_mut().zip(&completions) {
            // An observation that did not fit the budget ends the episode as the host's decision.
            if c.finish == FinishReason::Length {
                talk.truncated = true;
            }
        }
        counts.truncated = talks.iter().filter(|t| t.truncated).count();
        counts.observation_tokens = completions.iter().flat_map(|c| &c.observations).map(|r| r.len()).sum();
        counts.generated_tokens = completions.iter().map(|c| c.tokens.len()).sum::<usize>() - counts.observation_tokens;
        let transcripts = completions
            .iter()
            .map(|c| tokenizer.decode(&c.tokens, false).map_err(|e| TrainError::Mlx(format!("decoding an episode: {e}"))))
            .collect::<Result<Vec<String>, TrainError>>()?;
        Ok(EpisodeBatch {
            completions,
            transcripts,
            answers: talks.iter().map(|t| t.answer.clone()).collect(),
            rewards: talks.iter().map(|t| t.reward).collect(),
            stats,
            episodes: counts,
        })
    }
}

/// Answers one round of finished turns: records each assistant turn, asks the environment about those it
/// must see (one call for the round), and renders the observations.
#[allow(clippy::too_many_arguments)]
fn answer_turns(
    ends: &[TurnEnd<'_>],
    talks: &mut [Conversation],
    rows: &[Value],
    group: usize,
    counts: &mut EpisodeStats,
    env: &mut dyn Environment,
    name: &str,
    format: CallFormat,
    tools: &[Value],
    tokenizer: &TextTokenizer,
) -> Result<Vec<Next>, TrainError> {
    let mut next = vec![Next::End; ends.len()];
    // (index in `ends`, number of calls) of the turns the environment sees.
    let mut asked: Vec<(usize, usize)> = Vec::new();
    let mut turns: Vec<EnvTurn> = Vec::new();
    for (i, end) in ends.iter().enumerate() {
        let talk = &mut talks[end.episode];
        counts.turns += 1;
        counts.most_turns = counts.most_turns.max(end.turn);
        let content = tokenizer.decode(end.tokens, true).map_err(TrainError::Mlx)?;
        let mut message = json!({"role": "assistant", "content": content});
        let parsed = format.parse(&content);
        talk.answer = content;
        let calls = match &parsed {
            Parsed::Calls(calls) => {
                counts.tool_calls += calls.len();
                message["tool_calls"] = Value::Array(
                    calls.iter().map(|c| json!({"type": "function", "function": {"name": c.name, "arguments": c.arguments}})).collect(),
                );
                calls.len()
            }
            Parsed::Malformed(_) => {
                counts.malformed_calls += 1;
                0
            }
            Parsed::Answer => 0,
        };
        talk.messages.push(message);
        // A turn cut off by max_tokens, or a call the episode has no room to answer: the host ended it.
        talk.truncated = end.last && (end.finish != FinishReason::Eos || calls > 0);
        match parsed {
            Parsed::Malformed(why) if !end.last => {
                let observation = [json!({"role": "tool", "content": format!("error: malformed tool call: {why}")})];
                next[i] = Next::Observe(observation_tokens(tokenizer, &talk.messages, &observation, tools, end.tokens.last().copied())?);
                talk.messages.extend(observation);
            }
            _ => {
                asked.push((i, calls));
                turns.push(EnvTurn { row: rows[end.episode / group].clone(), messages: talk.messages.clone(), turn: end.turn as u32, last: end.last });
            }
        }
    }
    if turns.is_empty() {
        return Ok(next);
    }
    let replies = env.step(&turns).map_err(|e| TrainError::Reward(format!("environment `{name}`: {e}")))?;
    if replies.len() != turns.len() {
        return Err(TrainError::Reward(format!("environment `{name}` returned {} replies for {} turns", replies.len(), turns.len())));
    }
    for ((i, calls), reply) in asked.into_iter().zip(replies) {
        let end = &ends[i];
        let talk = &mut talks[end.episode];
        match reply {
            EnvReply::Done(reward) => {
                if let Some(r) = reward.filter(|r| !r.is_finite()) {
                    return Err(TrainError::Reward(format!("environment `{name}` returned the reward {r}; return None for \"no reward\"")));
                }
                talk.reward = reward;
            }
            // The episode cannot go on: the environment should have ended it; it gets no reward of its own.
            EnvReply::Observe(_) if end.last => talk.truncated = true,
            EnvReply::Observe(contents) => {
                if calls > 0 && contents.len() != calls {
                    return Err(TrainError::Reward(format!("environment `{name}` returned {} tool messages for {calls} tool calls", contents.len())));
                }
                // Results of calls are tool messages; a reply to an answer without calls speaks as the user.
                let role = if calls > 0 { "tool" } else { "user" };
                let messages: Vec<Value> = contents.into_iter().map(|c| json!({"role": role, "content": c})).collect();
                next[i] = Next::Observe(observation_tokens(tokenizer, &talk.messages, &messages, tools, end.tokens.last().copied())?);
                talk.messages.extend(messages);
            }
        }
    }
    Ok(next)
}

/// The tokens that continue `conversation` (ending with the assistant turn that generated `last_token`) with
/// `messages` and the next generation prompt.
pub fn observation_tokens(tokenizer: &TextTokenizer, conversation: &[Value], messages: &[Value], tools: &[Value], last_token: Option<u32>) -> Result<Vec<u32>, TrainError> {
    let tools = (!tools.is_empty()).then_some(tools);
    let bad = |m: String| TrainError::Config(format!("rendering an observation through the chat template: {m}"));
    let before = tokenizer.render_chat(conversation, tools, false).map_err(bad)?;
    let all: Vec<Value> = conversation.iter().chain(messages).cloned().collect();
    let after = tokenizer.render_chat(&all, tools, true).map_err(bad)?;
    let Some(added) = after.strip_prefix(before.as_str()) else {
        return Err(TrainError::Config(
            "the chat template renders the earlier conversation differently once a tool message follows, so an observation cannot continue the KV cache; multi-turn rollouts need a template whose earlier turns do not change".into(),
        ));
    };
    // What the template writes after the end-of-turn token the model stopped at.
    let tail = match last_token.filter(|t| tokenizer.eos_ids.contains(t)) {
        Some(t) => {
            let eos = tokenizer.decode(&[t], false).map_err(TrainError::Mlx)?;
            match before.rfind(&eos) {
                Some(at) if !eos.is_empty() => &before[at + eos.len()..],
                _ => "",
            }
        }
        None => "",
    };
    let tokens = tokenizer.encode(&format!("{tail}{added}"), false).map_err(TrainError::Mlx)?;
    if tokens.is_empty() {
        return Err(TrainError::Config("the chat template added nothing for an observation".into()));
    }
    Ok(tokens)
}

/// Keeps the built-in environments' registrations in the binary.
pub fn keep_linked() {
    calculator::keep_linked();
}
