"""One activation row times a weight matrix through the BLAS directly: cblas_sgemv against cblas_sgemm with
M = 1 and M = 8, in GB/s of weights read. Shows why mlx-ext routes one-row float32 products to sgemv.

    python3 bench/blas_matvec.py [/path/to/libopenblas.so.0]      (needs numpy)
"""
import ctypes
import sys
import time

import numpy as np

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
lib = ctypes.CDLL(sys.argv[1] if len(sys.argv) > 1 else "/lib/x86_64-linux-gnu/libopenblas.so.0")
ptr = ctypes.c_void_p
one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)


def gemv(w, x, y):
    n, k = w.shape
    lib.cblas_sgemv(ROW_MAJOR, NO_TRANS, n, k, one, w.ctypes.data_as(ptr), k, x.ctypes.data_as(ptr), 1, zero,
                    y.ctypes.data_as(ptr), 1)


def gemm(w, x, y, m):
    n, k = w.shape
    lib.cblas_sgemm(ROW_MAJOR, NO_TRANS, TRANS, m, n, k, one, x.ctypes.data_as(ptr), k, w.ctypes.data_as(ptr), k,
                    zero, y.ctypes.data_as(ptr), n)


def seconds(f, reps=10):
    f()
    f()
    start = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - start) / reps


print("| weight shape | cblas_sgemv | cblas_sgemm, M = 1 | cblas_sgemm, M = 8 (per pass over W) |")
print("|---|---|---|---|")
rng = np.random.default_rng(0)
for n, k in [(768, 768), (2048, 768), (768, 2048), (8192, 768)]:
    # Enough matrices that they do not fit in cache together, as in a model's forward pass.
    ws = [rng.standard_normal((n, k), dtype=np.float32) for _ in range(max(1, 64 * 768 * 768 // (n * k)))]
    x = rng.standard_normal((8, k), dtype=np.float32)
    y = np.zeros((8, n), np.float32)
    rate = lambda f: n * k * 4 / (seconds(lambda: [f(w) for w in ws]) / len(ws)) / 1e9
    print(f"| {n} × {k} | {rate(lambda w: gemv(w, x[0], y[0])):.1f} | {rate(lambda w: gemm(w, x, y, 1)):.1f} "
          f"| {rate(lambda w: gemm(w, x, y, 8)):.1f} |")
