//! Plugins served by a long-lived child process in any language, over the JSON-lines protocol of
//! [`protocol`]: the `command` reward. `python/host_plugin.py` (embedded here and put on the child's
//! `PYTHONPATH`) lets a Python user write `def score(prompts, completions, **columns)` as in TRL.

pub mod child;
pub mod protocol;
mod reward;

pub use child::{ChildProcess, ChildSettings};
pub use reward::CommandReward;
