//! The plain-loop kernels (no BLAS, no AVX2) against MLX. Their own test binary: the switch is process-wide.

use mlx_ext::{matmul_t, quantized_matmul_t, use_portable_kernels};
use mlx_rs::ops;

mod common;
use common::{normal, rel_err};

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
