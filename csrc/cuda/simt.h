// The few SIMT primitives the refine kernel uses, behind one small interface.
//
// Under nvcc they are the CUDA intrinsics. With DSNOT_SIMT_HOST defined (a plain C++ compile of
// the same kernel body, see simt_host.h) they run on a host emulation of one thread block, so the
// kernel logic can be executed and compared with the reference on a machine without a GPU.
// Every warp-level primitive here is called by all 32 lanes of the warp (full mask).
#pragma once
#include <cstdint>

#if defined(DSNOT_SIMT_HOST)
#include "simt_host.h"
#define DSNOT_DEV inline
#else
#include <cuda_runtime.h>
#define DSNOT_DEV __device__ __forceinline__

namespace dsnot {
namespace simt {

DSNOT_DEV int thread_id() { return static_cast<int>(threadIdx.x); }
DSNOT_DEV void sync_block() { __syncthreads(); }
DSNOT_DEV void sync_warp() { __syncwarp(); }
DSNOT_DEV float shfl_xor(float v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
DSNOT_DEV double shfl_xor(double v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
DSNOT_DEV uint32_t shfl_xor(uint32_t v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
DSNOT_DEV uint64_t shfl_xor(uint64_t v, int m) {
  return static_cast<uint64_t>(__shfl_xor_sync(0xffffffffu, static_cast<unsigned long long>(v), m));
}
DSNOT_DEV uint32_t shfl_up(uint32_t v, int d) { return __shfl_up_sync(0xffffffffu, v, d); }
DSNOT_DEV uint32_t shfl(uint32_t v, int src) { return __shfl_sync(0xffffffffu, v, src); }
// Lanes holding the same value as this lane (bit per lane).
DSNOT_DEV uint32_t match_any(uint32_t v) { return __match_any_sync(0xffffffffu, v); }
DSNOT_DEV uint32_t ballot(bool p) { return __ballot_sync(0xffffffffu, p); }
DSNOT_DEV int popc(uint32_t v) { return __popc(v); }
DSNOT_DEV int ffs(uint32_t v) { return __ffs(v); }
// Shared-memory atomic add; returns the old value.
DSNOT_DEV uint32_t atomic_add(uint32_t* p, uint32_t v) { return atomicAdd(p, v); }

}  // namespace simt
}  // namespace dsnot
#endif
