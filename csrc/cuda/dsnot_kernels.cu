// The CUDA refine_mask kernels and their launcher. Only CUDA and project headers: this file
// compiles with plain nvcc (tests/test_cuda_compile.py, benchmarks/cuda_resources.py), the torch
// glue lives in refine_mask_cuda.cu.
#include <cuda_runtime.h>

#include "dsnot_kernels.cuh"

namespace dsnot {
namespace cuda {

// Blocks per multiprocessor the register budget must allow: 6 on sm_90 (40 registers, no spills),
// 4 on older chips, where ptxas spills at 40 (benchmarks/RESULTS.md, CUDA kernel resources).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define DSNOT_MIN_BLOCKS 6
#else
#define DSNOT_MIN_BLOCKS 4
#endif

template <int DT>
__global__ void __launch_bounds__(kThreads, DSNOT_MIN_BLOCKS) refine_mask_kernel(RefineParams p) {
  extern __shared__ __align__(16) char smem[];
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) refine_row<DT>(p, smem, row);
}

template __global__ void refine_mask_kernel<kF32>(RefineParams);
template __global__ void refine_mask_kernel<kF16>(RefineParams);
template __global__ void refine_mask_kernel<kBF16>(RefineParams);

size_t refine_smem_bytes(int32_t cols, int32_t dtype, bool stage_weight) {
  return smem_layout(sizeof(RowShared), cols, dtype, stage_weight).total;
}

template <int DT>
static cudaError_t launch_typed(const RefineParams& p, size_t smem, cudaStream_t stream) {
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(refine_mask_kernel<DT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  // One block per row; a grid-stride loop covers more rows than a grid can hold.
  const int64_t grid = p.rows < (int64_t{1} << 30) ? p.rows : (int64_t{1} << 30);
  refine_mask_kernel<DT><<<static_cast<unsigned>(grid), kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

int launch_refine_mask(RefineParams p, void* stream) {
  if (p.rows <= 0 || p.cols <= 0) return cudaSuccess;
  if (p.cols > kMaxCols || p.dtype < kF32 || p.dtype > kBF16) return cudaErrorInvalidValue;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  int optin = 0;
  e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e != cudaSuccess) return e;
  // Stage the weight row when it fits; otherwise read it from global memory (through L1/L2).
  const size_t staged = refine_smem_bytes(p.cols, p.dtype, true);
  const size_t unstaged = refine_smem_bytes(p.cols, p.dtype, false);
  p.stage_weight = staged <= static_cast<size_t>(optin) ? 1 : 0;
  const size_t smem = p.stage_weight ? staged : unstaged;
  if (smem > static_cast<size_t>(optin)) return cudaErrorInvalidValue;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case kF32: return launch_typed<kF32>(p, smem, s);
    case kF16: return launch_typed<kF16>(p, smem, s);
    default: return launch_typed<kBF16>(p, smem, s);
  }
}

}  // namespace cuda
}  // namespace dsnot
