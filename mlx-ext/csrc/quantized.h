// Affine quantization as mx::quantize writes it: w = scale · q + bias per group of `group` consecutive inputs
// of a row, q packed little-end first into uint32 words (8 per word at 4 bits, 4 at 8 bits).
#pragma once

#include <cstdint>

namespace mlx_ext {

// A packed n × k matrix.
struct QuantLayout {
  int n;
  int k;
  int group;
  int bits;
};

// y = W x for one row x, given xsum[g] = the sum of x over group g. False, computing nothing, where this CPU or
// build has no SIMD kernel (the caller then runs plain loops).
bool matvec_simd(
    const QuantLayout& l,
    const uint32_t* w,
    const float* scales,
    const float* biases,
    const float* x,
    const float* xsum,
    float* y);

// Dense rows [r0, r1) of W into dst (row-major, k columns); false as above.
bool dequantize_simd(const QuantLayout& l, const uint32_t* w, const float* scales, const float* biases, int r0, int r1, float* dst);

} // namespace mlx_ext
