//! Build script of our `mlx-sys` 0.7.0: MLX comes from a PyPI wheel (or an existing prefix), mlx-c is
//! compiled from the sources shipped in the crates.io package `mlx-sys-0.7.0` into a static archive, and
//! bindgen writes the Rust declarations mlx-rs 0.33.0 expects. See ../README.md for every knob.

mod bindings;
mod blas;
mod mlx_c;
mod pip;
mod prefix;

use std::{env, path::PathBuf};

/// The MLX release the mlx-c inside mlx-sys 0.7.0 was written against; any other fails to compile or link.
pub const PINNED_MLX: &str = "0.32.2";
pub const MLX_C_CRATE_VERSION: &str = "0.7.0";
/// Bumped whenever the compile-id mapping in src/compile_ids.rs changes meaning.
pub const COMPILE_ID_MARKER: &str = "compile-ids=heap-cell-v1";

const ENV_KNOBS: &[&str] = &[
    "MLX_DIR",
    "MLX_WHEEL",
    "MLX_BLAS",
    "MLX_BLAS_DIR",
    "MLX_OPENBLAS_WHEEL",
    "MLX_C_DIR",
    "MLX_C_UNITY",
    "MLX_C_OPT_LEVEL",
    "MLX_ALLOW_VERSION_MISMATCH",
    "LIBCLANG_PATH",
    "PYTHON",
];

pub fn out_dir() -> PathBuf {
    PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts"))
}

/// Build scripts report through cargo's warning channel: it is the only output cargo shows by default.
pub fn say(message: impl AsRef<str>) {
    println!("cargo:warning=mlx-sys: {}", message.as_ref());
}

fn main() {
    for var in ENV_KNOBS {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build");
    println!("cargo:rerun-if-changed=compat/std_format_polyfill.h");
    println!("cargo::rustc-check-cfg=cfg(mlx_sys_half_compat)");

    let prefix = prefix::resolve();
    let version = prefix::mlx_version(&prefix.root);
    if version != PINNED_MLX && env::var_os("MLX_ALLOW_VERSION_MISMATCH").is_none() {
        panic!(
            "MLX {version} found at {}, but the mlx-c of mlx-sys {MLX_C_CRATE_VERSION} (used by mlx-rs 0.33.0) \
             needs exactly MLX {PINNED_MLX}. Install the {PINNED_MLX} wheel: MLX_WHEEL=mlx-cpu=={PINNED_MLX} \
             (CPU), MLX_WHEEL=mlx-cuda-13=={PINNED_MLX} (NVIDIA), mlx-metal=={PINNED_MLX} (macOS), or point \
             MLX_DIR at a {PINNED_MLX} prefix.",
            prefix.root.display()
        );
    }

    let blas = blas::choose(&prefix);
    say(format!("MLX {version} from {} ({}); BLAS: {blas}", prefix.root.display(), prefix.origin));

    let sources = mlx_c::locate();
    mlx_c::compile(&sources, &prefix.root.join("include"));

    let libdir = prefix.root.join("lib");
    println!("cargo:rustc-link-search=native={}", libdir.display());
    println!("cargo:rustc-link-lib=dylib=mlx");
    // Only this package's own tests see this; dependents read DEP_MLX_LIBDIR and set their own rpath.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", libdir.display());

    let include = env::join_paths([prefix.root.join("include"), sources.root.clone()])
        .expect("include paths contain no path separator");
    println!("cargo::metadata=include={}", include.to_string_lossy());
    println!("cargo::metadata=version={version}");
    println!("cargo::metadata=libdir={}", libdir.display());

    // The plugin ABI compares this string between the host and every cdylib: both must call into the same
    // libmlx through the same mlx-c and the same compile-id mapping.
    let build = format!(
        "mlx {version}; mlx-c {} ({}); link mlx-c static, libmlx shared; {COMPILE_ID_MARKER}",
        sources.origin, sources.fingerprint
    );
    println!("cargo:rustc-env=MLX_SYS_BUILD={build}");
    println!("cargo:rustc-env=MLX_SYS_MLX_VERSION={version}");
    println!("cargo:rustc-env=MLX_SYS_BLAS={blas}");
    println!("cargo:rustc-env=MLX_SYS_LIBDIR={}", libdir.display());

    let half_compat = bindings::generate(&sources.root);
    if half_compat {
        println!("cargo:rustc-cfg=mlx_sys_half_compat");
    }
}
