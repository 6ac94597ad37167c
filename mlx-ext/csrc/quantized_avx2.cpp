// AVX2 + FMA kernels for the quantized primitive, compiled for those instructions whatever the build's target
// and run only after the CPU said it has them. On other architectures (or with -DMLX_EXT_NO_SIMD) the entry
// points decline.

#include "quantized.h"

#if (defined(__x86_64__) || defined(__i386__)) && !defined(MLX_EXT_NO_SIMD)

#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma")))

namespace mlx_ext {
namespace {

// This CPU runs the kernels below, and they exist for this bit width.
bool usable(const QuantLayout& l) {
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return avx2 && (l.bits == 4 || l.bits == 8);
}

AVX2 float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Eight consecutive q values of the row as floats, starting at element 8·i.
AVX2 __m256 q8_4bit(const uint32_t* words, int i) {
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i q = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(words[i])), shifts);
  return _mm256_cvtepi32_ps(_mm256_and_si256(q, _mm256_set1_epi32(15)));
}

AVX2 __m256 q8_8bit(const uint32_t* words, int i) {
  __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(words + 2 * i));
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
}


template <int Bits>
AVX2 void matvec_avx2(
    const QuantLayout& l,
    const uint32_t* w,
    const float* scales,
    const float* biases,
    const float* x,
    const float* xsum,
    float* y) {
  const int words_per_row = l.k * Bits / 32;
  const int groups = l.k / l.group;
  const int octets = l.group / 8; // 4, 8 or 16: always even
  for (int row = 0; row < l.n; ++row) {
    const uint32_t* wr = w + static_cast<int64_t>(row) * words_per_row;
    const float* sr = scales + static_cast<int64_t>(row) * groups;
    const float* br = biases + static_cast<int64_t>(row) * groups;
    __m256 acc = _mm256_setzero_ps();
    float bias_acc = 0.0f;
    for (int g = 0; g < groups; ++g) {
      const int first = g * octets; // octet index of the group's first element
      __m256 d0 = _mm256_setzero_ps();
      __m256 d1 = _mm256_setzero_ps();
      for (int o = 0; o < octets; o += 2) {
        const int i = first + o;
        const __m256 q0 = Bits == 4 ? q8_4bit(wr, i) : q8_8bit(wr, i);
        const __m256 q1 = Bits == 4 ? q8_4bit(wr, i + 1) : q8_8bit(wr, i + 1);
        d0 = _mm256_fmadd_ps(q0, _mm256_loadu_ps(x + 8 * i), d0);
        d1 = _mm256_fmadd_ps(q1, _mm256_loadu_ps(x + 8 * i + 8), d1);
      }
      acc = _mm256_fmadd_ps(_mm256_add_ps(d0, d1), _mm256_set1_ps(sr[g]), acc);
      bias_acc += br[g] * xsum[g];
    }
    y[row] = hsum(acc) + bias_acc;
  }
}

template <int Bits>
AVX2 void dequantize_avx2(const QuantLayout& l, const uint32_t* w, const float* scales, const float* biases, int r0, int r1, float* dst) {
  const int words_per_row = l.k * Bits / 32;
  const int groups = l.k / l.group;
  const int octets = l.group / 8;
  for (int row = r0; row < r1; ++row) {
    const uint32_t* wr = w + static_cast<int64_t>(row) * words_per_row;
    float* out = dst + static_cast<int64_t>(row - r0) * l.k;
    for (int g = 0; g < groups; ++g) {
      const __m256 s = _mm256_set1_ps(scales[static_cast<int64_t>(row) * groups + g]);
      const __m256 b = _mm256_set1_ps(biases[static_cast<int64_t>(row) * groups + g]);
      for (int o = 0; o < octets; ++o) {
        const int i = g * octets + o;
        const __m256 q = Bits == 4 ? q8_4bit(wr, i) : q8_8bit(wr, i);
        _mm256_storeu_ps(out + 8 * i, _mm256_fmadd_ps(q, s, b));
      }
    }
  }
}

} // namespace

bool matvec_simd(
    const QuantLayout& l,
    const uint32_t* w,
    const float* scales,
    const float* biases,
    const float* x,
    const float* xsum,
    float* y) {
  if (!usable(l)) {
    return false;
  }
  (l.bits == 4 ? matvec_avx2<4> : matvec_avx2<8>)(l, w, scales, biases, x, xsum, y);
  return true;
}

bool dequantize_simd(const QuantLayout& l, const uint32_t* w, const float* scales, const float* biases, int r0, int r1, float* dst) {
  if (!usable(l)) {
    return false;
  }
  (l.bits == 4 ? dequantize_avx2<4> : dequantize_avx2<8>)(l, w, scales, biases, r0, r1, dst);
  return true;
}

} // namespace mlx_ext

#else

namespace mlx_ext {

bool matvec_simd(const QuantLayout&, const uint32_t*, const float*, const float*, const float*, const float*, float*) {
  return false;
}

bool dequantize_simd(const QuantLayout&, const uint32_t*, const float*, const float*, int, int, float*) {
  return false;
}

} // namespace mlx_ext

#endif
