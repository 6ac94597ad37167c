use thiserror::Error;

/// What a plugin, or a call into one, can fail with.
#[non_exhaustive]
#[derive(Debug, Error)]
pub enum PluginError {
    /// The plugin's TOML table is not what it accepts; the message names the key.
    #[error("{0}")]
    Config(String),
    /// Inputs the plugin cannot work with (missing arrays, wrong shapes, out-of-range values).
    #[error("{0}")]
    Invalid(String),
    #[error("MLX: {0}")]
    Mlx(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A cdylib plugin returned an error status.
    #[error("{0}")]
    Failed(String),
    /// A plugin panicked; the panic was caught at the boundary.
    #[error("plugin panicked: {0}")]
    Panicked(String),
}

impl From<mlx_rs::error::Exception> for PluginError {
    fn from(e: mlx_rs::error::Exception) -> Self {
        PluginError::Mlx(e.what().to_owned())
    }
}
