// Affine 4/8-bit quantized matmuls on the CPU.
//
// MLX's CPU quantized_matmul is a scalar loop (~2 GFLOP/s on a 2-core EPYC), so both decode and prefill of a
// quantized model crawl. `QuantizedMatmul` takes over float32 inputs on a CPU stream: one input row goes
// through a SIMD matrix-vector kernel (AVX2, quantized_avx2.cpp) that unpacks the weights in registers; more
// rows dequantize the weights block by block into a bounded scratch buffer (at most ~8 MB, from MLX's
// allocator so peak memory counts it) and multiply with the BLAS. The dense weights never enter the graph, so a
// gradient through x (QLoRA) keeps only the packed weights alive, as MLX's own primitive does.

#include "common.h"
#include "quantized.h"

namespace mlx_ext {
namespace {

void matvec_scalar(
    const QuantLayout& l,
    const uint32_t* w,
    const float* scales,
    const float* biases,
    const float* x,
    const float* xsum,
    float* y) {
  const int per_word = 32 / l.bits;
  const uint32_t mask = (1u << l.bits) - 1;
  const int words_per_row = l.k / per_word;
  const int groups = l.k / l.group;
  for (int row = 0; row < l.n; ++row) {
    const uint32_t* wr = w + static_cast<int64_t>(row) * words_per_row;
    float acc = 0.0f;
    for (int g = 0; g < groups; ++g) {
      float dot = 0.0f;
      for (int j = g * l.group; j < (g + 1) * l.group; ++j) {
        const uint32_t q = (wr[j / per_word] >> (l.bits * (j % per_word))) & mask;
        dot += static_cast<float>(q) * x[j];
      }
      acc += scales[static_cast<int64_t>(row) * groups + g] * dot +
          biases[static_cast<int64_t>(row) * groups + g] * xsum[g];
    }
    y[row] = acc;
  }
}

void dequantize_scalar(const QuantLayout& l, const uint32_t* w, const float* scales, const float* biases, int r0, int r1, float* dst) {
  const int per_word = 32 / l.bits;
  const uint32_t mask = (1u << l.bits) - 1;
  const int words_per_row = l.k / per_word;
  const int groups = l.k / l.group;
  for (int row = r0; row < r1; ++row) {
    const uint32_t* wr = w + static_cast<int64_t>(row) * words_per_row;
    float* out = dst + static_cast<int64_t>(row - r0) * l.k;
    for (int j = 0; j < l.k; ++j) {
      const uint32_t q = (wr[j / per_word] >> (l.bits * (j % per_word))) & mask;
      const int64_t g = static_cast<int64_t>(row) * groups + j / l.group;
      out[j] = scales[g] * static_cast<float>(q) + biases[g];
    }
  }
}

void dequantize_rows(const QuantLayout& l, const uint32_t* w, const float* scales, const float* biases, int r0, int r1, float* dst) {
  if (portable() || !dequantize_simd(l, w, scales, biases, r0, r1, dst)) {
    dequantize_scalar(l, w, scales, biases, r0, r1, dst);
  }
}

// C (+)= A · B or A · Bᵀ (row-major) through the BLAS libmlx uses, or plain loops where it has none.
void gemm(bool b_trans, int m, int n, int k, const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  if (const Sgemm f = sgemm()) {
    f(kRowMajor, kNoTrans, b_trans ? kTrans : kNoTrans, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      float acc = 0.0f;
      for (int p = 0; p < k; ++p) {
        acc += a[static_cast<int64_t>(i) * lda + p] * (b_trans ? b[static_cast<int64_t>(j) * ldb + p] : b[static_cast<int64_t>(p) * ldb + j]);
      }
      float& out = c[static_cast<int64_t>(i) * ldc + j];
      out = acc + (beta == 0.0f ? 0.0f : beta * out);
    }
  }
}

// Dense rows of W dequantized at a time: ~8 MB of scratch, whatever the matrix.
int block_rows(const QuantLayout& l) {
  return std::clamp((1 << 21) / std::max(l.k, 1), 8, std::max(l.n, 1));
}

// y = x Wᵀ (transpose) or y = x W, W the n × k dense matrix of the packed weights.
class QuantizedMatmul : public CpuPrimitive {
 public:
  QuantizedMatmul(mx::Stream s, int group, int bits, bool transpose)
      : CpuPrimitive(s), group_(group), bits_(bits), transpose_(transpose) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const mx::array& x = inputs[0];
    const mx::array& w = inputs[1];
    const mx::array& scales = inputs[2];
    const mx::array& biases = inputs[3];
    for (const mx::array* a : {&w, &scales, &biases}) {
      // Checkpoint tensors are contiguous; a strided view would need its own indexing, so refuse it loudly.
      if (!a->flags().row_contiguous) {
        throw std::invalid_argument("[QuantizedMatmul] packed weights, scales and biases must be row-contiguous");
      }
    }
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const mx::array* a : {&x, &w, &scales, &biases}) {
      encoder.set_input_array(*a);
    }
    encoder.set_output_array(out);
    const QuantLayout l{w.shape(0), dense_columns(w), group_, bits_};
    const int m = static_cast<int>(x.size() / x.shape(-1));
    const uint32_t* wp = w.data<uint32_t>();
    const float* sp = scales.data<float>();
    const float* bp = biases.data<float>();
    float* yp = out.data<float>();
    if (transpose_ && m == 1) {
      encoder.dispatch([l, row = Rows(x), wp, sp, bp, yp]() {
        std::vector<float> copy;
        const float* xs = row.dense(copy);
        std::vector<float> xsum(l.k / l.group, 0.0f);
        for (int j = 0; j < l.k; ++j) {
          xsum[j / l.group] += xs[j];
        }
        if (portable() || !matvec_simd(l, wp, sp, bp, xs, xsum.data(), yp)) {
          matvec_scalar(l, wp, sp, bp, xs, xsum.data(), yp);
        }
      });
      return;
    }
    encoder.dispatch([l, rows = Rows(x), m, wp, sp, bp, yp, transpose = transpose_]() {
      std::vector<float> copy;
      const float* xp = rows.dense(copy);
      const int block = block_rows(l);
      mx::allocator::Buffer scratch = mx::allocator::malloc(static_cast<size_t>(block) * l.k * sizeof(float));
      float* dense = static_cast<float*>(scratch.raw_ptr());
      for (int r0 = 0; r0 < l.n; r0 += block) {
        const int r1 = std::min(r0 + block, l.n);
        dequantize_rows(l, wp, sp, bp, r0, r1, dense);
        if (transpose) {
          // y[:, r0:r1] = x · W[r0:r1]ᵀ, x is m × k.
          gemm(true, m, r1 - r0, l.k, xp, l.k, dense, l.k, 0.0f, yp + r0, l.n);
        } else {
          // y += x[:, r0:r1] · W[r0:r1], x is m × n, y is m × k.
          gemm(false, m, l.k, r1 - r0, xp + r0, l.n, dense, l.k, r0 == 0 ? 0.0f : 1.0f, yp, l.k);
        }
      }
      mx::allocator::free(scratch);
    });
  }

  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>&) override {
    std::vector<mx::array> grads;
    for (int arg : argnums) {
      if (arg != 0) {
        throw std::invalid_argument("[QuantizedMatmul] no gradient with respect to the quantized weights");
      }
      // The gradient through x of x Wᵀ is c W, and of x W is c Wᵀ: the same primitive, other orientation.
      auto flipped = std::make_shared<QuantizedMatmul>(stream(), group_, bits_, !transpose_);
      const mx::array& c = cotangents[0];
      mx::Shape shape = flipped->output_shapes({c, primals[1]})[0];
      grads.push_back(mx::array(shape, mx::float32, flipped, {c, primals[1], primals[2], primals[3]}));
    }
    return grads;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    const int last = transpose_ ? inputs[1].shape(0) : dense_columns(inputs[1]);
    return {out_shape(inputs[0], last)};
  }

  const char* name() const override {
    return "mlx_ext::QuantizedMatmul";
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const QuantizedMatmul&>(other);
    return group_ == o.group_ && bits_ == o.bits_ && transpose_ == o.transpose_;
  }

 private:
  // Dense columns of the packed weight matrix.
  int dense_columns(const mx::array& w) const {
    return static_cast<int>(w.shape(1) * 32 / bits_);
  }

  int group_;
  int bits_;
  bool transpose_;
};

} // namespace
} // namespace mlx_ext

using namespace mlx_ext;

// x @ dequantize(w, scales, biases)ᵀ for affine quantization. Float32 x with float32 scales and biases, 4 or 8
// bits, group 32/64/128, on a CPU stream takes QuantizedMatmul; anything else is MLX's quantized_matmul.
extern "C" int mlx_ext_quantized_matmul_t(
    mlx_array* res,
    mlx_array x,
    mlx_array w,
    mlx_array scales,
    mlx_array biases,
    int group_size,
    int bits,
    mlx_stream stream,
    char* err,
    size_t cap) {
  try {
    const mx::array& xa = mlx_array_get_(x);
    const mx::array& wa = mlx_array_get_(w);
    const mx::array& sa = mlx_array_get_(scales);
    const mx::array& ba = mlx_array_get_(biases);
    const mx::Stream s = mlx_stream_get_(stream);
    const int k = xa.ndim() >= 1 ? xa.shape(-1) : 0;
    const bool fast = f32_on_cpu(xa, s) && (bits == 4 || bits == 8) &&
        (group_size == 32 || group_size == 64 || group_size == 128) && k % group_size == 0 &&
        wa.dtype() == mx::uint32 && wa.ndim() == 2 && wa.shape(1) == k * bits / 32 && sa.dtype() == mx::float32 &&
        ba.dtype() == mx::float32 && sa.ndim() == 2 && sa.shape(0) == wa.shape(0) && sa.shape(1) == k / group_size &&
        ba.shape() == sa.shape();
    mx::array y = fast
        ? mx::array(
              out_shape(xa, wa.shape(0)),
              mx::float32,
              std::make_shared<QuantizedMatmul>(s, group_size, bits, true),
              {xa, wa, sa, ba})
        : mx::quantized_matmul(xa, wa, sa, ba, true, group_size, bits, "affine", s);
    mlx_array_set_(*res, std::move(y));
    return 0;
  } catch (const std::exception& e) {
    report(err, cap, e.what());
    return 1;
  }
}
