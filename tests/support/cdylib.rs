// Shared by test crates (included with #[path]): where cargo put a cdylib built as a dev-dependency.

use std::path::PathBuf;

/// The newest `lib<name>*.so` next to the running test binary (cargo builds dev-dependencies' cdylibs into
/// the same `deps` directory).
pub fn cdylib(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("test binary lives in target/<profile>/deps");
    let prefix = format!("lib{name}");
    let mut found: Vec<PathBuf> = std::fs::read_dir(deps)
        .expect("deps dir is readable")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let file = p.file_name().unwrap_or_default().to_string_lossy();
            file.starts_with(&prefix) && file.ends_with(".so")
        })
        .collect();
    found.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    found.pop().unwrap_or_else(|| panic!("{prefix}*.so not found in {}", deps.display()))
}
