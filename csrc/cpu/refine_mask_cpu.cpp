// CPU (C++/OpenMP) kernel of dsnot_kernels::refine_mask (schema in csrc/ops.cpp; semantics in
// docs/KERNEL_CONTRACT.md and spec docs/ALGORITHM.md §2-§3). Rows run in parallel with at::parallel_for,
// each thread with its own RowScratch; the per-row work is in refine_row.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <tuple>

#include "dsnot_common.h"
#include "cpu/simd.h"
#include "refine_row.h"

namespace dsnot {
namespace cpu {
namespace {

void check_cpu_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "refine_mask (cpu): ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.is_contiguous(), "refine_mask (cpu): ", name, " must be contiguous");
}

void check_stat(const at::Tensor& t, const char* name, int64_t cols) {
  check_cpu_contiguous(t, name);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == cols, "refine_mask (cpu): ", name, " must have shape (",
              cols, ",), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "refine_mask (cpu): ", name, " must be float32, got ",
              t.scalar_type());
}

bool poison_requested() {
  const char* v = std::getenv("DSNOT_KERNELS_POISON");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

// One body per weight dtype, compiled for x86-64-v4 (AVX-512), AVX2 and the baseline ISA; the
// loader picks one at run time (GCC function multiversioning). AVX-512 measured 12 % faster than
// AVX2 at 4096x4096 2:4 on the development machine. Vector width changes no result: lanes of the
// contract's sum are independent, division and sqrt are correctly rounded, and -ffp-contract=off
// keeps FMA out of the AVX2 clone too. Build with -DDSNOT_CPU_NO_CLONES (e.g. CFLAGS=...) to get
// the baseline ISA only (how the tests check that both clones agree).

DSNOT_CPU_CLONES void rows_f32(const Problem& P, int64_t b, int64_t e, RowScratch& S) {
  for (int64_t i = b; i < e; ++i) refine_row<float>(P, i, S, i + 1 < e);
}
DSNOT_CPU_CLONES void rows_f16(const Problem& P, int64_t b, int64_t e, RowScratch& S) {
  for (int64_t i = b; i < e; ++i) refine_row<at::Half>(P, i, S, i + 1 < e);
}
DSNOT_CPU_CLONES void rows_bf16(const Problem& P, int64_t b, int64_t e, RowScratch& S) {
  for (int64_t i = b; i < e; ++i) refine_row<at::BFloat16>(P, i, S, i + 1 < e);
}

// Rows are claimed in small blocks from a shared counter, not split in fixed halves: on a busy
// machine a thread that is descheduled leaves its rows to the others instead of making the whole
// call wait for it. Scratch is set up once per thread and call.
template <typename Fn>
void run_rows(const Problem& P, Fn rows) {
  // Waking a sleeping pool thread can take a scheduler time slice on a loaded machine: below
  // ~1M weights per thread the call runs on the calling thread alone.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(threads, P.rows * P.cols / (int64_t{1} << 20)));
  if (tasks == 1 || at::in_parallel_region()) {
    RowScratch scratch(P);
    rows(P, 0, P.rows, scratch);
    return;
  }
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(16, P.rows / (8 * tasks)));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    RowScratch scratch(P);
    for (;;) {
      const int64_t b = next.fetch_add(block, std::memory_order_relaxed);
      if (b >= P.rows) break;
      rows(P, b, std::min(P.rows, b + block), scratch);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> refine_mask_cpu(
    const at::Tensor& weight, const at::Tensor& sum_metric_row, const at::Tensor& var,
    const at::Tensor& scaler_row, const std::optional<at::Tensor>& initial_metric,
    const std::optional<at::Tensor>& initial_mask, const std::optional<at::Tensor>& mean,
    double sparsity, int64_t prune_n, int64_t prune_m, int64_t max_cycle_time,
    double update_threshold, double pow_of_var_regrowing, bool same_sign, int64_t objective) {
  // Boundary checks (contract "The op"); Python has already validated values such as finiteness.
  TORCH_CHECK(weight.dim() == 2, "refine_mask (cpu): weight must be 2-D (rows, cols), got ", weight.sizes());
  check_cpu_contiguous(weight, "weight");
  const auto wt = weight.scalar_type();
  TORCH_CHECK(wt == at::kFloat || wt == at::kHalf || wt == at::kBFloat16,
              "refine_mask (cpu): weight must be float32, float16 or bfloat16, got ", wt);
  const int64_t rows = weight.size(0), cols = weight.size(1);
  TORCH_CHECK(cols < (int64_t{1} << 31), "refine_mask (cpu): weight has ", cols, " columns; at most 2**31 - 1");
  check_stat(sum_metric_row, "sum_metric_row", cols);
  check_stat(var, "var", cols);
  check_stat(scaler_row, "scaler_row", cols);
  TORCH_CHECK(objective == 0 || objective == 1, "refine_mask (cpu): objective must be 0 (dsnot) or 1 (mse), got ", objective);
  TORCH_CHECK(max_cycle_time >= 0 && max_cycle_time < (int64_t{1} << 31),
              "refine_mask (cpu): max_cycle_time must be in [0, 2**31), got ", max_cycle_time);
  TORCH_CHECK(std::isfinite(update_threshold) && update_threshold >= 0,
              "refine_mask (cpu): update_threshold must be finite and >= 0, got ", update_threshold);
  TORCH_CHECK(std::isfinite(pow_of_var_regrowing),
              "refine_mask (cpu): pow_of_var_regrowing must be finite, got ", pow_of_var_regrowing);
  if (prune_n != 0 || prune_m != 0) {
    TORCH_CHECK(0 < prune_n && prune_n < prune_m, "refine_mask (cpu): N:M needs 0 < prune_n < prune_m, got ",
                prune_n, ":", prune_m);
    TORCH_CHECK(cols % prune_m == 0, "refine_mask (cpu): cols (", cols, ") must be divisible by prune_m (",
                prune_m, ")");
  } else {
    TORCH_CHECK(sparsity >= 0.0 && sparsity < 1.0, "refine_mask (cpu): sparsity must be in [0, 1), got ", sparsity);
  }
  if (initial_metric.has_value()) {
    const at::Tensor& t = *initial_metric;
    check_cpu_contiguous(t, "initial_metric");
    TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, "refine_mask (cpu): initial_metric must have shape (",
                rows, ", ", cols, "), got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == at::kFloat, "refine_mask (cpu): initial_metric must be float32, got ", t.scalar_type());
  }
  if (initial_mask.has_value()) {
    const at::Tensor& t = *initial_mask;
    check_cpu_contiguous(t, "initial_mask");
    TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, "refine_mask (cpu): initial_mask must have shape (",
                rows, ", ", cols, "), got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == at::kBool, "refine_mask (cpu): initial_mask must be bool, got ", t.scalar_type());
  }
  if (objective == 1) {
    TORCH_CHECK(mean.has_value(), "refine_mask (cpu): objective 1 (mse) needs mean");
    check_stat(*mean, "mean", cols);
  }

  at::Tensor mask = at::empty({rows, cols}, weight.options().dtype(at::kBool));
  at::Tensor swaps = at::empty({rows}, weight.options().dtype(at::kInt));
  if (poison_requested()) {  // debug: prove below that every element gets written
    // An empty tensor's data pointer may be null, and memset(nullptr, _, 0) is undefined
    // behaviour (UBSan nonnull-attribute, found by benchmarks/sanitize_cpu.sh): only when non-empty.
    if (mask.numel() > 0) std::memset(mask.data_ptr(), 0x5A, static_cast<size_t>(mask.numel()));
    int32_t* sw = swaps.data_ptr<int32_t>();
    for (int64_t i = 0; i < rows; ++i) sw[i] = -777;
  }
  if (rows == 0) return {mask, swaps};
  if (cols == 0) {
    std::memset(swaps.data_ptr(), 0, sizeof(int32_t) * static_cast<size_t>(rows));
    return {mask, swaps};
  }

  // Per-column constants, once per call (contract: sqrtf, var ** p in double then one rounding).
  // Plain loops, not ATen ops: an ATen op may open an OpenMP region (waking pool threads, which
  // then spin) even on a few thousand elements.
  at::Tensor sqrt_scaler = at::empty({cols}, scaler_row.options());
  {
    const float* sc = scaler_row.data_ptr<float>();
    float* sq = sqrt_scaler.data_ptr<float>();
    for (int64_t j = 0; j < cols; ++j) sq[j] = std::sqrt(sc[j]);  // correctly rounded (IEEE)
  }
  // Growth-key divisor (contract "growth key"): var (p == 1), float(pow(double var, p)), or 1 for
  // p == 0 (x / 1.0f == x exactly, so the kernel divides unconditionally).
  at::Tensor divisor = var;
  const double p = pow_of_var_regrowing;
  Problem P;
  if (p != 1.0) {
    divisor = at::empty({cols}, var.options());
    const float* v = var.data_ptr<float>();
    float* dv = divisor.data_ptr<float>();
    for (int64_t j = 0; j < cols; ++j) dv[j] = p == 0.0 ? 1.0f : var_pow(v[j], p);
  }
  P.divisor = divisor.data_ptr<float>();
  P.rows = rows;
  P.cols = cols;
  P.weight = weight.data_ptr();
  P.dmul = sum_metric_row.data_ptr<float>();
  P.var = var.data_ptr<float>();
  P.sqrt_scaler = sqrt_scaler.data_ptr<float>();
  P.metric = initial_metric.has_value() ? initial_metric->data_ptr<float>() : nullptr;
  P.init_mask = initial_mask.has_value() ? reinterpret_cast<const uint8_t*>(initial_mask->data_ptr<bool>()) : nullptr;
  P.mean = objective == 1 ? mean->data_ptr<float>() : nullptr;
  P.k = prune_n > 0 ? 0 : static_cast<int64_t>(static_cast<double>(cols) * sparsity);
  P.prune_n = static_cast<int>(prune_n);
  P.prune_m = static_cast<int>(prune_m);
  P.max_cycles = max_cycle_time;
  P.thr = static_cast<float>(update_threshold);
  P.same_sign = same_sign;
  P.objective = static_cast<int>(objective);
  P.mask_out = reinterpret_cast<uint8_t*>(mask.data_ptr<bool>());
  P.swaps_out = swaps.data_ptr<int32_t>();

  if (wt == at::kFloat) run_rows(P, rows_f32);
  else if (wt == at::kHalf) run_rows(P, rows_f16);
  else run_rows(P, rows_bf16);
  return {mask, swaps};
}

}  // namespace cpu
}  // namespace dsnot

TORCH_LIBRARY_IMPL(dsnot_kernels, CPU, m) {
  m.impl("refine_mask", &dsnot::cpu::refine_mask_cpu);
}
