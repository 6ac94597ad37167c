//! Built-in rewards for GRPO. Each scores a batch of completions; a completion a reward does not apply to
//! scores `None` (left out of that reward's mean and of the weighted sum, as TRL treats NaN).

mod exact_answer;
mod length_penalty;
mod overlong;
mod regex_format;

pub use exact_answer::ExactAnswer;
pub use length_penalty::LengthPenalty;
pub use overlong::Overlong;
pub use regex_format::RegexFormat;
