use std::{fmt, path::PathBuf};

use thiserror::Error;

/// A tensor whose shape differs between the model and the checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Misshaped {
    pub name: String,
    pub expected: Vec<i32>,
    pub found: Vec<i32>,
}

/// Everything wrong with a checkpoint's tensors, reported together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightMismatch {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub misshaped: Vec<Misshaped>,
}

impl WeightMismatch {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.misshaped.is_empty()
    }
}

impl fmt::Display for WeightMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for name in &self.missing {
            write!(f, "\n  missing: {name}")?;
        }
        for name in &self.unexpected {
            write!(f, "\n  unexpected: {name}")?;
        }
        for m in &self.misshaped {
            write!(f, "\n  wrong shape: {} is {:?} in the checkpoint, the model needs {:?}", m.name, m.found, m.expected)?;
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error(
        "{}: model_type `{model_type}` is not supported; supported: {} (a family is added as one file in host/src/model/ named after its model_type, mapping its config onto the decoder, listed in model::FAMILIES)",
        path.display(),
        supported.join(", ")
    )]
    UnknownModelType { path: PathBuf, model_type: String, supported: Vec<String> },
    #[error("{}: the checkpoint does not fit the model:{mismatch}", dir.display())]
    Weights { dir: PathBuf, mismatch: WeightMismatch },
    #[error("model `{name}` not found: {message}")]
    NotFound { name: String, message: String },
    #[error("MLX: {0}")]
    Mlx(String),
}

impl From<mlx_rs::error::Exception> for ModelError {
    fn from(e: mlx_rs::error::Exception) -> Self {
        ModelError::Mlx(e.what().to_owned())
    }
}

impl ModelError {
    pub fn file(path: impl Into<PathBuf>, message: impl fmt::Display) -> Self {
        ModelError::File { path: path.into(), message: message.to_string() }
    }
}
