// The state of the "swap" CPU kernel (refine_swap_cpu.cpp, which alone includes this file): the
// call's problem (SwapProblem), a row's scratch (SwapScratch), the bound slack, and the vector
// types and function clones of the passes (swap_passes.h).
#pragma once

#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "cpu/swap_block_scan.h"
#include "cpu/swap_scan32.h"
#include "cpu/simd.h"
#include "cpu/swap_split.h"

namespace dsnot {
namespace cpu {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// Slack of every bound, relative to the row's scale (largest |A|, |B|, |cross term|): the float64
// rounding of a delta or a bound update is below 4 * 2^-53 of that scale; 1e-10 is 2e5 times more.
constexpr double kSlack = 1e-10;

struct SwapProblem {
  int64_t rows = 0, cols = 0;
  const void* weight = nullptr;        // (rows, cols) scalar_t
  const uint8_t* init_mask = nullptr;  // (rows, cols), 1 = pruned
  const double* M = nullptr;           // (cols, cols), exactly symmetric
  const float* M32 = nullptr;          // M rounded to float32 for the row scans (swap_scan32.h), or none
  const double* row_abs = nullptr;     // (cols,) max_r |M_qr|
  const double* diag = nullptr;        // (cols,) M_jj
  const double* z = nullptr;           // (cols,) s_j sqrt(rho_j) (1 + 1e-12), s = sqrt(diag M) (Cauchy-Schwarz)
  const double* g0 = nullptr;          // (rows, cols)
  double m_abs_max = 0.0;              // max |M_qr|
  double rho = kInf;                   // max_j rho_j (see z); inf = no Cauchy-Schwarz bound
  int prune_m = 0;                     // 0 = unstructured
  int64_t max_cycles = 0;
  int search = 0;                      // 0, 2-6 = bounded (2: no split bound, 3: split, row blocks and float32 scans at any width, 4: one row, 5: block scans, 6: as 0 with float64 scans), 1 = full scan
  bool block_scan = false;             // scan kept rows by blocks (swap_block_scan.h); needs the split bound
  uint8_t* mask_out = nullptr;
  int32_t* swaps_out = nullptr;
  int64_t* pairs_out = nullptr;        // pairs whose delta was computed, per row
  const split::Consts* split = nullptr;  // the low-rank-plus-residual bound (csrc/cpu/swap_split.h)
};

struct SwapScratch {
  std::vector<double> w, g, A, B, L, key, hm, hb, lb, cs;  // lb, cs: the bound pass's
  std::vector<uint8_t> pruned;
  std::vector<int32_t> ps, ks, stair;           // pruned / kept columns by (a_j, j) ascending; the undominated pruned
  std::vector<std::pair<double, int64_t>> cand; // (lb, q) to visit this cycle (the first nc)
  split::Row sp;                                // the split bound's per-row state
  BlockScanRow blk;                             // the block scans' per-row state
  std::vector<double> sp_tmp;
  std::vector<float> w32, B32, d32;             // the float32 scans' (swap_scan32.h)
  explicit SwapScratch(const SwapProblem& P) {
    if (P.M32 != nullptr) { w32.resize(static_cast<size_t>(P.cols)); B32.resize(static_cast<size_t>(P.cols)); d32.resize(scan32_buf_size(P.cols)); }
    sp_tmp.resize(static_cast<size_t>(P.cols));
    const size_t c = static_cast<size_t>(P.cols);
    w.resize(c); g.resize(c); A.resize(c); B.resize(c); L.resize(c);
    key.resize(c); lb.resize(c); cs.resize(c); hm.resize(c); hb.resize(c); pruned.resize(c); stair.resize(c); cand.resize(c);
  }
};

}  // namespace
}  // namespace cpu
}  // namespace dsnot
