// The one schema of the dsnot_kernels op library; backends register implementations under
// dispatch keys (csrc/cpu, csrc/cuda). See docs/KERNEL_CONTRACT.md for the semantics.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import dsnot_kernels._C` loads this library, which registers the ops below as a side effect.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(dsnot_kernels, m) {
  m.def(
      "refine_mask(Tensor weight, Tensor sum_metric_row, Tensor var, Tensor scaler_row, "
      "Tensor? initial_metric, Tensor? initial_mask, Tensor? mean, float sparsity, int prune_n, "
      "int prune_m, int max_cycle_time, float update_threshold, float pow_of_var_regrowing, "
      "bool same_sign, int objective) -> (Tensor, Tensor)");
  // Objectives 2 ("cov", window == 0) and 3 ("cov_window", window >= 1): the caller gives the
  // initial mask and g0 = D0 @ second_moment (float64), as the reference computes them.
  m.def(
      "refine_mask_cov(Tensor weight, Tensor sum_metric_row, Tensor var, Tensor scaler_row, "
      "Tensor? initial_metric, Tensor initial_mask, Tensor second_moment, Tensor g0, int prune_m, "
      "int max_cycle_time, float update_threshold, float pow_of_var_regrowing, int window) "
      "-> (Tensor, Tensor)");
  // Objective 4 ("swap"): the best (kept, pruned) pair of the whole row per cycle while it lowers
  // D M Dᵀ; initial mask and g0 as refine_mask_cov. search: 0 = the bounded exact search, 1 = the
  // full scan of every pair (same result; for tests), 2 = bounded without the low-rank split bound,
  // 3 = bounded with it, row blocks and float32 scans at every width (comparisons and tests), 4 = as 0
  // one row at a time, 5 = block scans, 6 = as 0 with float64 scans; every search returns the same
  // (mask, swaps). Returns (mask, swaps, pairs read per row).
  m.def(
      "refine_mask_swap(Tensor weight, Tensor initial_mask, Tensor second_moment, Tensor g0, int prune_m, "
      "int max_cycle_time, int search) -> (Tensor, Tensor, Tensor)");
}
