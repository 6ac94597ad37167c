// MLX's distributed layer (ring over TCP, NCCL, MPI) for data-parallel training; mlx-rs 0.33 wraps none of it.
// One group per process, joined once; the collectives run on it, on the stream the caller names (the CPU
// stream for ring, the GPU stream for NCCL).
#include "common.h"

#include <optional>

#include "mlx/distributed/distributed.h"
#include "mlx/distributed/ops.h"

using namespace mlx_ext;
namespace dist = mx::distributed;

namespace {

std::optional<dist::Group>& joined() {
  static std::optional<dist::Group> group;
  return group;
}

dist::Group group() {
  if (!joined()) {
    throw std::runtime_error("no distributed group: join one first");
  }
  return *joined();
}

}  // namespace

// Joins the group of `backend` ("ring", "nccl", "mpi"), strictly: a backend that cannot start is an error, never
// a silent group of one.
extern "C" int mlx_ext_dist_init(const char* backend, int* rank, int* size, char* err, size_t cap) {
  return guarded(err, cap, [&] {
    if (!dist::is_available(backend)) {
      throw std::runtime_error(std::string("MLX was built without the ") + backend + " backend");
    }
    auto g = dist::init(true, backend);
    *rank = g.rank();
    *size = g.size();
    joined() = g;
  });
}

extern "C" int mlx_ext_dist_all_sum(mlx_array* res, mlx_array x, mlx_stream s, char* err, size_t cap) {
  return guarded(err, cap, [&] { mlx_array_set_(*res, dist::all_sum(mlx_array_get_(x), group(), mlx_stream_get_(s))); });
}

extern "C" int mlx_ext_dist_all_max(mlx_array* res, mlx_array x, mlx_stream s, char* err, size_t cap) {
  return guarded(err, cap, [&] { mlx_array_set_(*res, dist::all_max(mlx_array_get_(x), group(), mlx_stream_get_(s))); });
}

extern "C" int mlx_ext_dist_all_gather(mlx_array* res, mlx_array x, mlx_stream s, char* err, size_t cap) {
  return guarded(err, cap, [&] { mlx_array_set_(*res, dist::all_gather(mlx_array_get_(x), group(), mlx_stream_get_(s))); });
}
