// The CUDA refine_mask kernels and their launcher. Only CUDA and project headers: this file
// compiles with plain nvcc (tests/test_cuda_nvcc.py, benchmarks/cuda_resources.py), the torch
// glue lives in refine_mask_cuda.cu.
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "dsnot_kernels.cuh"

namespace dsnot {
namespace cuda {

// At least 3 resident blocks per multiprocessor: up to 80 registers per thread. With 4 (64
// registers) ptxas leaves a few cold spills of per-row constants on sm_90 (benchmarks/RESULTS.md,
// CUDA kernel resources; tests/test_cuda_nvcc.py fails on any spill). Shared memory limits rows
// of 8192+ columns to 3 or fewer blocks anyway (the launcher picks the layout).
constexpr int kMinBlocksPerSM = 3;

template <int DT>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM) refine_mask_kernel(RefineParams p) {
  extern __shared__ __align__(16) char smem[];
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) refine_row<DT>(p, smem, row);
}

template __global__ void refine_mask_kernel<kF32>(RefineParams);
template __global__ void refine_mask_kernel<kF16>(RefineParams);
template __global__ void refine_mask_kernel<kBF16>(RefineParams);

size_t refine_smem_bytes(int32_t cols, int32_t dtype, bool stage_weight, bool cache_keys) {
  return smem_layout(sizeof(RowShared), cols, dtype, stage_weight, cache_keys).total;
}

// The layout choice and the kernel's dynamic shared-memory limit, per device, dtype, row length
// and forced layout: decided once (occupancy queries cost microseconds), then reused.
struct LayoutChoice {
  int option;
  uint32_t smem;
};
static std::mutex g_layout_mutex;
static std::map<std::tuple<int, int, int32_t, int>, LayoutChoice> g_layouts;
static std::map<std::pair<int, int>, uint32_t> g_smem_limit_set;  // (device, dtype) -> attribute value

template <int DT>
static cudaError_t choose_layout(int dev, int32_t cols, int optin, int layout, LayoutChoice* out) {
  const auto kernel = refine_mask_kernel<DT>;
  // Shared-memory options, most cached first: key cache + staged row, key cache, staged row, none.
  // Take the one with the most resident blocks per multiprocessor (ties: the earlier one).
  const bool options[4][2] = {{true, true}, {false, true}, {true, false}, {false, false}};
  int best = -1;
  int best_blocks = 0;
  uint32_t best_smem = 0;
  uint32_t last_set = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t smem = static_cast<uint32_t>(refine_smem_bytes(cols, DT, options[i][0], options[i][1]));
    if (smem > static_cast<uint32_t>(optin)) continue;
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
    last_set = smem;
    int blocks = 0;
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, smem);
    if (e != cudaSuccess) return e;
    if (layout == i && blocks > 0) {  // forced and it fits
      best = i;
      best_blocks = blocks;
      best_smem = smem;
      break;
    }
    if (blocks > best_blocks) {
      best = i;
      best_blocks = blocks;
      best_smem = smem;
    }
  }
  if (best < 0) return cudaErrorInvalidValue;
  // The attribute must cover every launch of this kernel on this device: keep it at the maximum.
  uint32_t& limit = g_smem_limit_set[{dev, DT}];
  limit = limit > best_smem ? limit : best_smem;
  if (last_set != limit) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(limit));
    if (e != cudaSuccess) return e;
  }
  out->option = best;
  out->smem = best_smem;
  return cudaSuccess;
}

template <int DT>
static cudaError_t launch_typed(RefineParams p, int dev, int optin, int layout, cudaStream_t stream) {
  LayoutChoice choice{};
  {
    std::lock_guard<std::mutex> lock(g_layout_mutex);
    const auto key = std::make_tuple(dev, DT, p.cols, layout);
    const auto it = g_layouts.find(key);
    if (it != g_layouts.end()) {
      choice = it->second;
    } else {
      const cudaError_t e = choose_layout<DT>(dev, p.cols, optin, layout, &choice);
      if (e != cudaSuccess) return e;
      g_layouts[key] = choice;
    }
  }
  p.stage_weight = (choice.option == 0 || choice.option == 2) ? 1 : 0;
  p.cache_keys = choice.option <= 1 ? 1 : 0;
  // One block per row; a grid-stride loop covers more rows than a grid can hold.
  const int64_t grid = p.rows < (int64_t{1} << 30) ? p.rows : (int64_t{1} << 30);
  refine_mask_kernel<DT><<<static_cast<unsigned>(grid), kThreads, choice.smem, stream>>>(p);
  return cudaGetLastError();
}

int launch_refine_mask(RefineParams p, void* stream, int layout) {
  if (p.rows <= 0 || p.cols <= 0) return cudaSuccess;
  if (p.cols > kMaxCols || p.rows > INT32_MAX || p.dtype < kF32 || p.dtype > kBF16) return cudaErrorInvalidValue;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  int optin = 0;
  e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e != cudaSuccess) return e;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case kF32: return launch_typed<kF32>(p, dev, optin, layout, s);
    case kF16: return launch_typed<kF16>(p, dev, optin, layout, s);
    default: return launch_typed<kBF16>(p, dev, optin, layout, s);
  }
}

}  // namespace cuda
}  // namespace dsnot
