//! Wheels from PyPI, installed with `pip install --target` into this build's OUT_DIR (never system-wide):
//! MLX itself, libclang when the system has none, OpenBLAS when the system has none.

use std::{env, fs, path::Path, process::Command};

/// Installs `spec` (a requirement or a local `.whl`) without dependencies into `target`, replacing whatever
/// was there. `--target` keeps the wheel's layout, which the bundled libraries' RPATHs rely on.
pub fn install(spec: &str, target: &Path) -> Result<(), String> {
    let _ = fs::remove_dir_all(target);
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--no-deps", "--only-binary=:all:", "--no-compile"])
        .args(["--disable-pip-version-check", "--quiet", "--target"])
        .arg(target)
        .arg(spec)
        .status()
        .map_err(|e| format!("cannot run `{python} -m pip` ({e}); install python3 with pip or set PYTHON"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{python} -m pip install {spec}` failed; check network access to PyPI"))
    }
}

/// Installs `spec` into `target` unless a stamp there says the same spec (and, for a local wheel file, the
/// same size and mtime) is already installed and `ready` holds for the result.
pub fn install_once(spec: &str, target: &Path, ready: impl Fn(&Path) -> bool) -> Result<(), String> {
    let stamp = target.join(".mlx-sys-stamp");
    let stamp_text = format!("{spec}\n{}\n", local_wheel_identity(spec));
    if fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_text.as_str()) && ready(target) {
        return Ok(());
    }
    install(spec, target)?;
    if !ready(target) {
        return Err(format!("the wheel `{spec}` installed into {} lacks the expected files", target.display()));
    }
    fs::write(&stamp, stamp_text).map_err(|e| format!("cannot write {}: {e}", stamp.display()))
}

/// A local wheel file is identified by its size and modification time, so replacing it reinstalls.
fn local_wheel_identity(spec: &str) -> String {
    if spec.ends_with(".whl") {
        println!("cargo:rerun-if-changed={spec}");
        if let Ok(meta) = fs::metadata(spec) {
            let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            return format!("{} {:?}", meta.len(), modified);
        }
    }
    String::new()
}
