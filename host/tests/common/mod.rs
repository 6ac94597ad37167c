//! Helpers shared by the integration tests of the trainers.

use std::path::Path;

use mlx_rs::{Array, Dtype};

/// A run's adapter tensors as float32 values, sorted by name: two runs trained alike compare equal.
pub fn adapters(run: &Path) -> Vec<(String, Vec<f32>)> {
    let mut t: Vec<(String, Vec<f32>)> = Array::load_safetensors(run.join("adapters.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.as_dtype(Dtype::Float32).unwrap().to_vec_exact::<f32>().unwrap()))
        .collect();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}
