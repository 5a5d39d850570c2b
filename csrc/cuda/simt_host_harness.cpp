// Runs the CUDA refine kernel body (dsnot_kernels.cuh) on the host SIMT emulation (simt_host.h),
// one emulated 256-thread block per row, for tests on machines without a GPU
// (tests/test_cuda_host.py builds this file with g++ and calls it through ctypes).
// Not part of the extension: setup.py compiles only csrc/*.cpp, csrc/cpu/*.cpp and csrc/cuda/*.cu.
#ifndef DSNOT_SIMT_HOST
#define DSNOT_SIMT_HOST 1
#endif
#include <cstring>
#include <exception>
#include <vector>

#include "dsnot_kernels.cuh"

using dsnot::cuda::RefineParams;

extern "C" int dsnot_simt_refine_mask(const void* weight, int32_t dtype, const float* sum_metric_row, const float* var,
                                      const float* varp, const float* scaler_row, const float* initial_metric,
                                      const uint8_t* initial_mask, const float* mean, uint8_t* mask_out,
                                      int32_t* swaps_out, int64_t rows, int32_t cols, double sparsity, int32_t prune_n,
                                      int32_t prune_m, int32_t max_cycle_time, double update_threshold,
                                      double pow_of_var, int32_t same_sign, int32_t objective, int32_t stage_weight,
                                      int32_t cache_keys, char* errbuf, int32_t errlen) {
  RefineParams p{};
  p.weight = weight;
  p.sum_metric_row = sum_metric_row;
  p.var = var;
  p.varp = varp;
  p.scaler_row = scaler_row;
  p.initial_metric = initial_metric;
  p.initial_mask = initial_mask;
  p.mean = mean;
  p.mask_out = mask_out;
  p.swaps_out = swaps_out;
  p.rows = rows;
  p.cols = cols;
  p.dtype = dtype;
  p.prune_n = prune_n;
  p.prune_m = prune_m;
  p.max_cycle_time = max_cycle_time;
  p.same_sign = same_sign;
  p.objective = objective;
  p.stage_weight = stage_weight;
  p.cache_keys = cache_keys;
  dsnot::cuda::set_scalar_params(p, sparsity, update_threshold, pow_of_var);
  const auto lay = dsnot::cuda::smem_layout(sizeof(dsnot::cuda::RowShared), cols, dtype, stage_weight != 0,
                                             cache_keys != 0);
  // 16-byte aligned shared memory, filled with a pattern so that reads of unwritten bytes show.
  std::vector<uint64_t> smem_store((lay.total + 15) / 8 + 2);
  char* smem = reinterpret_cast<char*>(smem_store.data());
  try {
    dsnot::simt::BlockEmu block(dsnot::cuda::kThreads);
    for (int64_t row = 0; row < rows; ++row) {
      std::memset(smem, 0xA5, lay.total);
      std::function<void()> body;
      switch (dtype) {
        case dsnot::cuda::kF32: body = [&] { dsnot::cuda::refine_row<dsnot::cuda::kF32>(p, smem, row); }; break;
        case dsnot::cuda::kF16: body = [&] { dsnot::cuda::refine_row<dsnot::cuda::kF16>(p, smem, row); }; break;
        default: body = [&] { dsnot::cuda::refine_row<dsnot::cuda::kBF16>(p, smem, row); }; break;
      }
      block.run(body);
    }
  } catch (const std::exception& e) {
    if (errbuf != nullptr && errlen > 0) {
      std::strncpy(errbuf, e.what(), static_cast<size_t>(errlen) - 1);
      errbuf[errlen - 1] = 0;
    }
    return 1;
  }
  return 0;
}
