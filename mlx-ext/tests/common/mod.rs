//! Inputs and comparisons both test binaries use.

use mlx_rs::{random, Array, Device};

/// Standard-normal float32 values from a fixed seed, on the CPU.
pub fn normal(shape: &[i32], seed: u64) -> Array {
    // The kernels are CPU kernels: on a GPU build the default device would send every call to MLX instead.
    Device::set_default(&Device::cpu());
    let key = random::key(seed).unwrap();
    random::normal::<f32>(shape, None, None, &key).unwrap()
}

/// Largest |a - b| relative to the largest |b|.
pub fn rel_err(a: &Array, b: &Array) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let diff = a.subtract(b).unwrap().abs().unwrap().max(None).unwrap().item_exact::<f32>();
    let scale = b.abs().unwrap().max(None).unwrap().item_exact::<f32>().max(1e-12);
    diff / scale
}
