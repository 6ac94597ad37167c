//! The `host` runtime: MLX, models, trainers and the plugin registry behind the `host` command.

pub mod runtime;
