//! Opening cdylib plugins. Libraries are opened once per file and never closed: unloading code whose thread
//! locals or statics are still referenced crashes, and plugin instances may outlive any scope here.

use std::path::{Path, PathBuf};

use sdk::abi::{
    import::{self, Library},
    EntryFn, ENTRY_SYMBOL,
};

use super::RegistryError;

/// A checked library, alive for the rest of the process.
pub struct LoadedLibrary {
    pub path: PathBuf,
    pub library: Library,
}

pub fn open(path: &Path) -> Result<&'static LoadedLibrary, RegistryError> {
    let load_error = |message: String| RegistryError::Load { path: path.to_owned(), message };
    if !path.is_file() {
        return Err(load_error("no such file".to_owned()));
    }
    // SAFETY: opening runs the library's initialisers; a plugin is trusted code the user chose to load.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| load_error(e.to_string()))?;
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    // SAFETY: the symbol's type is fixed by the ABI; the descriptor it returns is static in the library.
    let entry = unsafe { lib.get::<EntryFn>(ENTRY_SYMBOL.as_bytes()) }
        .map_err(|_| load_error(format!("exports no `{ENTRY_SYMBOL}`: not a plugin library (see sdk::export_plugins!)")))?;
    let host = import::host_api();
    let library = std::panic::catch_unwind(|| unsafe { import::read_descriptor(entry(&host)) })
        .map_err(|_| load_error("the entry point panicked".to_owned()))?
        .map_err(|error| RegistryError::Abi { path: path.to_owned(), error })?;
    Ok(Box::leak(Box::new(LoadedLibrary { path: path.to_owned(), library })))
}
