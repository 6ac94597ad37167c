use serde::de::DeserializeOwned;

use crate::PluginError;

/// Deserializes a plugin's table into its config struct; errors name the offending key path, e.g.
/// "`min_lr`: invalid type: string \"a\", expected f64".
pub fn from_table<T: DeserializeOwned>(table: &toml::Table) -> Result<T, PluginError> {
    let value = toml::Value::Table(table.clone());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            PluginError::Config(e.inner().to_string())
        } else {
            PluginError::Config(format!("`{path}`: {}", e.inner()))
        }
    })
}
