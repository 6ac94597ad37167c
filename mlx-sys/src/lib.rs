//! Raw bindings to mlx-c for mlx-rs 0.33.0, built against the MLX shared library of a PyPI wheel.
//!
//! Beyond the generated declarations this crate supplies what mlx-rs needs on Linux and in plugins:
//! the half-precision accessors mlx-c declares only on ARM, the Mac clock symbol mlx-rs seeds its PRNG with,
//! and process-unique compile ids (see [`compile_ids`]).
#![allow(non_upper_case_globals)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

pub mod compile_ids;
pub use compile_ids::{mlx_detail_compile, mlx_detail_compile_erase};

#[cfg(mlx_sys_half_compat)]
mod half_compat;
#[cfg(mlx_sys_half_compat)]
pub use half_compat::*;

/// Identifies the MLX build this binary calls into: MLX version, mlx-c source and fingerprint, link mode and
/// the compile-id scheme. Two binaries may exchange `mlx_array` handles only if their strings are equal.
pub const BUILD: &str = env!("MLX_SYS_BUILD");
/// The MLX version of the headers this crate was built against.
pub const MLX_VERSION: &str = env!("MLX_SYS_MLX_VERSION");
/// The BLAS the build arranged for libmlx to load (the host checks what actually got loaded).
pub const BLAS_AT_BUILD: &str = env!("MLX_SYS_BLAS");
/// The directory of libmlx at build time (binaries carry it as their rpath).
pub const LIBDIR: &str = env!("MLX_SYS_LIBDIR");

/// mlx-rs seeds its default PRNG with `mach_sys::mach_time::mach_approximate_time()`; mach-sys compiles on
/// Linux but the symbol exists only in Apple's libSystem. Nanoseconds since the epoch serve as a seed.
#[cfg(not(target_vendor = "apple"))]
#[no_mangle]
pub extern "C" fn mach_approximate_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
