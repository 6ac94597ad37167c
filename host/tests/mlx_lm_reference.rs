//! Our forward pass against mlx-lm's on the same checkpoints: the reference implementation users compare with.
//! Needs a Python with mlx-lm (and mlx 0.32.2) in MLX_LM_PYTHON; `.ci/run` sets one up and runs these.

use std::{path::Path, process::Command};

use host::{
    fixture::{self, Family, Preset},
    model::{self, LoadOptions},
    nn::Quant,
};
use mlx_rs::{Array, Dtype};

const IDS: [i32; 9] = [5, 17, 99, 200, 33, 41, 7, 300, 2];

fn reference(dir: &Path) -> Vec<Vec<f32>> {
    let python = std::env::var("MLX_LM_PYTHON").expect("MLX_LM_PYTHON: a python with mlx-lm installed");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/mlx_lm_logits.py");
    let ids = format!("{IDS:?}");
    let out = Command::new(python).arg(script).arg(dir).arg(ids).output().expect("run python");
    assert!(out.status.success(), "mlx-lm failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON logits")
}

fn ours(dir: &Path) -> Vec<Vec<f32>> {
    let m = model::load(dir, &LoadOptions { dtype: Some(Dtype::Float32), quantize: None }).unwrap().model;
    let logits = m.forward(&Array::from_slice(&IDS, &[1, IDS.len() as i32]), None).unwrap();
    let flat = logits.contiguous().unwrap().to_vec_exact::<f32>().unwrap();
    flat.chunks(m.config.vocab_size as usize).map(<[f32]>::to_vec).collect()
}

fn compare(dir: &Path, what: &str) {
    let (a, b) = (ours(dir), reference(dir));
    assert_eq!(a.len(), b.len());
    let scale = b.iter().flatten().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    eprintln!("{what}: max |Δlogit| {diff:e} (max |logit| {scale})");
    assert!(diff <= 1e-5 * scale.max(1.0), "{what}: max |Δlogit| {diff} against mlx-lm");
}

#[test]
#[ignore = "needs MLX_LM_PYTHON, a python with mlx-lm (CI provides one)"]
fn every_family_matches_mlx_lm() {
    for family in [Family::Llama, Family::Qwen2, Family::Qwen3, Family::Mistral] {
        let dir = std::env::temp_dir().join(format!("mlx-lm-ref-{}-{family:?}", std::process::id()));
        fixture::write(&dir, family, Preset::Tiny, 11).unwrap();
        compare(&dir, &format!("{family:?}"));
        // The same model quantized here and written for mlx-lm: both sides read one checkpoint.
        let quantized = dir.with_extension("q4");
        let options = LoadOptions { dtype: Some(Dtype::Float32), quantize: Some(Quant { bits: 4, group_size: 32 }) };
        model::save(&model::load(&dir, &options).unwrap(), &quantized).unwrap();
        compare(&quantized, &format!("{family:?} 4-bit"));
    }
}
