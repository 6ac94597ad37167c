//! Where libmlx and its headers come from: `MLX_DIR`, or a PyPI wheel installed into OUT_DIR with pip.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{out_dir, PINNED_MLX};

pub struct Prefix {
    /// Holds include/mlx/mlx.h and lib/libmlx.{so,dylib}.
    pub root: PathBuf,
    /// What the user asked for, for messages and the stamp.
    pub origin: String,
    /// The wheel's install root (site-packages-like) when we installed it; None for MLX_DIR.
    pub wheel_root: Option<PathBuf>,
}

pub fn lib_name() -> &'static str {
    if cfg!(target_os = "macos") {
        "libmlx.dylib"
    } else {
        "libmlx.so"
    }
}

fn default_wheel() -> String {
    if cfg!(target_os = "macos") {
        format!("mlx-metal=={PINNED_MLX}")
    } else {
        format!("mlx-cpu=={PINNED_MLX}")
    }
}

pub fn resolve() -> Prefix {
    if let Some(dir) = env::var_os("MLX_DIR") {
        let root = PathBuf::from(dir);
        if !root.join("include/mlx/mlx.h").is_file() || !root.join("lib").join(lib_name()).is_file() {
            panic!(
                "MLX_DIR={} must contain include/mlx/mlx.h and lib/{} (an MLX install prefix, e.g. the `mlx` \
                 folder of an installed wheel)",
                root.display(),
                lib_name()
            );
        }
        return Prefix { origin: format!("MLX_DIR={}", root.display()), root, wheel_root: None };
    }
    let spec = env::var("MLX_WHEEL").unwrap_or_else(|_| default_wheel());
    let target = out_dir().join("mlx-wheel");
    let root = target.join("mlx");
    let stamp = target.join(".mlx-sys-stamp");
    let stamp_text = format!("{spec}\n{}\n", local_wheel_identity(&spec));
    let installed = fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_text.as_str())
        && root.join("lib").join(lib_name()).is_file();
    if !installed {
        pip_install(&spec, &target);
        if !root.join("lib").join(lib_name()).is_file() {
            panic!("the wheel `{spec}` has no mlx/lib/{}; is it an MLX wheel?", lib_name());
        }
        fs::write(&stamp, stamp_text).expect("OUT_DIR is writable");
    }
    Prefix { root, origin: format!("wheel {spec}"), wheel_root: Some(target) }
}

/// A local wheel file is identified by its size and modification time, so replacing it reinstalls.
fn local_wheel_identity(spec: &str) -> String {
    let path = Path::new(spec);
    if spec.ends_with(".whl") {
        println!("cargo:rerun-if-changed={spec}");
        if let Ok(meta) = fs::metadata(path) {
            let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            return format!("{} {:?}", meta.len(), modified);
        }
    }
    String::new()
}

fn pip_install(spec: &str, target: &Path) {
    let _ = fs::remove_dir_all(target);
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    // --target keeps the wheel's layout (mlx/{lib,include}, <name>.libs/), which libmlx's RPATH relies on.
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--no-deps", "--only-binary=:all:", "--no-compile"])
        .args(["--disable-pip-version-check", "--quiet", "--target"])
        .arg(target)
        .arg(spec)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run `{python} -m pip` to fetch MLX ({e}); install python3 with pip, set PYTHON, or set MLX_DIR")
        });
    if !status.success() {
        panic!(
            "`{python} -m pip install {spec}` failed; check network access to PyPI, or set MLX_WHEEL to a local \
             .whl file, or MLX_DIR to an MLX prefix"
        );
    }
}

pub fn mlx_version(root: &Path) -> String {
    let path = root.join("include/mlx/version.h");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("#define {name} ")).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("{} does not define {name}", path.display()))
    };
    format!("{}.{}.{}", get("MLX_VERSION_MAJOR"), get("MLX_VERSION_MINOR"), get("MLX_VERSION_PATCH"))
}
