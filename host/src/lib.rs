//! The `host` runtime: MLX, models, trainers and the plugin registry behind the `host` command.

pub mod cache;
pub mod config;
pub mod data;
pub mod dist;
pub mod environment;
pub mod fixture;
pub mod generate;
pub mod gguf;
pub mod lora;
pub mod model;
pub mod nn;
pub mod optim;
pub mod plugins;
pub mod runtime;
pub mod tensor_file;
pub mod tensorboard;
pub mod text;
pub mod tools;
pub mod train;
