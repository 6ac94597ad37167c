// Binaries and tests of this package find libmlx without LD_LIBRARY_PATH: our mlx-sys publishes the directory
// of the libmlx it linked (cargo passes a dependency's link args only to its own targets, so we add the rpath).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_MLX_LIBDIR");
    if let Ok(dir) = std::env::var("DEP_MLX_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
