//! Generation with the KV cache: sampling, and batched decoding of left-padded prompts that returns the
//! sampled token ids with their log-probabilities.

mod decode;
mod sampler;
mod turns;

pub use decode::{generate, generate_groups, Completion, Control, FinishReason, GenerateOptions, GenerationStats, TokenSink};
pub use sampler::{Sampler, SamplerConfig};
pub use turns::{generate_episodes, EpisodeLimits, Next, TurnEnd};
