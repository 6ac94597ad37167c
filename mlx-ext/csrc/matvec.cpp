// Float32 matrix-vector product for one-token decode on the CPU.
//
// MLX's CPU backend sends every float matmul to cblas_sgemm, and with a single row OpenBLAS (0.3.21, as Debian
// ships it) still runs its GEMM driver: on a 2-core EPYC that reads a weight matrix at ~8 GB/s where
// cblas_sgemv reads it at ~13-22 GB/s. Decode reads every weight once per token, so this bounds generation.

#include "common.h"

namespace mlx_ext {
namespace {

class MatvecT : public CpuPrimitive {
 public:
  explicit MatvecT(mx::Stream s) : CpuPrimitive(s) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const mx::array& x = inputs[0];
    const mx::array& w = inputs[1];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    encoder.set_input_array(x);
    encoder.set_input_array(w);
    encoder.set_output_array(out);
    const int n = w.shape(0);
    const int k = w.shape(1);
    const int64_t s0 = w.strides()[0];
    const int64_t s1 = w.strides()[1];
    encoder.dispatch([row = Rows(x), wp = w.data<float>(), yp = out.data<float>(), n, k, s0, s1]() {
      std::vector<float> copy;
      const float* xs = row.dense(copy);
      const Sgemv gemv = sgemv();
      if (gemv && s1 == 1 && s0 >= std::max(k, 1)) {
        gemv(kRowMajor, kNoTrans, n, k, 1.0f, wp, static_cast<int>(s0), xs, 1, 0.0f, yp, 1);
      } else if (gemv && s0 == 1 && s1 >= std::max(n, 1)) {
        // Column-major W (a transposed view): y = Aᵀ x with A = Wᵀ stored row-major, k × n.
        gemv(kRowMajor, kTrans, k, n, 1.0f, wp, static_cast<int>(s1), xs, 1, 0.0f, yp, 1);
      } else {
        for (int i = 0; i < n; ++i) {
          float acc = 0.0f;
          for (int j = 0; j < k; ++j) {
            acc += wp[i * s0 + j * s1] * xs[j];
          }
          yp[i] = acc;
        }
      }
    });
  }

  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>&) override {
    std::vector<mx::array> grads;
    for (int arg : argnums) {
      grads.push_back(
          arg == 0 ? mx::matmul(cotangents[0], primals[1], stream())
                   : weight_grad(primals[0], cotangents[0], stream()));
    }
    return grads;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {out_shape(inputs[0], inputs[1].shape(0))};
  }

  const char* name() const override {
    return "mlx_ext::MatvecT";
  }

  bool is_equivalent(const mx::Primitive&) const override {
    return true;
  }
};

} // namespace
} // namespace mlx_ext

using namespace mlx_ext;

// x @ wᵀ. One row of float32 on a CPU stream takes MatvecT; anything else is MLX's matmul.
extern "C" int mlx_ext_matmul_t(mlx_array* res, mlx_array x, mlx_array w, mlx_stream stream, char* err, size_t cap) {
  try {
    const mx::array& xa = mlx_array_get_(x);
    const mx::array& wa = mlx_array_get_(w);
    const mx::Stream s = mlx_stream_get_(stream);
    const bool fast = f32_on_cpu(xa, s) && one_row(xa) && wa.dtype() == mx::float32 && wa.ndim() == 2 &&
        wa.shape(1) == xa.shape(-1);
    mx::array y = fast
        ? mx::array(out_shape(xa, wa.shape(0)), mx::float32, std::make_shared<MatvecT>(s), {xa, wa})
        : mx::matmul(xa, mx::transpose(wa, s), s);
    mlx_array_set_(*res, std::move(y));
    return 0;
  } catch (const std::exception& e) {
    report(err, cap, e.what());
    return 1;
  }
}

// The name of the primitive that computes `a` ("" for an evaluated or constant array): lets tests and
// diagnostics see which path a product took.
extern "C" int mlx_ext_primitive_name(mlx_array a, char* out, size_t cap) {
  try {
    const mx::array& arr = mlx_array_get_(a);
    report(out, cap, arr.has_primitive() ? arr.primitive().name() : "");
    return 0;
  } catch (const std::exception& e) {
    report(out, cap, e.what());
    return 1;
  }
}

extern "C" void mlx_ext_use_portable_kernels(int on) {
  portable() = on != 0;
}
