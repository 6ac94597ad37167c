//! The plain-loop kernels (no BLAS, no AVX2) against MLX. Their own test binary: the switch is process-wide.

use mlx_ext::{matmul_t, quantized_matmul_t, use_portable_kernels};
use mlx_rs::{ops, random, Array, Device};

fn normal(shape: &[i32], seed: u64) -> Array {
    // The kernels are CPU kernels: on a GPU build the default device would send every call to MLX instead.
    Device::set_default(&Device::cpu());
    let key = random::key(seed).unwrap();
    random::normal::<f32>(shape, None, None, &key).unwrap()
}

fn rel_err(a: &Array, b: &Array) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let diff = a.subtract(b).unwrap().abs().unwrap().max(None).unwrap().item_exact::<f32>();
    diff / b.abs().unwrap().max(None).unwrap().item_exact::<f32>().max(1e-12)
}

#[test]
fn plain_loops_match_mlx() {
    use_portable_kernels(true);
    let w = normal(&[40, 64], 1);
    let x = normal(&[1, 64], 2);
    assert!(rel_err(&matmul_t(&x, &w).unwrap(), &x.matmul(w.t()).unwrap()) < 1e-5);
    for bits in [4, 8] {
        let (q, s, b) = ops::quantize(normal(&[600, 512], 3), 32, bits).unwrap();
        let dense = ops::dequantize(&q, &s, &b, 32, bits).unwrap();
        for rows in [1, 3] {
            let x = normal(&[rows, 512], 4);
            let got = quantized_matmul_t(&x, &q, &s, &b, 32, bits).unwrap();
            assert!(rel_err(&got, &x.matmul(dense.t()).unwrap()) < 1e-5, "{bits}-bit, {rows} rows");
        }
    }
    use_portable_kernels(false);
}
