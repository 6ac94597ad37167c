//! Peak memory of the log-probs' value and gradient through a large-vocabulary head, by chunk size.
use host::{fixture::{self, Family, Preset}, model::{self, LoadOptions}, train::logps_from_hidden};
use mlx_rs::{random, transforms::value_and_grad, Array, Dtype};

fn main() {
    let dir = std::path::Path::new("/tmp/headmem/model");
    if !dir.join("config.json").exists() {
        fixture::write_sized(dir, Family::Gemma3Text, Preset::Tiny, 1, Dtype::Float32, Some(262_144)).unwrap();
    }
    let m = model::load(dir, &LoadOptions { dtype: Some(Dtype::Float32), quantize: None }).unwrap().model;
    let t: i32 = std::env::var("T").ok().and_then(|v| v.parse().ok()).unwrap_or(1200);
    let chunk: usize = std::env::var("CHUNK").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let grad: bool = std::env::var("GRAD").map(|v| v == "1").unwrap_or(true);
    let h = random::normal::<f32>(&[1, t, 64], None, None, None).unwrap();
    let targets = random::randint::<_, i32>(0, 262_144, &[1, t], None).unwrap();
    mlx_rs::transforms::eval([&h, &targets]).unwrap();
    let base = mlx_rs::memory::active_memory().unwrap();
    mlx_rs::memory::reset_peak_memory().unwrap();
    let f = |args: &[Array]| -> Result<Vec<Array>, mlx_rs::error::Exception> {
        let (lp, _) = logps_from_hidden(&m, &args[0], &targets, false, chunk)?;
        Ok(vec![lp.sum(None)?])
    };
    if grad {
        let mut vg = value_and_grad(f);
        let (v, g) = vg(&[h.clone()]).unwrap();
        mlx_rs::transforms::eval(v.iter().chain(g.iter())).unwrap();
    } else {
        let v = f(&[h.clone()]).unwrap();
        mlx_rs::transforms::eval(v.iter()).unwrap();
    }
    let peak = mlx_rs::memory::peak_memory().unwrap();
    println!("T {t} chunk {chunk} grad {grad}: peak above inputs {:.3} GB (one chunk's logits {:.3} GB, all {:.3} GB)", (peak - base) as f64 / 1e9, (chunk.min(t as usize) * 262_144 * 4) as f64 / 1e9, (t as usize * 262_144 * 4) as f64 / 1e9);
}
