// MLX's quantization ops with the mode named (affine, mxfp4, nvfp4, mxfp8). mlx-rs 0.33 passes "affine" to
// every quantization op, so the microscaling formats MLX 0.32 packs are reached through these instead.
#include "common.h"

using namespace mlx_ext;

namespace {

std::optional<mx::array> maybe(mlx_array a) {
  if (!a.ctx) {
    return std::nullopt;
  }
  return mlx_array_get_(a);
}

}  // namespace

// Writes the packed weight, the scales and (affine only; left empty otherwise) the biases.
extern "C" int mlx_ext_quantize(
    mlx_array* w_out,
    mlx_array* scales_out,
    mlx_array* biases_out,
    mlx_array w,
    int group_size,
    int bits,
    const char* mode,
    mlx_stream stream,
    char* err,
    size_t cap) {
  return guarded(err, cap, [&] {
    auto parts = mx::quantize(mlx_array_get_(w), group_size, bits, mode, std::nullopt, mlx_stream_get_(stream));
    if (parts.size() < 2) {
      throw std::runtime_error("quantize returned fewer than two arrays");
    }
    mlx_array_set_(*w_out, std::move(parts[0]));
    mlx_array_set_(*scales_out, std::move(parts[1]));
    if (parts.size() > 2) {
      mlx_array_set_(*biases_out, std::move(parts[2]));
    }
  });
}

extern "C" int mlx_ext_dequantize(
    mlx_array* res,
    mlx_array w,
    mlx_array scales,
    mlx_array biases,
    int group_size,
    int bits,
    const char* mode,
    mlx_stream stream,
    char* err,
    size_t cap) {
  return guarded(err, cap, [&] {
    mlx_array_set_(
        *res,
        mx::dequantize(
            mlx_array_get_(w),
            mlx_array_get_(scales),
            maybe(biases),
            group_size,
            bits,
            mode,
            std::nullopt,
            std::nullopt,
            mlx_stream_get_(stream)));
  });
}

extern "C" int mlx_ext_quantized_matmul(
    mlx_array* res,
    mlx_array x,
    mlx_array w,
    mlx_array scales,
    mlx_array biases,
    int transpose,
    int group_size,
    int bits,
    const char* mode,
    mlx_stream stream,
    char* err,
    size_t cap) {
  return guarded(err, cap, [&] {
    mlx_array_set_(
        *res,
        mx::quantized_matmul(
            mlx_array_get_(x),
            mlx_array_get_(w),
            mlx_array_get_(scales),
            maybe(biases),
            transpose != 0,
            group_size,
            bits,
            mode,
            mlx_stream_get_(stream)));
  });
}

extern "C" int mlx_ext_gather_qmm(
    mlx_array* res,
    mlx_array x,
    mlx_array w,
    mlx_array scales,
    mlx_array biases,
    mlx_array lhs_indices,
    mlx_array rhs_indices,
    int transpose,
    int group_size,
    int bits,
    const char* mode,
    int sorted_indices,
    mlx_stream stream,
    char* err,
    size_t cap) {
  return guarded(err, cap, [&] {
    mlx_array_set_(
        *res,
        mx::gather_qmm(
            mlx_array_get_(x),
            mlx_array_get_(w),
            mlx_array_get_(scales),
            maybe(biases),
            maybe(lhs_indices),
            maybe(rhs_indices),
            transpose != 0,
            group_size,
            bits,
            mode,
            sorted_indices != 0,
            mlx_stream_get_(stream)));
  });
}
