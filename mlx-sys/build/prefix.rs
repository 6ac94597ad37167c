//! Where libmlx and its headers come from: `MLX_DIR`, or a PyPI wheel installed into OUT_DIR with pip.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use crate::{out_dir, pip, PINNED_MLX};

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
    pip::install_once(&spec, &target, |t| t.join("mlx/lib").join(lib_name()).is_file()).unwrap_or_else(|e| {
        panic!("cannot install MLX: {e}; or set MLX_WHEEL to a local .whl file, or MLX_DIR to an MLX prefix")
    });
    Prefix { root, origin: format!("wheel {spec}"), wheel_root: Some(target) }
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
