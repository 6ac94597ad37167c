//! `host convert --gguf`: GGUF files written by the `gguf` package (as llama.cpp's converter writes them) from
//! our fixtures come back as model directories that compute what the file holds, in host and in mlx-lm.
//! Needs MLX_LM_PYTHON, a Python with mlx, mlx-lm and gguf (`.ci/run` sets one up).

use std::{path::Path, process::Command};

use host::{
    fixture::{self, Family, Preset},
    gguf::{self, quants, ConvertOptions, Gguf},
    model::{self, LoadOptions},
    text::TextTokenizer,
};
use mlx_rs::{Array, Dtype};

const IDS: [i32; 9] = [5, 17, 99, 200, 33, 41, 7, 300, 2];

fn python(script: &str, args: &[&str]) -> Vec<u8> {
    let python = std::env::var("MLX_LM_PYTHON").expect("MLX_LM_PYTHON: a python with mlx-lm and gguf installed");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python").join(script);
    let out = Command::new(python).arg(&script).args(args).output().expect("run python");
    assert!(out.status.success(), "{script:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("host-gguf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn logits(dir: &Path) -> Vec<f32> {
    let m = model::load(dir, &LoadOptions { dtype: Some(Dtype::Float32), quantize: None }).unwrap().model;
    let out = m.forward(&Array::from_slice(&IDS, &[1, IDS.len() as i32]), None).unwrap();
    out.as_dtype(Dtype::Float32).unwrap().contiguous().unwrap().to_vec_exact::<f32>().unwrap()
}

fn mlx_lm_logits(dir: &Path) -> Vec<f32> {
    let ids = format!("{IDS:?}");
    let rows: Vec<Vec<f32>> = serde_json::from_slice(&python("mlx_lm_logits.py", &[dir.to_str().unwrap(), &ids])).unwrap();
    rows.concat()
}

/// (max |a − b|, max |b|).
fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    (d, b.iter().fold(0.0f32, |m, v| m.max(v.abs())))
}

#[test]
#[ignore = "needs MLX_LM_PYTHON, a python with mlx-lm and gguf (CI provides one)"]
fn our_block_decoders_equal_the_gguf_packages_dequantizer() {
    let dir = temp("blocks");
    let (file, json) = (dir.join("blocks.gguf"), dir.join("blocks.json"));
    python("gguf_write.py", &["blocks", file.to_str().unwrap(), json.to_str().unwrap()]);
    let reference: std::collections::BTreeMap<String, Vec<f32>> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let g = Gguf::open(&file).unwrap();
    assert_eq!(g.tensors.len(), reference.len());
    for t in &g.tensors {
        let kind = t.name.trim_end_matches(".weight");
        let ours = quants::decode(t.kind, &g.tensor_bytes(t).unwrap()).unwrap();
        // The same float32 operations in the same order as the package's numpy code: equal to the bit.
        assert_eq!(ours, reference[kind], "{kind}");
    }
}

/// Writes a fixture of `family` as GGUF (`qtype`), converts it, and checks what the result computes.
fn round_trip(family: Family, preset: Preset, arch: &str, qtype: &str) {
    let dir = temp(&format!("{arch}-{qtype}"));
    fixture::write(&dir.join("model"), family, preset, 5).unwrap();
    let (file, reference, out) = (dir.join("m.gguf"), dir.join("reference"), dir.join("converted"));
    python("gguf_write.py", &["model", dir.join("model").to_str().unwrap(), file.to_str().unwrap(), arch, qtype, reference.to_str().unwrap()]);
    let options = ConvertOptions { dtype: Some(Dtype::Float32), ..Default::default() };
    let done = gguf::convert(&file, &out, &options).unwrap();
    let what = format!("{arch} {qtype}");
    let ours = logits(&out);
    // What the file holds, dequantized by the gguf package into a float model: our converted (and still
    // quantized) model must compute the same, since Q4_0/Q4_1/Q8_0 repack exactly into MLX's affine form and
    // k-quants are decoded exactly (previous test). Left: summation order of the quantized matmuls, ~1e-6.
    let (d, scale) = diff(&ours, &logits(&reference));
    eprintln!("{what}: max |Δlogit| vs the dequantized reference {d:e} (max |logit| {scale}), reader: {}", done.reader);
    assert!(d <= 1e-4 * scale.max(1.0), "{what}: {d} against the file's own weights");
    // mlx-lm loads the directory and agrees.
    let (d, scale) = diff(&mlx_lm_logits(&out), &ours);
    assert!(d <= 1e-4 * scale.max(1.0), "{what}: mlx-lm differs by {d}");
    // And the file is the original model up to its quantization: F32 exactly, 8-bit closely, 4-bit loosely
    // (a wrong permutation, norm offset or rope scaling moves logits by their whole size).
    // (`mixed` replaces the down projections by random k-quant blocks: nothing to compare with there.)
    if qtype != "mixed" {
        let (d, scale) = diff(&ours, &logits(&dir.join("model")));
        let bound = match qtype {
            "F32" => 1e-5,
            "Q8_0" => 2e-2,
            _ => 0.2,
        };
        eprintln!("{what}: max |Δlogit| vs the original {d:e}");
        assert!(d <= bound * scale.max(1.0), "{what}: {d} from the original");
    }

    // The rebuilt tokenizer encodes like the original, special tokens and chat template included.
    let (a, b) = (TextTokenizer::load(&dir.join("model")).unwrap(), TextTokenizer::load(&out).unwrap());
    for text in ["What is 7 + 2? The answer is 9.", "  spaces\tand\nnewlines ", "héllo wörld 123456"] {
        assert_eq!(a.encode(text, true).unwrap(), b.encode(text, true).unwrap(), "{what}: {text:?}");
    }
    let chat = vec![serde_json::json!({"role": "user", "content": "What is 1 + 1?"})];
    let (x, y) = (a.encode_chat(&chat, None, true).unwrap(), b.encode_chat(&chat, None, true).unwrap());
    assert_eq!(x, y, "{what}: chat template");
}

#[test]
#[ignore = "needs MLX_LM_PYTHON, a python with mlx-lm and gguf (CI provides one)"]
fn llama_gguf_files_convert_with_the_qk_permutation_and_rope_scaling_undone() {
    // F32 and Q4_0 read by MLX's reader; BF16 by ours.
    for qtype in ["F32", "Q4_0", "BF16"] {
        round_trip(Family::Llama, Preset::Tiny, "llama", qtype);
    }
}

#[test]
#[ignore = "needs MLX_LM_PYTHON, a python with mlx-lm and gguf (CI provides one)"]
fn qwen_and_gemma3_gguf_files_convert() {
    round_trip(Family::Qwen2, Preset::Tiny, "qwen2", "Q8_0");
    round_trip(Family::Qwen3, Preset::Tiny, "qwen3", "Q4_1");
    round_trip(Family::Gemma3Text, Preset::Tiny, "gemma3", "Q8_0");
}

#[test]
#[ignore = "needs MLX_LM_PYTHON, a python with mlx-lm and gguf (CI provides one)"]
fn k_quants_are_dequantized_and_our_reader_repacks_what_mlx_reads() {
    // The demo preset's MLP is 256 wide: its down projections fill k-quant blocks (Q2_K to Q6_K).
    round_trip(Family::Llama, Preset::Demo, "llama", "mixed");

    // Q8_0 through our reader gives the bytes MLX's reader gives.
    let dir = temp("readers");
    fixture::write(&dir.join("model"), Family::Qwen3, Preset::Tiny, 2).unwrap();
    let file = dir.join("m.gguf");
    python("gguf_write.py", &["model", dir.join("model").to_str().unwrap(), file.to_str().unwrap(), "qwen3", "Q8_0", dir.join("ref").to_str().unwrap()]);
    let mlx = gguf::convert(&file, &dir.join("mlx"), &ConvertOptions::default()).unwrap();
    let own = gguf::convert(&file, &dir.join("own"), &ConvertOptions { own_reader: true, ..Default::default() }).unwrap();
    assert_ne!(mlx.reader, own.reader);
    let (a, b) = (std::fs::read(dir.join("mlx/model.safetensors")).unwrap(), std::fs::read(dir.join("own/model.safetensors")).unwrap());
    assert!(a == b, "the two readers' tensors differ");

    // --quantize turns what was dequantized into MLX's 4-bit form; the model still computes close to the file.
    let mixed = dir.join("mixed.gguf");
    fixture::write(&dir.join("demo"), Family::Llama, Preset::Demo, 3).unwrap();
    python("gguf_write.py", &["model", dir.join("demo").to_str().unwrap(), mixed.to_str().unwrap(), "llama", "mixed", dir.join("demo-ref").to_str().unwrap()]);
    let q = ConvertOptions { dtype: Some(Dtype::Float32), quantize: Some(host::nn::Quant::affine(8, 64)), own_reader: false };
    let done = gguf::convert(&mixed, &dir.join("requantized"), &q).unwrap();
    assert_eq!(done.dequantized, 0);
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("requantized/config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization"]["model.layers.0.mlp.down_proj"], serde_json::json!({"group_size": 64, "bits": 8, "mode": "affine"}), "{}", config["quantization"]);
    let (d, scale) = diff(&logits(&dir.join("requantized")), &logits(&dir.join("demo-ref")));
    assert!(d <= 2e-2 * scale.max(1.0), "requantized: {d}");
}

#[test]
#[ignore = "needs MLX_LM_PYTHON, a python with mlx-lm and gguf (CI provides one)"]
fn unsupported_files_are_refused_by_name() {
    let dir = temp("refused");
    std::fs::write(dir.join("not.gguf"), b"GGML nonsense").unwrap();
    let err = gguf::convert(&dir.join("not.gguf"), &dir.join("o"), &ConvertOptions::default()).unwrap_err().to_string();
    assert!(err.contains("no GGUF magic"), "{err}");
    // A truncated file names what is missing.
    fixture::write(&dir.join("model"), Family::Qwen2, Preset::Tiny, 1).unwrap();
    let file = dir.join("m.gguf");
    python("gguf_write.py", &["model", dir.join("model").to_str().unwrap(), file.to_str().unwrap(), "qwen2", "Q8_0", dir.join("ref").to_str().unwrap()]);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(dir.join("cut.gguf"), &bytes[..bytes.len() - 100]).unwrap();
    let err = gguf::convert(&dir.join("cut.gguf"), &dir.join("o"), &ConvertOptions::default()).unwrap_err().to_string();
    assert!(err.contains("past the end of the file"), "{err}");
}
