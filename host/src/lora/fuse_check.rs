//! `host fuse` as a library call that checks its own result: the fused directory, loaded back, must compute
//! what the base with its adapters computes. mlx-lm's and mlx-tune's `fuse` were reported in 2026 to write
//! a quantized base back unchanged: re-quantizing W + BA with the base's own bits rounds a small update away
//! (or the adapter was never applied). Here that is an error naming the cause and the remedy.

use std::path::{Path, PathBuf};

use mlx_rs::{Array, Dtype};

use super::{fuse, load_adapters, set_enabled, LoraError};
use crate::model::{self, CausalLm, LoadOptions};

/// What a verified fuse measured, as max |Δlogit| over probe tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct FuseReport {
    pub out: PathBuf,
    /// The adapters' effect: base with adapters against the base alone.
    pub adapter_effect: f32,
    /// The fused model against the base with adapters (0 up to float error for a float base; the rounding
    /// of re-quantization for a quantized one).
    pub fusion_error: f32,
    /// The share of the adapters' change the fused model carries (1 = all of it).
    pub kept: f64,
    /// The fused model's error as a share of the adapters' change (L2 over the probe logits).
    pub noise: f64,
    /// Whether the result was re-quantized with the base's settings.
    pub requantized: bool,
}

/// A fused model must carry at least half of the adapters' change to the logits.
const KEPT_AT_LEAST: f32 = 0.5;

/// Tokens spread over the vocabulary, the same for every check.
fn probe(vocab: i32) -> Array {
    let ids: Vec<i32> = (0..48).map(|i| ((i as i64 * 7919 + 13) % i64::from(vocab.max(1))) as i32).collect();
    Array::from_slice(&ids, &[1, ids.len() as i32])
}

fn logits(m: &CausalLm, ids: &Array) -> Result<Vec<f32>, LoraError> {
    let out = m.forward(ids, None)?.as_dtype(Dtype::Float32)?;
    Ok(out.contiguous()?.to_vec_exact::<f32>().map_err(|e| LoraError::Mlx(e.to_string()))?)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Fuses the adapters in `adapter_dir` into the model at `base_dir` and writes `out`, re-quantizing quantized
/// layers with their own settings unless `dequantize`; then loads `out` back and checks it.
pub fn fuse_verified(base_dir: &Path, adapter_dir: &Path, out: &Path, dequantize: bool) -> Result<FuseReport, LoraError> {
    let mut loaded = model::load(base_dir, &LoadOptions::default()).map_err(|e| LoraError::Mlx(e.to_string()))?;
    load_adapters(&mut loaded.model, adapter_dir)?;
    let ids = probe(loaded.model.config.vocab_size);
    set_enabled(&mut loaded.model, false);
    let base = logits(&loaded.model, &ids)?;
    set_enabled(&mut loaded.model, true);
    let adapted = logits(&loaded.model, &ids)?;
    let adapter_effect = max_diff(&adapted, &base);
    let scale = adapted.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    // Below float noise the adapters do nothing (B still zero: untrained): fusing them would write the base.
    if adapter_effect <= 1e-6 * scale {
        return Err(LoraError::Targets(format!(
            "{}: the adapters change no logit (max |Δ| {adapter_effect:e}); their B matrices are zero or they were never trained, so a fuse would only copy the base",
            adapter_dir.display()
        )));
    }
    let requantized = loaded.quantization.is_some() && !dequantize;
    fuse(&mut loaded.model, dequantize)?;
    if dequantize {
        loaded.quantization = None;
    }
    // Written beside `out` and renamed into place once checked: a refused fuse leaves no directory behind,
    // and an existing `out` is replaced only by a good one.
    let name = out.file_name().map_or_else(|| "fused".into(), |n| n.to_string_lossy().into_owned());
    let staging = out.with_file_name(format!(".{name}.fusing"));
    let file_error = |path: &Path, e: String| LoraError::File { path: path.to_owned(), message: e };
    let _ = std::fs::remove_dir_all(&staging);
    model::save(&loaded, &staging).map_err(|e| file_error(&staging, e.to_string()))?;
    drop(loaded);
    let check = || -> Result<Vec<f32>, LoraError> {
        let fused_model = model::load(&staging, &LoadOptions::default()).map_err(|e| file_error(&staging, e.to_string()))?;
        logits(&fused_model.model, &ids)
    };
    let fused = match check() {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let fusion_error = max_diff(&fused, &adapted);
    // Over all probe logits: the share of the adapters' change the fused model carries (its projection on
    // that change: 1 when faithful, 0 when the adapters were dropped), and the size of what it adds besides
    // (re-quantization noise, uncorrelated with the change). Rounding noise alone does not fail the check;
    // noise larger than the adapters' whole effect, or a lost effect, does.
    let (mut dot, mut effect2, mut noise2) = (0f64, 0f64, 0f64);
    for ((f, a), b) in fused.iter().zip(&adapted).zip(&base) {
        let (moved, change) = (f64::from(f - b), f64::from(a - b));
        dot += moved * change;
        effect2 += change * change;
        noise2 += f64::from(f - a).powi(2);
    }
    let kept = dot / effect2.max(f64::MIN_POSITIVE);
    let noise = (noise2 / effect2.max(f64::MIN_POSITIVE)).sqrt();
    if kept < f64::from(KEPT_AT_LEAST) || noise > 1.0 {
        let remedy = if kept.abs() < 0.05 && (noise - 1.0).abs() < 0.05 {
            "it computes what the base computes: the adapters were not merged into the weights"
        } else if requantized {
            "re-quantizing the merged weights with the base's own settings rounds the adapters' update away; fuse with --dequantize (float weights), or quantize the fused float model afterwards with more bits or smaller groups"
        } else {
            "the written weights do not carry the update"
        };
        let _ = std::fs::remove_dir_all(&staging);
        return Err(LoraError::File {
            path: out.to_owned(),
            message: format!(
                "the fused model does not reproduce the adapters: it carries {:.0}% of their change to the logits and adds {:.0}% of that change in error (max |Δlogit| {fusion_error:.3e} from the adapted model, whose adapters move the logits by up to {adapter_effect:.3e}); {remedy}",
                100.0 * kept,
                100.0 * noise
            ),
        });
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| file_error(out, e.to_string()))?;
    }
    std::fs::rename(&staging, out).map_err(|e| file_error(out, e.to_string()))?;
    Ok(FuseReport { out: out.to_owned(), adapter_effect, fusion_error, kept, noise, requantized })
}
