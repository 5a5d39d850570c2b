// CPU kernel of dsnot_kernels::refine_mask_swap: objective 4 ("swap") of docs/KERNEL_CONTRACT.md.
// Each cycle a row takes the pair (q kept, r pruned) with the smallest
//     delta = (A_q - ((2 w_q) w_r) M_qr) + B_r,   A_q = (2 w_q) g_q + (w_q w_q) M_qq,
//                                                 B_r = (w_r w_r) M_rr - (2 w_r) g_r
// (float64, each op rounded, no FMA: -ffp-contract=off), ties to the lowest q then the lowest r,
// and applies it while delta < 0, updating g = g + (w_q M[q, :] - w_r M[r, :]) eagerly. g0 and the
// initial mask come from the caller (the reference's shared matmul and the main op).
//
// The exact search (unstructured). A brute-force cycle reads every (kept, pruned) pair. Here each
// kept q carries L_q, a lower bound of min_r (B_r - C_qr) over the pruned r (C_qr the cross term),
// so lb_q = A_q + L_q bounds every delta of row q of the pair matrix. A cycle scans exactly (one
// contiguous row of M, vectorised) only the q whose lb_q can still reach the best delta found, in
// increasing lb_q order, and stops at the first lb_q above it. After an accepted swap the bounds
// stay valid by exact bookkeeping: B moves by ΔB_r (computed), so L_q += min_r ΔB_r; the newly
// pruned q* adds one pair per kept q (one row of M, O(cols)); the newly kept r* gets L = -inf and is
// scanned when next needed. A second bound, Cauchy-Schwarz on M per column (|M_qr| <= z_q z_r,
// z_j = sqrt(M_jj rho_j), rho_j = max_r |M_jr| / sqrt(M_jj M_rr) measured once per call: most
// channels of real layers correlate weakly with every other, rho_j ~ 0.2, while the largest
// correlation of the whole matrix is ~0.99), gives min_r (B_r - 2 a_q a_r) for every q in O(cols)
// per cycle through the lower envelope of lines in a_q = |w_q| z_q; a row takes the larger of the
// two. The envelope is built from the few pruned r not dominated on a >= 0 (no other line with a
// larger or equal a_r and a lower or equal B_r: ~8 of 288-768 on real layers, where a large |w_r|
// also makes B_r very negative), so it has a handful of lines (~4), and is evaluated at every
// column as a min over its lines (vectorised; walked in the a order of the kept q past 32 lines).
// Per cycle the row's O(cols) work is contiguous passes, vectorised: g and the side terms A, B
// (and min / max |ΔB|), the bound pass (every L_q's update, the Cauchy-Schwarz bound, lb_q), the
// candidates (lb_q < 0, branch-free), then the scans. Every bound is lowered by a relative slack
// far above the rounding of the float64 operations, so it bounds the COMPUTED delta: the search
// returns the pair the full scan returns (tests/test_swap_cpu_kernel.py compares it with
// search=1, the full scan, and the reference).
// Rows (swap_row_block.h): from 2048 columns one thread runs a block of rows together, sweeping
// M in tiles that every row of the block scans its part of, so M is streamed once per sweep for
// many rows instead of once per row; same pairs, same masks (search 4: one row at a time).
// Float32 scans (swap_scan32.h; from 8192 columns, search 6 without them): a row of the pair matrix
// is scanned in float32 from a float32 copy of M, each delta with a bound of its float32 error,
// and the few columns that bound cannot rule out are computed again in float64: the same pair.
// Block scans (swap_block_scan.h, search 5 only: exact and 10-18x fewer pairs read, slower on a CPU):
// a row of the pair matrix by blocks of 16 columns, a block read only when two bounds (the exact
// rank-1 part with a stored residual minimum; a drift bound carried across swaps) cannot rule it out.
// N:M compares only pairs within a group: O(cols * M) per cycle, scanned in full.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

#include "dsnot_common.h"
#include "cpu/swap_cycles.h"
#include "cpu/swap_passes.h"
#include "cpu/swap_row_block.h"
#include "cpu/swap_split.h"
#include "cpu/swap_state.h"

namespace dsnot {
namespace cpu {
namespace {

constexpr int64_t kScan32MinCols = 8192;  // narrower: no faster (benchmarks/RESULTS.md "wide-f32")
constexpr int64_t kScan32MaxBytes = int64_t{8} << 30;

// Row i's w (its float values, exactly, as float64), g0 and initial mask into S and out.
template <typename scalar_t>
void load_row(const SwapProblem& P, int64_t i, SwapScratch& S) {
  const int64_t cols = P.cols;
  const scalar_t* wrow = static_cast<const scalar_t*>(P.weight) + i * cols;
  const uint8_t* init = P.init_mask + i * cols;
  std::memcpy(P.mask_out + i * cols, init, static_cast<size_t>(cols));
  std::memcpy(S.g.data(), P.g0 + i * cols, sizeof(double) * static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) {
    S.w[j] = static_cast<double>(static_cast<float>(wrow[j]));
    S.pruned[j] = init[j] != 0;
  }
}

void load_row(const SwapProblem& P, at::ScalarType wt, int64_t i, SwapScratch& S) {
  if (wt == at::kFloat) load_row<float>(P, i, S);
  else if (wt == at::kHalf) load_row<at::Half>(P, i, S);
  else load_row<at::BFloat16>(P, i, S);
}

// Rows [b, e) one at a time (N:M, the full scan, search 4).
void rows_alone(const SwapProblem& P, at::ScalarType wt, int64_t b, int64_t e) {
  SwapScratch S(P);
  for (int64_t i = b; i < e; ++i) {
    load_row(P, wt, i, S);
    int64_t pairs = 0;
    uint8_t* out = P.mask_out + i * P.cols;
    P.swaps_out[i] = P.prune_m > 0 ? cycles_nm(P, S, out, &pairs) : cycles_unstructured(P, S, out, &pairs);
    P.pairs_out[i] = pairs;
  }
}

// Rows [b, e) in blocks of row_block rows sharing the rows of M read (swap_row_block.h).
void rows_in_blocks(const SwapProblem& P, at::ScalarType wt, int64_t b, int64_t e, int row_block) {
  const int n_max = static_cast<int>(std::min<int64_t>(row_block, e - b));
  RowBlock blk(P, n_max);
  std::vector<uint8_t*> out(n_max);
  for (int64_t i0 = b; i0 < e; i0 += n_max) {
    const int n = static_cast<int>(std::min<int64_t>(n_max, e - i0));
    for (int k = 0; k < n; ++k) {
      load_row(P, wt, i0 + k, blk.S[k]);
      out[k] = P.mask_out + (i0 + k) * P.cols;
    }
    blk.run(P, n, out.data(), P.pairs_out + i0, P.swaps_out + i0);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> refine_mask_swap_cpu(
    const at::Tensor& weight, const at::Tensor& initial_mask, const at::Tensor& second_moment,
    const at::Tensor& g0, int64_t prune_m, int64_t max_cycle_time, int64_t search) {
  TORCH_CHECK(weight.dim() == 2 && weight.device().is_cpu() && weight.is_contiguous(),
              "refine_mask_swap (cpu): weight must be a contiguous 2-D CPU tensor, got ", weight.sizes());
  const auto wt = weight.scalar_type();
  TORCH_CHECK(wt == at::kFloat || wt == at::kHalf || wt == at::kBFloat16,
              "refine_mask_swap (cpu): weight must be float32, float16 or bfloat16, got ", wt);
  const int64_t rows = weight.size(0), cols = weight.size(1);
  TORCH_CHECK(cols < (int64_t{1} << 31), "refine_mask_swap (cpu): at most 2**31 - 1 columns, got ", cols);
  auto check = [&](const at::Tensor& t, const char* name, at::ScalarType dt, at::IntArrayRef shape) {
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == dt && t.sizes() == shape,
                "refine_mask_swap (cpu): ", name, " must be a contiguous CPU ", dt, " tensor of shape ", shape,
                ", got ", t.scalar_type(), " ", t.sizes());
  };
  check(initial_mask, "initial_mask", at::kBool, {rows, cols});
  check(second_moment, "second_moment", at::kDouble, {cols, cols});
  check(g0, "g0", at::kDouble, {rows, cols});
  TORCH_CHECK(prune_m >= 0 && (prune_m == 0 || cols % prune_m == 0),
              "refine_mask_swap (cpu): cols must be divisible by prune_m, got ", cols, " and ", prune_m);
  TORCH_CHECK(max_cycle_time >= 0 && max_cycle_time < (int64_t{1} << 31),
              "refine_mask_swap (cpu): max_cycle_time must be in [0, 2**31), got ", max_cycle_time);
  TORCH_CHECK(search >= 0 && search <= 6,
              "refine_mask_swap (cpu): search must be 0 (bounded), 1 (full scan), 2 (bounded without the "
              "low-rank split bound), 3 (bounded, the split bound, row blocks and float32 scans at every width), "
              "4 (as 0, one row at a time), 5 (block scans, one row at a time) or 6 (as 0, float64 scans), got ",
              search);

  at::Tensor mask = at::empty({rows, cols}, weight.options().dtype(at::kBool));
  at::Tensor swaps = at::zeros({rows}, weight.options().dtype(at::kInt));
  at::Tensor pairs = at::zeros({rows}, weight.options().dtype(at::kLong));
  if (rows == 0 || cols == 0) return {mask, swaps, pairs};
  const double* M = second_moment.data_ptr<double>();
  std::vector<double> diag(cols), sd(cols);
  double m_abs_max = 0.0;
  bool cs_ok = true;
  for (int64_t j = 0; j < cols; ++j) {
    diag[j] = M[j * cols + j];
    if (!(diag[j] >= 0.0)) cs_ok = false;  // not PSD on its diagonal: no Cauchy-Schwarz bound
    sd[j] = std::sqrt(std::max(diag[j], 0.0));
  }
  // rho_j = max_{r != j} |M_jr| / (s_j s_r), per column (M from float sums need not be exactly PSD:
  // rho_j may exceed 1); a nonzero entry next to a zero s makes it infinite (no bound is then used).
  // Then |M_qr| <= min(rho_q, rho_r) s_q s_r <= z_q z_r with z_j = s_j sqrt(rho_j), rounded up by a
  // relative 1e-12. One pass over M, rows in parallel.
  std::vector<double> rho_col(cols, 0.0), row_abs(cols, 0.0);
  at::parallel_for(0, cols, 16, [&](int64_t qb, int64_t qe) {
    for (int64_t q = qb; q < qe; ++q) {
      const double* mq = M + q * cols;
      double ma = 0.0, mr = 0.0;
      for (int64_t r = 0; r < cols; ++r) {
        const double a = std::fabs(mq[r]);
        ma = a > ma ? a : ma;
        if (r == q || a == 0.0) continue;
        const double den = sd[q] * sd[r];
        const double t = den > 0.0 ? a / den : kInf;
        mr = t > mr ? t : mr;
      }
      row_abs[q] = ma;
      rho_col[q] = mr;
    }
  });
  double rho = 0.0;
  std::vector<double> z(cols);
  for (int64_t j = 0; j < cols; ++j) {
    m_abs_max = std::max(m_abs_max, row_abs[j]);
    rho = std::max(rho, rho_col[j]);
    z[j] = (sd[j] * std::sqrt(rho_col[j])) * (1.0 + 1e-12);
  }
  if (!std::isfinite(m_abs_max)) cs_ok = false;
  SwapProblem P;
  P.rows = rows; P.cols = cols;
  P.weight = weight.data_ptr();
  P.init_mask = reinterpret_cast<const uint8_t*>(initial_mask.data_ptr<bool>());
  P.M = M;
  P.diag = diag.data();
  P.z = z.data();
  P.g0 = g0.data_ptr<double>();
  P.m_abs_max = m_abs_max;
  P.rho = cs_ok && std::isfinite(rho) ? rho : kInf;
  P.prune_m = static_cast<int>(prune_m);
  P.max_cycles = max_cycle_time;
  P.search = static_cast<int>(search);
  P.mask_out = reinterpret_cast<uint8_t*>(mask.data_ptr<bool>());
  P.swaps_out = swaps.data_ptr<int32_t>();
  P.pairs_out = pairs.data_ptr<int64_t>();
  split::Consts sc;
  // The split bound from split::kMinCols columns (below, its per-cycle work costs more than the pairs
  // it saves: benchmarks/RESULTS.md "wide"); search 3 at every width (tests), search 2 never.
  const bool like0 = search == 0 || search == 6;
  const bool want_split = search == 3 || search == 5 || ((like0 || search == 4) && cols >= split::kMinCols);
  if (prune_m == 0 && want_split && P.rho < kInf && max_cycle_time > 0) {
    sc = split::constants(M, cols);
    P.split = &sc;
  }
  // Unstructured bounded searches run rows in blocks sharing the rows of M read, from kBlockMinCols
  // columns (search 3: at every width, for the tests; search 4: never, one row at a time).
  // Search 5: block scans (swap_block_scan.h; they need the split bound), one row at a time (each row
  // holds its stores; its scans read a few % of M, so rows need not share it). Not the default: they
  // read 10-18x fewer pairs but take longer on a CPU (benchmarks/RESULTS.md "block scans").
  P.block_scan = search == 5 && P.split != nullptr && P.split->ok && block_scan_fits(cols);
  const int row_block = row_block_size(cols);
  const bool blocks = prune_m == 0 && row_block > 1 && !P.block_scan &&
                      (search == 3 || ((like0 || search == 2) && cols >= kBlockMinCols));
  // The row scans in float32 (swap_scan32.h: the same pair, from half the bytes of M) from
  // kScan32MinCols columns (search 3: at every width; 1, 5 and 6: never), M32 at most kScan32MaxBytes.
  at::Tensor m32;
  const bool want32 = search == 3 || ((search == 0 || search == 2 || search == 4) && cols >= kScan32MinCols);
  if (prune_m == 0 && max_cycle_time > 0 && want32 && std::isfinite(m_abs_max) && m_abs_max < kScan32Max &&
      cols * cols * int64_t{4} <= kScan32MaxBytes) {
    m32 = second_moment.to(at::kFloat);
    P.M32 = m32.data_ptr<float>();
    P.row_abs = row_abs.data();
  }
  at::parallel_for(0, rows, 1, [&](int64_t b, int64_t e) {
    if (blocks) rows_in_blocks(P, wt, b, e, row_block);
    else rows_alone(P, wt, b, e);
  });
  return {mask, swaps, pairs};
}

}  // namespace cpu
}  // namespace dsnot

TORCH_LIBRARY_IMPL(dsnot_kernels, CPU, m) {
  m.impl("refine_mask_swap", &dsnot::cpu::refine_mask_swap_cpu);
}
