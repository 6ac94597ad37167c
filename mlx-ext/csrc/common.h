// What both kernels files share: the BLAS that libmlx loaded, inputs as dense rows, the entry
// points' error reporting and the gradient of y = x Wᵀ.
#pragma once

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <stdexcept>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/c/private/array.h"
#include "mlx/c/private/stream.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"

namespace mlx_ext {

namespace mx = mlx::core;

// CBLAS enumerators (cblas.h). The BLAS is the one libmlx links (OpenBLAS or the wheel's reference BLAS), found
// by symbol in the global scope, so no header or link flag of our own is needed.
constexpr int kRowMajor = 101;
constexpr int kNoTrans = 111;
constexpr int kTrans = 112;
using Sgemv = void (*)(int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
using Sgemm =
    void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);

// Plain loops only (no BLAS, no SIMD kernels): what a machine without either runs; tests switch it on to check them.
inline std::atomic<bool>& portable() {
  static std::atomic<bool> on{false};
  return on;
}

inline Sgemv sgemv() {
  static const Sgemv f = reinterpret_cast<Sgemv>(dlsym(RTLD_DEFAULT, "cblas_sgemv"));
  return portable() ? nullptr : f;
}

inline Sgemm sgemm() {
  static const Sgemm f = reinterpret_cast<Sgemm>(dlsym(RTLD_DEFAULT, "cblas_sgemm"));
  return portable() ? nullptr : f;
}

// Every element of an input in row-major order, a copy only when it is not row-contiguous already (a strided
// view). Read only inside a dispatched task: when eval_cpu runs, the buffer exists but the task that fills it
// may not have run yet.
struct Rows {
  const float* data;
  mx::Shape shape;
  mx::Strides strides;
  bool contiguous;

  explicit Rows(const mx::array& x)
      : data(x.data<float>()), shape(x.shape()), strides(x.strides()), contiguous(x.flags().row_contiguous) {}

  const float* dense(std::vector<float>& scratch) const {
    if (contiguous) {
      return data;
    }
    size_t total = 1;
    for (int d : shape) {
      total *= static_cast<size_t>(d);
    }
    scratch.resize(total);
    std::vector<int> index(shape.size(), 0);
    for (size_t i = 0; i < total; ++i) {
      int64_t offset = 0;
      for (size_t d = 0; d < shape.size(); ++d) {
        offset += index[d] * strides[d];
      }
      scratch[i] = data[offset];
      for (size_t d = shape.size(); d-- > 0;) {
        if (++index[d] < shape[d]) {
          break;
        }
        index[d] = 0;
      }
    }
    return scratch.data();
  }
};

// The entry points build these primitives for CPU streams only.
class CpuPrimitive : public mx::UnaryPrimitive {
 public:
  explicit CpuPrimitive(mx::Stream s) : UnaryPrimitive(s) {}

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error(std::string("[") + name() + "] has no GPU kernel; it is only built for CPU streams");
  }
};

inline mx::Shape out_shape(const mx::array& x, int n) {
  mx::Shape shape = x.shape();
  shape.back() = n;
  return shape;
}

inline bool f32_on_cpu(const mx::array& x, const mx::Stream& s) {
  return s.device == mx::Device::cpu && x.dtype() == mx::float32 && x.ndim() >= 1 && x.shape(-1) > 0;
}

inline bool one_row(const mx::array& x) {
  return x.size() == static_cast<size_t>(x.shape(-1));
}

// dW = cᵀ x for y = x Wᵀ, with the leading axes of x and c flattened into rows.
inline mx::array weight_grad(const mx::array& x, const mx::array& cot, mx::Stream s) {
  auto c = mx::reshape(cot, {-1, cot.shape(-1)}, s);
  auto xr = mx::reshape(x, {-1, x.shape(-1)}, s);
  return mx::matmul(mx::transpose(c, s), xr, s);
}

inline void report(char* err, size_t cap, const char* what) {
  if (err && cap > 0) {
    std::strncpy(err, what, cap - 1);
    err[cap - 1] = '\0';
  }
}

// Runs an entry point's body: 0 on success, 1 with MLX's message in `err` when it throws.
template <class F>
int guarded(char* err, size_t cap, F&& body) {
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    report(err, cap, e.what());
    return 1;
  }
}

} // namespace mlx_ext
