//! Which BLAS/LAPACK libmlx's CPU backend calls. The Linux wheels bundle the reference netlib BLAS
//! (f32 matmul 1024³: 3-4 GFLOP/s on a 2-core box); OpenBLAS is ~20x faster. libmlx finds its BLAS through
//! DT_RPATH=$ORIGIN/../../<wheel>.libs under hashed file names, so in our private copy of the wheel we point
//! those names at OpenBLAS: the system's when installed, else OpenBLAS from PyPI (`cmeel-openblas`).

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use crate::{out_dir, pip, prefix::Prefix, say};

/// The PyPI OpenBLAS used when the system has none: one `libopenblas.so.0` with the standard unprefixed
/// cblas_* and LAPACK symbols, needing only libgfortran.so.5 beyond glibc (which the MLX wheel bundles).
const DEFAULT_OPENBLAS_WHEEL: &str = "cmeel-openblas==0.3.31";

/// Where the chosen BLAS and LAPACK symbols live.
struct Openblas {
    blas: PathBuf,
    lapack: PathBuf,
    origin: String,
}

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

fn system(dir: PathBuf) -> Openblas {
    Openblas { blas: dir.join("libblas.so.3"), lapack: dir.join("liblapack.so.3"), origin: format!("system, {}", dir.display()) }
}

/// Makes a later install of a system OpenBLAS take effect on the next build, without `cargo clean`.
/// Installing a shared library on glibc systems rewrites the loader cache (dpkg and rpm run ldconfig), so
/// that one file stands for every candidate directory; a path that does not exist cannot be watched
/// (cargo would rerun this script, and rebuild every crate above it, on every build).
fn watch_for_system_installs() {
    for path in [PathBuf::from("/etc/ld.so.cache")].into_iter().chain(candidates()) {
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

/// Returns a description of the BLAS that libmlx will load, for the build log and the runtime.
pub fn choose(prefix: &Prefix) -> String {
    if cfg!(target_os = "macos") {
        return "Accelerate (linked by libmlx)".to_owned();
    }
    let Some(wheel_root) = &prefix.wheel_root else {
        return format!("whatever {} loads (MLX_DIR is used as is)", prefix.root.display());
    };
    watch_for_system_installs();
    let libs_dirs: Vec<PathBuf> = fs::read_dir(wheel_root)
        .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| is_libs_dir(p)).collect())
        .unwrap_or_default();
    let request = env::var("MLX_BLAS").unwrap_or_default();
    let chosen = match request.as_str() {
        "reference" => None,
        "" | "auto" | "openblas" => match env::var_os("MLX_BLAS_DIR").map(PathBuf::from) {
            Some(dir) if usable(&dir) => Some(system(dir)),
            Some(dir) => panic!("MLX_BLAS_DIR={} lacks libblas.so.3 or liblapack.so.3", dir.display()),
            None => match candidates().into_iter().find(|d| usable(d)) {
                Some(dir) => Some(system(dir)),
                None => match from_pypi(&libs_dirs) {
                    Ok(found) => Some(found),
                    Err(e) if request == "openblas" => {
                        panic!("MLX_BLAS=openblas but no system OpenBLAS, and the PyPI one failed: {e}")
                    }
                    Err(e) => {
                        say(format!(
                            "no system OpenBLAS and none from PyPI ({e}): MLX keeps the wheel's reference BLAS, \
                             ~20x slower for f32 matmul (apt-get install libopenblas0-pthread and rebuild)"
                        ));
                        None
                    }
                },
            },
        },
        other => panic!("MLX_BLAS={other}: expected auto, openblas or reference"),
    };
    for libs in &libs_dirs {
        redirect(libs, chosen.as_ref());
    }
    match chosen {
        Some(found) => format!("OpenBLAS ({})", found.origin),
        None => "reference netlib BLAS (bundled in the wheel)".to_owned(),
    }
}

/// Installs the PyPI OpenBLAS into OUT_DIR (once) and makes its libgfortran.so.5 dependency resolvable
/// through libmlx's RPATH: the loader searches the RPATH of the object that pulled a library in (libmlx)
/// for that library's own dependencies, so a `libgfortran.so.5` name beside the wheel's hashed copy suffices.
fn from_pypi(libs_dirs: &[PathBuf]) -> Result<Openblas, String> {
    let spec = env::var("MLX_OPENBLAS_WHEEL").unwrap_or_else(|_| DEFAULT_OPENBLAS_WHEEL.to_owned());
    let target = out_dir().join("openblas-wheel");
    let library = |t: &Path| t.join("cmeel.prefix/lib/libopenblas.so.0");
    say(format!("no system OpenBLAS found; using `{spec}` from PyPI"));
    pip::install_once(&spec, &target, |t| library(t).is_file())?;
    let mut gfortran_linked = false;
    for libs in libs_dirs {
        let bundled = fs::read_dir(libs)
            .map_err(|e| format!("cannot list {}: {e}", libs.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libgfortran-")));
        if let Some(bundled) = bundled {
            replace_symlink(&bundled, &libs.join("libgfortran.so.5"))?;
            gfortran_linked = true;
        }
    }
    if !gfortran_linked && !system_has("libgfortran.so.5") {
        return Err("OpenBLAS needs libgfortran.so.5: neither the MLX wheel nor the system has it".to_owned());
    }
    let lib = library(&target);
    Ok(Openblas { blas: lib.clone(), lapack: lib, origin: format!("PyPI {spec}, {}", target.display()) })
}

fn system_has(soname: &str) -> bool {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    [format!("/usr/lib/{arch}-linux-gnu"), format!("/lib/{arch}-linux-gnu"), "/usr/lib64".into(), "/usr/lib".into()]
        .iter()
        .any(|dir| Path::new(dir).join(soname).exists())
}

fn replace_symlink(to: &Path, link: &Path) -> Result<(), String> {
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link).map_err(|e| format!("cannot replace {}: {e}", link.display()))?;
    }
    std::os::unix::fs::symlink(to, link).map_err(|e| format!("cannot link {}: {e}", link.display()))
}

fn is_libs_dir(path: &Path) -> bool {
    path.is_dir() && path.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".libs"))
}

/// Points the wheel's hashed libblas-*/liblapack-* names at OpenBLAS, or back at the bundled copies (kept as
/// *.bundled) when `to` is None.
fn redirect(libs: &Path, to: Option<&Openblas>) {
    let entries: Vec<PathBuf> = fs::read_dir(libs).expect("wheel .libs dir is readable").flatten().map(|e| e.path()).collect();
    for path in entries {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let lapack = if name.starts_with("libblas-") {
            false
        } else if name.starts_with("liblapack-") {
            true
        } else {
            continue;
        };
        if name.ends_with(".bundled") {
            continue;
        }
        let bundled = libs.join(format!("{name}.bundled"));
        if !bundled.exists() {
            fs::rename(&path, &bundled).expect("wheel .libs dir is writable");
        }
        let target = match to {
            Some(found) if lapack => found.lapack.clone(),
            Some(found) => found.blas.clone(),
            None => bundled,
        };
        replace_symlink(&target, &path).unwrap_or_else(|e| panic!("{e}"));
    }
}
