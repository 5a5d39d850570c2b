// Launch parameters of the CUDA refine_mask kernel (docs/KERNEL_CONTRACT.md), in plain C++.
//
// Included by the torch glue (refine_mask_cuda.cu), by the device code (dsnot_kernels.cuh) and
// by the host emulation harness (simt_host_harness.cpp), so that all three agree on one struct
// and one set of derived values. No CUDA or torch headers here.
#pragma once
#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define DSNOT_LAUNCH_HD __host__ __device__ inline
#else
#define DSNOT_LAUNCH_HD inline
#endif

namespace dsnot {
namespace cuda {

enum WeightDType : int32_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

// One thread block per row; its 256 threads are the 256 lanes of the contract's error sum.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Candidates of each cursor list staged per selection round; more are selected on demand.
constexpr int kListChunk = 64;
constexpr int kLists = 4;  // growth hi, growth lo, prune plo, prune phi
// Longest row served: composite keys hold the column in 32 bits, the per-column flags live in
// shared memory (cols bytes) and the launch checks the device's shared-memory limit.
constexpr int32_t kMaxCols = 1 << 20;

struct RefineParams {
  const void* weight;            // (rows, cols) of dtype, row-major contiguous
  const float* sum_metric_row;   // (cols,)
  const float* var;              // (cols,)
  const float* varp;             // (cols,) var**p rounded to float32, only for key_mode 2
  const float* scaler_row;       // (cols,)
  const float* initial_metric;   // (rows, cols) or nullptr (wanda)
  const uint8_t* initial_mask;   // (rows, cols) bool bytes or nullptr
  const float* mean;             // (cols,), objective 1 only
  uint8_t* mask_out;             // (rows, cols) bool bytes, every element written
  int32_t* swaps_out;            // (rows,)
  int64_t rows;
  int32_t cols;
  int32_t dtype;                 // WeightDType
  int32_t k_prune;               // unstructured: int(cols * sparsity)
  int32_t prune_n;               // N:M when > 0
  int32_t prune_m;
  int32_t max_cycle_time;
  float thr;                     // float32(update_threshold)
  int32_t key_mode;              // growth key: 0 = dm, 1 = dm / var, 2 = dm / varp
  int32_t same_sign;             // objective 0 only
  int32_t objective;             // 0 = dsnot, 1 = mse
  int32_t stage_weight;          // 1 = copy the weight row into shared memory
  int32_t cache_keys;            // 1 = keep one 32-bit order key per column in shared memory
};

DSNOT_LAUNCH_HD int32_t weight_elem_size(int32_t dtype) { return dtype == kF32 ? 4 : 2; }

// The scalar arguments of the op, turned into the kernel's values exactly as the reference does:
// int(cols * sparsity) in double (Python semantics), the threshold rounded to float32.
inline void set_scalar_params(RefineParams& p, double sparsity, double update_threshold, double pow_of_var) {
  p.k_prune = p.prune_n > 0 ? 0 : static_cast<int32_t>(static_cast<double>(p.cols) * sparsity);
  p.thr = static_cast<float>(update_threshold);
  p.key_mode = pow_of_var == 0.0 ? 0 : (pow_of_var == 1.0 ? 1 : 2);
}

// Shared memory of one block: a fixed control area, the per-column flags, optionally the
// per-column key cache and the staged weight row. Offsets are multiples of 16 bytes.
struct SmemLayout {
  uint32_t control;  // bytes of the control area (RowShared, see dsnot_kernels.cuh)
  uint32_t flags;    // offset of the flags (1 byte per column)
  uint32_t keys;     // offset of the key cache (4 bytes per column), when cached
  uint32_t weight;   // offset of the staged weight row, when staged
  uint32_t total;
};

// 32-bit arithmetic: cols <= kMaxCols keeps every size far below 2**32 (and keeps the kernel's
// register use down).
DSNOT_LAUNCH_HD uint32_t round_up16(uint32_t x) { return (x + 15u) & ~15u; }

DSNOT_LAUNCH_HD SmemLayout smem_layout(uint32_t control_bytes, int32_t cols, int32_t dtype, bool stage_weight,
                                       bool cache_keys) {
  const uint32_t n = static_cast<uint32_t>(cols);
  SmemLayout s;
  s.control = round_up16(control_bytes);
  s.flags = s.control;
  s.keys = s.flags + round_up16(n);
  s.weight = s.keys + (cache_keys ? round_up16(n * 4u) : 0u);
  s.total = s.weight + (stage_weight ? round_up16(n * static_cast<uint32_t>(weight_elem_size(dtype))) : 0u);
  return s;
}

// Host entry points, defined in dsnot_kernels.cu (nvcc). `stream` is a cudaStream_t.
// Bytes of shared memory a block needs.
size_t refine_smem_bytes(int32_t cols, int32_t dtype, bool stage_weight, bool cache_keys);
// Launches the kernel on `stream`; returns a cudaError_t value (0 = success). Chooses
// p.stage_weight and p.cache_keys for the most resident blocks per multiprocessor (ties: more
// cached); fails with cudaErrorInvalidValue when even the flags do not fit. `layout` forces one
// option when it fits (0 = key cache + staged row, 1 = key cache, 2 = staged row, 3 = neither;
// -1 = choose): the refine benchmark times each of them.
int launch_refine_mask(RefineParams p, void* stream, int layout = -1);

}  // namespace cuda
}  // namespace dsnot
