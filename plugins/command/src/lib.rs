//! Plugins served by a long-lived child process in any language, over the JSON-lines protocol of
//! [`protocol`]: the `command` reward and the `command` environment. `python/host_plugin.py` (embedded here and put on the child's
//! `PYTHONPATH`) lets a Python user write `def score(prompts, completions, **columns)` as in TRL.

pub mod child;
mod environment;
pub mod protocol;
mod reward;

pub use child::{ChildProcess, ChildSettings};
pub use environment::CommandEnvironment;
pub use reward::CommandReward;
