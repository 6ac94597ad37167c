//! mlx-c, Apple's C API over MLX that mlx-rs binds to. Its sources ship inside the crates.io package
//! `mlx-sys-0.7.0`; we let cargo download that package and compile the sources ourselves into a static
//! archive, so each binary (host, every cdylib plugin) has its own mlx-c and its own error handler while all
//! of them share one libmlx.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{out_dir, MLX_C_CRATE_VERSION};

pub struct Sources {
    /// Holds mlx/c/*.{h,cpp}.
    pub root: PathBuf,
    pub origin: String,
    /// Content hash of the sources: two binaries agree on mlx-c only if this agrees.
    pub fingerprint: String,
}

pub fn locate() -> Sources {
    let (root, origin) = match env::var_os("MLX_C_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let origin = format!("MLX_C_DIR={}", dir.display());
            (dir, origin)
        }
        None => (from_registry(), format!("crates.io mlx-sys-{MLX_C_CRATE_VERSION}")),
    };
    if !root.join("mlx/c/mlx.h").is_file() {
        panic!("no mlx-c sources at {} (expected mlx/c/mlx.h)", root.display());
    }
    let fingerprint = fingerprint(&root);
    Sources { root, origin, fingerprint }
}

/// `cargo metadata` on a throw-away package (its own workspace, so our [patch] does not apply) that depends on
/// the published mlx-sys: cargo downloads and checksum-verifies it into the registry and tells us where.
fn from_registry() -> PathBuf {
    let dir = out_dir().join("mlx-c-locator");
    fs::create_dir_all(&dir).expect("OUT_DIR is writable");
    let manifest = format!(
        "[package]\nname = \"mlx-c-locator\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
         [lib]\npath = \"lib.rs\"\n\n[dependencies]\n\
         mlx-sys = {{ version = \"={MLX_C_CRATE_VERSION}\", default-features = false }}\n\n[workspace]\n"
    );
    fs::write(dir.join("Cargo.toml"), manifest).expect("OUT_DIR is writable");
    fs::write(dir.join("lib.rs"), "").expect("OUT_DIR is writable");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let run = |offline: bool| {
        let mut cmd = Command::new(&cargo);
        cmd.args(["metadata", "--format-version", "1", "--manifest-path"])
            .arg(dir.join("Cargo.toml"))
            .current_dir(&dir);
        if offline {
            cmd.arg("--offline");
        }
        for var in ["CARGO_TARGET_DIR", "RUSTC_WRAPPER", "CARGO_BUILD_TARGET", "CARGO_ENCODED_RUSTFLAGS"] {
            cmd.env_remove(var);
        }
        cmd.output().ok().filter(|o| o.status.success())
    };
    let output = run(true).or_else(|| run(false)).unwrap_or_else(|| {
        panic!(
            "`cargo metadata` could not fetch mlx-sys {MLX_C_CRATE_VERSION} from crates.io for its mlx-c sources; \
             check network access or set MLX_C_DIR to an mlx-c checkout"
        )
    });
    let json = String::from_utf8_lossy(&output.stdout);
    let wanted = format!("mlx-sys-{MLX_C_CRATE_VERSION}/Cargo.toml");
    // A JSON parser would be a build dependency for one field; manifest paths are plain strings here.
    let manifest = json
        .split("\"manifest_path\":\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(|p| p.replace("\\\\", "\\"))
        .find(|p| p.replace('\\', "/").ends_with(&wanted))
        .unwrap_or_else(|| panic!("mlx-sys {MLX_C_CRATE_VERSION} is missing from `cargo metadata` output"));
    Path::new(&manifest).parent().expect("a manifest path has a parent").join("src/mlx-c")
}

fn files_with(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

pub fn headers(root: &Path) -> Vec<PathBuf> {
    files_with(&root.join("mlx/c"), "h")
}

/// FNV-1a over names and contents of every header and source file.
fn fingerprint(root: &Path) -> String {
    let c = root.join("mlx/c");
    let mut files = files_with(&c, "h");
    files.extend(files_with(&c, "cpp"));
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for file in files {
        feed(file.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        feed(&fs::read(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display())));
    }
    format!("fnv1a {hash:016x}")
}

pub fn compile(sources: &Sources, mlx_include: &Path) {
    let mut files = files_with(&sources.root.join("mlx/c"), "cpp");
    // Unity build: each mlx-c file re-parses <mlx/mlx.h> (~3 s each, 26 files); one translation unit parses it
    // once (11 s instead of 88 s of CPU). MLX_C_UNITY=0 compiles file by file if a future mlx-c clashes.
    if env::var("MLX_C_UNITY").as_deref() != Ok("0") {
        let unity = out_dir().join("mlxc_unity.cpp");
        let text: String = files.iter().map(|p| format!("#include \"{}\"\n", p.display())).collect();
        if fs::read_to_string(&unity).ok().as_deref() != Some(text.as_str()) {
            fs::write(&unity, text).expect("OUT_DIR is writable");
        }
        files = vec![unity];
    }
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let polyfill = manifest.join("compat/std_format_polyfill.h");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .include(&sources.root)
        .flag("-isystem")
        .flag(mlx_include.to_string_lossy().as_ref())
        .warnings(false)
        .extra_warnings(false)
        .flag_if_supported("-w")
        .flag("-include")
        .flag(polyfill.to_string_lossy().as_ref())
        .files(&files);
    if let Ok(level) = env::var("MLX_C_OPT_LEVEL") {
        build.opt_level_str(&level);
    }
    // -> rustc-link-lib=static=mlxc and the platform's C++ runtime (libstdc++ on Linux, libc++ on macOS).
    build.compile("mlxc");
}
