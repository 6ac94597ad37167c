//! Compiles csrc/ against the MLX headers of the wheel our mlx-sys installed and the mlx-c sources it compiled
//! (both published by mlx-sys as `DEP_MLX_INCLUDE`), into a static archive linked into whoever uses this crate.
use std::env;

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=DEP_MLX_INCLUDE");
    let include = env::var_os("DEP_MLX_INCLUDE").expect("mlx-sys publishes its include directories as DEP_MLX_INCLUDE");
    let mut build = cc::Build::new();
    build.cpp(true).std("c++20").file("csrc/matvec.cpp").file("csrc/quantized.cpp").file("csrc/quantized_avx2.cpp").file("csrc/modes.cpp").file("csrc/distributed.cpp").warnings(false).flag_if_supported("-w");
    for dir in env::split_paths(&include) {
        build.flag("-isystem").flag(dir.to_string_lossy().as_ref());
    }
    // Kernels are worth optimizing in every profile: the tests' debug builds compare them against MLX.
    build.opt_level(3);
    build.compile("mlxext");
    // This crate's own tests find libmlx without LD_LIBRARY_PATH (dependents add the same rpath themselves).
    println!("cargo:rerun-if-env-changed=DEP_MLX_LIBDIR");
    if let Ok(dir) = env::var("DEP_MLX_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
