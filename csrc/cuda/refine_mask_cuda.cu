// Torch glue of the CUDA refine_mask kernel: argument checks, outputs, the launch on the current
// stream, and the registration under the CUDA dispatch key of the one schema (csrc/ops.cpp).
// The device code is in dsnot_kernels.cuh / dsnot_kernels.cu (no torch headers there).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <tuple>

#include "dsnot_launch.h"

namespace {

using dsnot::cuda::RefineParams;

void check_stat(const at::Tensor& t, const char* name, int64_t cols, const at::Device& dev) {
  TORCH_CHECK(t.device() == dev, "dsnot_kernels cuda: ", name, " is on ", t.device(), " but weight is on ", dev);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == cols, "dsnot_kernels cuda: ", name, " must have shape (", cols,
              ",), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "dsnot_kernels cuda: ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "dsnot_kernels cuda: ", name, " must be contiguous");
}

void check_matrix(const at::Tensor& t, const char* name, const at::Tensor& weight, at::ScalarType dtype) {
  TORCH_CHECK(t.device() == weight.device(), "dsnot_kernels cuda: ", name, " is on ", t.device(), " but weight is on ",
              weight.device());
  TORCH_CHECK(t.sizes() == weight.sizes(), "dsnot_kernels cuda: ", name, " must have the weight's shape ",
              weight.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, "dsnot_kernels cuda: ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "dsnot_kernels cuda: ", name, " must be contiguous");
}

// DSNOT_KERNELS_CUDA_LAYOUT=0..3 forces a shared-memory layout (see launch_refine_mask), for the
// benchmark's layout sweep; unset or anything else: the launcher chooses.
int forced_layout() {
  const char* v = std::getenv("DSNOT_KERNELS_CUDA_LAYOUT");
  if (v == nullptr || v[0] < '0' || v[0] > '3' || v[1] != 0) return -1;
  return v[0] - '0';
}

bool poison_outputs() {
  const char* v = std::getenv("DSNOT_KERNELS_POISON");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

std::tuple<at::Tensor, at::Tensor> refine_mask_cuda(
    const at::Tensor& weight, const at::Tensor& sum_metric_row, const at::Tensor& var, const at::Tensor& scaler_row,
    const std::optional<at::Tensor>& initial_metric, const std::optional<at::Tensor>& initial_mask,
    const std::optional<at::Tensor>& mean, double sparsity, int64_t prune_n, int64_t prune_m, int64_t max_cycle_time,
    double update_threshold, double pow_of_var_regrowing, bool same_sign, int64_t objective) {
  TORCH_CHECK(weight.is_cuda(), "dsnot_kernels cuda: weight must be a CUDA tensor, got ", weight.device());
  TORCH_CHECK(weight.dim() == 2, "dsnot_kernels cuda: weight must be 2-D (rows, cols), got ", weight.sizes());
  const auto wt = weight.scalar_type();
  TORCH_CHECK(wt == at::kFloat || wt == at::kHalf || wt == at::kBFloat16,
              "dsnot_kernels cuda: weight must be float32, float16 or bfloat16, got ", wt);
  TORCH_CHECK(weight.is_contiguous(), "dsnot_kernels cuda: weight must be contiguous");
  const int64_t rows = weight.size(0);
  const int64_t cols = weight.size(1);
  const at::Device dev = weight.device();
  TORCH_CHECK(rows < (int64_t{1} << 31), "dsnot_kernels cuda: at most 2**31 - 1 rows, got ", rows);
  check_stat(sum_metric_row, "sum_metric_row", cols, dev);
  check_stat(var, "var", cols, dev);
  check_stat(scaler_row, "scaler_row", cols, dev);
  if (initial_metric.has_value()) check_matrix(*initial_metric, "initial_metric", weight, at::kFloat);
  if (initial_mask.has_value()) check_matrix(*initial_mask, "initial_mask", weight, at::kBool);
  TORCH_CHECK(objective == 0 || objective == 1, "dsnot_kernels cuda: objective must be 0 (dsnot) or 1 (mse), got ",
              objective);
  if (objective == 1) {
    TORCH_CHECK(mean.has_value(), "dsnot_kernels cuda: objective 1 (mse) needs mean");
    check_stat(*mean, "mean", cols, dev);
  }
  TORCH_CHECK(prune_n >= 0 && (prune_n == 0 || (prune_n < prune_m && cols % prune_m == 0)),
              "dsnot_kernels cuda: N:M needs 0 < prune_n < prune_m and cols % prune_m == 0, got ", prune_n, ":",
              prune_m, " with cols=", cols);
  TORCH_CHECK(prune_n > 0 || (sparsity >= 0.0 && sparsity < 1.0), "dsnot_kernels cuda: sparsity must be in [0, 1), got ",
              sparsity);
  TORCH_CHECK(max_cycle_time >= 0 && max_cycle_time < (int64_t{1} << 31),
              "dsnot_kernels cuda: max_cycle_time must be in [0, 2**31), got ", max_cycle_time);
  TORCH_CHECK(update_threshold >= 0.0, "dsnot_kernels cuda: update_threshold must be >= 0, got ", update_threshold);

  const c10::cuda::CUDAGuard guard(dev);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor mask = at::empty({rows, cols}, weight.options().dtype(at::kBool));
  at::Tensor swaps = at::empty({rows}, weight.options().dtype(at::kInt));
  if (poison_outputs()) {  // debug: an element the kernel fails to write shows as 0x5A / -777
    if (mask.numel() > 0) {
      C10_CUDA_CHECK(cudaMemsetAsync(mask.data_ptr(), 0x5A, static_cast<size_t>(mask.numel()), stream));
    }
    swaps.fill_(-777);
  }
  if (rows == 0 || cols == 0) {
    mask.zero_();
    swaps.zero_();
    return {mask, swaps};
  }

  const int32_t dtype = wt == at::kFloat ? dsnot::cuda::kF32 : (wt == at::kHalf ? dsnot::cuda::kF16 : dsnot::cuda::kBF16);
  const int64_t smem_optin = at::cuda::getDeviceProperties(dev.index())->sharedMemPerBlockOptin;
  const size_t smem_min = dsnot::cuda::refine_smem_bytes(static_cast<int32_t>(std::min<int64_t>(cols, dsnot::cuda::kMaxCols)),
                                                         dtype, false, false);
  TORCH_CHECK(cols <= dsnot::cuda::kMaxCols && smem_min <= static_cast<size_t>(smem_optin),
              "dsnot_kernels cuda: rows of ", cols, " columns are too long for the cuda backend on this device (",
              smem_min, " bytes of shared memory per block needed, ", smem_optin,
              " available); use backend=\"torch\" or \"triton\"");

  // Growth keys with p not in {0, 1} divide by var**p. The contract's one definition
  // (reference.var_power): ATen's CPU pow in float64, rounded once to float32, then moved here, so
  // every backend divides by the same bits (a device pow may differ in the last place).
  at::Tensor varp;
  if (pow_of_var_regrowing != 0.0 && pow_of_var_regrowing != 1.0) {
    varp = at::pow(var.to(at::kCPU, at::kDouble), pow_of_var_regrowing).to(at::kFloat).to(dev).contiguous();
  }
  at::Tensor imask_u8;
  if (initial_mask.has_value()) imask_u8 = initial_mask->view(at::kByte);

  RefineParams p{};
  p.weight = weight.data_ptr();
  p.sum_metric_row = sum_metric_row.data_ptr<float>();
  p.var = var.data_ptr<float>();
  p.varp = varp.defined() ? varp.data_ptr<float>() : nullptr;
  p.scaler_row = scaler_row.data_ptr<float>();
  p.initial_metric = initial_metric.has_value() ? initial_metric->data_ptr<float>() : nullptr;
  p.initial_mask = initial_mask.has_value() ? imask_u8.data_ptr<uint8_t>() : nullptr;
  p.mean = objective == 1 ? mean->data_ptr<float>() : nullptr;
  p.mask_out = static_cast<uint8_t*>(mask.data_ptr());
  p.swaps_out = swaps.data_ptr<int32_t>();
  p.rows = rows;
  p.cols = static_cast<int32_t>(cols);
  p.dtype = dtype;
  p.prune_n = static_cast<int32_t>(prune_n);
  p.prune_m = static_cast<int32_t>(prune_m);
  p.max_cycle_time = static_cast<int32_t>(max_cycle_time);
  p.same_sign = same_sign ? 1 : 0;
  p.objective = static_cast<int32_t>(objective);
  dsnot::cuda::set_scalar_params(p, sparsity, update_threshold, pow_of_var_regrowing);
  const int rc = dsnot::cuda::launch_refine_mask(p, stream, forced_layout());
  TORCH_CHECK(rc == 0, "dsnot_kernels cuda: kernel launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(rc)));
  return {mask, swaps};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsnot_kernels, CUDA, m) { m.impl("refine_mask", &refine_mask_cuda); }
