//! The plugin registry: built-ins linked into the host plus plugins loaded from cdylibs, looked up by kind
//! and name.

mod builtin;
mod dylib;
mod registry;

pub use registry::{Origin, PluginInfo, Registry, RegistryError};
