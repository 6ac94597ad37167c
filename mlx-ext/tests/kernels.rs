//! The primitives against MLX's own operations: same values (one-row kernels within float32 rounding of a
//! different summation order, bit-identical where the call falls back to MLX), same gradients.

use mlx_ext::{matmul_t, primitive_name, quantized_matmul_t};
use mlx_rs::{
    error::Exception,
    ops::{
        self,
        indexing::{IndexOp, IntoStrideBy},
    },
    transforms::{grad, grad_with_argnums},
    Array, Dtype,
};

mod common;
use common::{normal, rel_err};

/// Bit-identical values (and shape and dtype).
fn same(a: &Array, b: &Array) -> bool {
    a.shape() == b.shape() && a.dtype() == b.dtype() && a.eq_values(b).unwrap()
}

fn path(a: &Array) -> String {
    primitive_name(a).unwrap()
}

fn reference_t(x: &Array, w: &Array) -> Array {
    x.matmul(w.t()).unwrap()
}

#[test]
fn one_row_matches_matmul_for_every_input_layout() {
    let w = normal(&[96, 80], 1);
    for x in [normal(&[80], 2), normal(&[1, 80], 3), normal(&[1, 1, 80], 4)] {
        let y = matmul_t(&x, &w).unwrap();
        assert_eq!(path(&y), "mlx_ext::MatvecT");
        let e = rel_err(&y, &reference_t(&x, &w));
        assert!(e < 1e-6, "shape {:?}: {e}", x.shape());
    }
    // A strided row (every other element of a longer one) and strided or transposed weights.
    let x = normal(&[1, 160], 5).index((.., (0..160).stride_by(2)));
    assert!(rel_err(&matmul_t(&x, &w).unwrap(), &reference_t(&x, &w)) < 1e-6);
    let every_other_row = normal(&[192, 80], 6).index((0..192).stride_by(2));
    let x = normal(&[1, 80], 7);
    assert!(rel_err(&matmul_t(&x, &every_other_row).unwrap(), &reference_t(&x, &every_other_row)) < 1e-6);
    let transposed = normal(&[80, 96], 8).t();
    assert!(rel_err(&matmul_t(&x, &transposed).unwrap(), &reference_t(&x, &transposed)) < 1e-6);
    let every_other_column = normal(&[96, 160], 9).index((.., (0..160).stride_by(2)));
    assert!(rel_err(&matmul_t(&x, &every_other_column).unwrap(), &reference_t(&x, &every_other_column)) < 1e-6);
}

#[test]
fn several_rows_and_other_dtypes_are_mlx_matmul_exactly() {
    let w = normal(&[48, 32], 10);
    let x = normal(&[2, 3, 32], 11);
    assert_eq!(path(&matmul_t(&x.reshape(&[6, 32]).unwrap(), &w).unwrap()), "Matmul");
    assert!(same(&matmul_t(&x, &w).unwrap(), &reference_t(&x, &w)));
    let (xb, wb) = (x.index((0, 0..1, ..)).as_dtype(Dtype::Bfloat16).unwrap(), w.as_dtype(Dtype::Bfloat16).unwrap());
    let got = matmul_t(&xb, &wb).unwrap();
    assert_eq!(path(&got), "Matmul");
    assert_eq!(got.dtype(), Dtype::Bfloat16);
    assert!(same(&got, &reference_t(&xb, &wb)));
}

#[test]
fn one_row_gradients_match_matmul() {
    let w = normal(&[24, 40], 12);
    let x = normal(&[1, 40], 13);
    let c = normal(&[1, 24], 14);
    let ours = |args: &[Array]| -> Result<Vec<Array>, Exception> {
        Ok(vec![matmul_t(&args[0], &args[1])?.multiply(&c)?.sum(None)?])
    };
    let theirs = |args: &[Array]| -> Result<Vec<Array>, Exception> {
        Ok(vec![args[0].matmul(args[1].t())?.multiply(&c)?.sum(None)?])
    };
    let args = [x, w];
    let a = grad_with_argnums(ours, &[0, 1])(&args).unwrap();
    let b = grad_with_argnums(theirs, &[0, 1])(&args).unwrap();
    assert!(rel_err(&a[0], &b[0]) < 1e-6, "dx");
    assert!(rel_err(&a[1], &b[1]) < 1e-6, "dw");
}

/// A random matrix quantized by MLX: (packed, scales, biases, its dequantized float32 matrix).
fn quantized(n: i32, k: i32, group: i32, bits: i32, seed: u64) -> (Array, Array, Array, Array) {
    let (w, s, b) = ops::quantize(normal(&[n, k], seed), group, bits).unwrap();
    let dense = ops::dequantize(&w, &s, &b, group, bits).unwrap();
    (w, s, b, dense)
}

#[test]
fn quantized_one_row_matches_mlx_for_every_format() {
    for bits in [4, 8] {
        for group in [32, 64, 128] {
            let (w, s, b, dense) = quantized(72, 256, group, bits, 20 + bits as u64 + group as u64);
            let x = normal(&[1, 1, 256], 21);
            let ours = quantized_matmul_t(&x, &w, &s, &b, group, bits).unwrap();
            assert_eq!(path(&ours), "mlx_ext::QuantizedMatmul");
            let mlx = ops::quantized_matmul(&x, &w, &s, &b, true, group, bits).unwrap();
            // Both sum the same dequantized products in different orders.
            assert!(rel_err(&ours, &mlx) < 1e-5, "{bits}-bit, group {group}: {}", rel_err(&ours, &mlx));
            assert!(rel_err(&ours, &reference_t(&x, &dense)) < 1e-5);
        }
    }
    // A strided row.
    let (w, s, b, dense) = quantized(40, 128, 64, 4, 22);
    let x = normal(&[1, 256], 23).index((.., (1..256).stride_by(2)));
    assert!(rel_err(&quantized_matmul_t(&x, &w, &s, &b, 64, 4).unwrap(), &reference_t(&x, &dense)) < 1e-5);
}

#[test]
fn quantized_rows_use_dequantized_blocks_that_cover_the_matrix() {
    // 4096 inputs: blocks of 512 dense rows, so 1100 rows take three blocks, the last one partial.
    let (w, s, b, dense) = quantized(1100, 4096, 64, 4, 30);
    let x = normal(&[2, 3, 4096], 31);
    let ours = quantized_matmul_t(&x, &w, &s, &b, 64, 4).unwrap();
    assert_eq!(ours.shape(), &[2, 3, 1100]);
    assert_eq!(path(&ours), "mlx_ext::QuantizedMatmul");
    assert!(rel_err(&ours, &reference_t(&x, &dense)) < 1e-5);
    // A non-contiguous input (transposed leading axes).
    let xt = normal(&[3, 2, 4096], 32).transpose_axes(&[1, 0, 2]).unwrap();
    assert!(rel_err(&quantized_matmul_t(&xt, &w, &s, &b, 64, 4).unwrap(), &reference_t(&xt, &dense)) < 1e-5);
}

#[test]
fn quantized_gradient_through_the_input_matches_dense() {
    // Rows > 1 and one row; 1100 dense rows so the untransposed product accumulates over three blocks.
    let (w, s, b, dense) = quantized(1100, 4096, 128, 8, 40);
    for rows in [1, 5] {
        let x = normal(&[rows, 4096], 41);
        let c = normal(&[rows, 1100], 42);
        let ours = grad(|x: &Array| -> Result<Array, Exception> {
            quantized_matmul_t(x, &w, &s, &b, 128, 8)?.multiply(&c)?.sum(None)
        })(&x)
        .unwrap();
        let theirs = grad(|x: &Array| -> Result<Array, Exception> { x.matmul(dense.t())?.multiply(&c)?.sum(None) })(&x).unwrap();
        assert!(rel_err(&ours, &theirs) < 1e-5, "{rows} rows: {}", rel_err(&ours, &theirs));
    }
}

#[test]
fn quantized_fallbacks_are_mlx_exactly() {
    // bfloat16 scales (as MLX-community checkpoints store them) and a bfloat16 input stay with MLX.
    let (w, s, b, _) = quantized(32, 128, 64, 4, 50);
    let x = normal(&[1, 128], 51);
    let (sb, bb) = (s.as_dtype(Dtype::Bfloat16).unwrap(), b.as_dtype(Dtype::Bfloat16).unwrap());
    let xb = x.as_dtype(Dtype::Bfloat16).unwrap();
    assert_eq!(path(&quantized_matmul_t(&x, &w, &s, &b, 64, 4).unwrap()), "mlx_ext::QuantizedMatmul");
    assert_eq!(path(&quantized_matmul_t(&x, &w, &sb, &bb, 64, 4).unwrap()), "QuantizedMatmul");
    assert!(same(
        &quantized_matmul_t(&xb, &w, &sb, &bb, 64, 4).unwrap(),
        &ops::quantized_matmul(&xb, &w, &sb, &bb, true, 64, 4).unwrap()
    ));
}

#[test]
fn bad_shapes_are_errors_not_crashes() {
    let (w, s, b, _) = quantized(32, 128, 64, 4, 60);
    let x = normal(&[1, 96], 61);
    assert!(quantized_matmul_t(&x, &w, &s, &b, 64, 4).is_err());
    assert!(matmul_t(&x, &normal(&[8, 64], 62)).is_err());
}

/// The mode-named ops reach MLX's microscaling formats: mxfp4 packs 8 weights per uint32 with one uint8 scale
/// per 32 and no biases, dequantizes to within the format's step, and MLX's refusal of a group size the mode
/// does not use comes back as an error with its message. The bound: the OCP scale s = 2^(⌊log2 max⌋ − 2) puts
/// a group's largest magnitude in [4s, 8s). Below 6s, rounding to E2M1's grid (widest gap 4s..6s) errs by at
/// most s ≤ max/4; above it the clip at 6s errs by under 2s, and there max ≥ 6s makes 2s ≤ max/3.
#[test]
fn mode_named_quantization_reaches_mxfp4_and_reports_mlx_errors() {
    let w = mlx_rs::random::normal::<f32>(&[8, 64], None, None, &mlx_rs::random::key(1).unwrap()).unwrap();
    let p = mlx_ext::quantize(&w, 32, 4, "mxfp4").unwrap();
    assert_eq!((p.weight.shape(), p.scales.shape(), p.scales.dtype()), (&[8, 8][..], &[8, 2][..], mlx_rs::Dtype::Uint8));
    assert!(p.biases.is_none());
    let back = mlx_ext::dequantize(&p.weight, &p.scales, None, 32, 4, "mxfp4").unwrap();
    let err = back.subtract(&w).unwrap().abs().unwrap().max(None).unwrap().item::<f32>();
    let top = w.abs().unwrap().max(None).unwrap().item::<f32>();
    assert!(err > 0.0 && err <= top / 3.0, "{err} vs max {top}");
    let x = mlx_rs::random::normal::<f32>(&[3, 64], None, None, &mlx_rs::random::key(2).unwrap()).unwrap();
    let y = mlx_ext::quantized_matmul(&x, &p.weight, &p.scales, None, true, 32, 4, "mxfp4").unwrap();
    let want = x.matmul(back.t()).unwrap();
    assert!(y.subtract(&want).unwrap().abs().unwrap().max(None).unwrap().item::<f32>() < 1e-4);
    let refused = mlx_ext::quantize(&w, 64, 4, "mxfp4").err().map(|e| e.what().to_owned()).unwrap_or_default();
    assert!(refused.contains("32"), "{refused}");
    assert!(mlx_ext::quantize(&w, 32, 4, "int4").is_err());
}
