//! Optimizer plumbing shared by the trainers.

mod learning_rate;

pub use learning_rate::{LearningRate, ScheduledOptimizer};
