//! Which BLAS/LAPACK libmlx's CPU backend calls. The Linux wheels bundle the reference netlib BLAS
//! (f32 matmul 1024³: 3-4 GFLOP/s on a 2-core box); OpenBLAS is ~20x faster. libmlx finds its BLAS through
//! DT_RPATH=$ORIGIN/../../<wheel>.libs under hashed file names, so in our private copy of the wheel we point
//! those names at OpenBLAS.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use crate::{prefix::Prefix, say};

/// Directories holding a drop-in libblas.so.3 + liblapack.so.3 from OpenBLAS, best first
/// (Debian/Ubuntu's alternatives layout: pthread, then OpenMP, then serial).
fn candidates() -> Vec<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("{arch}-linux-gnu");
    ["openblas-pthread", "openblas-openmp", "openblas-serial"]
        .iter()
        .map(|flavour| Path::new("/usr/lib").join(&multiarch).join(flavour))
        .collect()
}

fn usable(dir: &Path) -> bool {
    dir.join("libblas.so.3").exists() && dir.join("liblapack.so.3").exists()
}

/// Returns a description of the BLAS that libmlx will load, for the build log and the runtime.
pub fn choose(prefix: &Prefix) -> String {
    if cfg!(target_os = "macos") {
        return "Accelerate (linked by libmlx)".to_owned();
    }
    let Some(wheel_root) = &prefix.wheel_root else {
        return format!("whatever {} loads (MLX_DIR is used as is)", prefix.root.display());
    };
    let libs_dirs: Vec<PathBuf> = fs::read_dir(wheel_root)
        .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| is_libs_dir(p)).collect())
        .unwrap_or_default();
    let request = env::var("MLX_BLAS").unwrap_or_default();
    let chosen = match request.as_str() {
        "reference" => None,
        "" | "auto" | "openblas" => match env::var_os("MLX_BLAS_DIR").map(PathBuf::from) {
            Some(dir) if usable(&dir) => Some(dir),
            Some(dir) => panic!("MLX_BLAS_DIR={} lacks libblas.so.3 or liblapack.so.3", dir.display()),
            None => candidates().into_iter().find(|d| usable(d)),
        },
        other => panic!("MLX_BLAS={other}: expected auto, openblas or reference"),
    };
    if request == "openblas" && chosen.is_none() {
        panic!("MLX_BLAS=openblas but no OpenBLAS found (install libopenblas0-pthread or set MLX_BLAS_DIR)");
    }
    for libs in &libs_dirs {
        redirect(libs, chosen.as_deref());
    }
    match chosen {
        Some(dir) => format!("OpenBLAS ({})", dir.display()),
        None => {
            if request != "reference" {
                say("no OpenBLAS found: MLX keeps the wheel's reference BLAS, ~20x slower for f32 matmul \
                     (apt-get install libopenblas0-pthread, then cargo clean -p mlx-sys)");
            }
            "reference netlib BLAS (bundled in the wheel)".to_owned()
        }
    }
}

fn is_libs_dir(path: &Path) -> bool {
    path.is_dir() && path.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".libs"))
}

/// Points the wheel's hashed libblas-*/liblapack-* names at `dir`, or back at the bundled copies (kept as
/// *.bundled) when `dir` is None.
fn redirect(libs: &Path, dir: Option<&Path>) {
    let entries: Vec<PathBuf> = fs::read_dir(libs).expect("wheel .libs dir is readable").flatten().map(|e| e.path()).collect();
    for path in entries {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let soname = if name.starts_with("libblas-") {
            "libblas.so.3"
        } else if name.starts_with("liblapack-") {
            "liblapack.so.3"
        } else {
            continue;
        };
        if name.ends_with(".bundled") {
            continue;
        }
        let bundled = libs.join(format!("{name}.bundled"));
        if !bundled.exists() {
            fs::rename(&path, &bundled).expect("wheel .libs dir is writable");
        } else {
            fs::remove_file(&path).expect("wheel .libs dir is writable");
        }
        let to = dir.map(|d| d.join(soname)).unwrap_or(bundled);
        std::os::unix::fs::symlink(&to, &path).expect("wheel .libs dir is writable");
    }
}
