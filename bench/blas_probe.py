"""Which BLAS this Python's MLX calls, and how fast an f32 matmul runs on the CPU with it. Prints JSON:
{"blas": ..., "libraries": [...], "gflops": ...}. bench/blas.sh compares it with `host info`."""
import ctypes
import json
import sys
import time

import mlx.core as mx

n = int(sys.argv[1]) if len(sys.argv) > 1 else 512
with mx.stream(mx.cpu):
    a = mx.random.normal((n, n))
    mx.eval(a @ a)
    start = time.perf_counter()
    for _ in range(5):
        mx.eval(a @ a)
    gflops = 5 * 2 * n**3 / (time.perf_counter() - start) / 1e9

libraries = sorted({l.split()[-1] for l in open("/proc/self/maps") if "/" in l and ("blas" in l or "lapack" in l)})
blas = "reference netlib BLAS" if any("libblas" in l for l in libraries) else "unknown"
for path in libraries:
    if "openblas" in path:
        try:
            config = ctypes.CDLL(path).openblas_get_config
            config.restype = ctypes.c_char_p
            # Preloaded (LD_PRELOAD) OpenBLAS interposes the wheel's netlib symbols, so MLX calls it.
            text = config().decode()
            blas = text if text.startswith("OpenBLAS") else "OpenBLAS " + text
        except (OSError, AttributeError):
            pass
json.dump({"blas": blas, "libraries": libraries, "gflops": round(gflops, 1)}, sys.stdout)
