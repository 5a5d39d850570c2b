// Block scans of the "swap" CPU kernel, search 5 (refine_swap_cpu.cpp, which alone includes this
// file): a kept q's row of the pair matrix is scanned by blocks of kBlockCols columns, and only the
// blocks that two bounds cannot rule out read M.
//
// 1. With the split M = v vᵀ + R (swap_split.h), x_j = w_j v_j, for every pruned r of a block b
//        B_r - C_qr = (B_r - 2 x_q x_r) - 2 w_q w_r R_qr >= min_{r in b} (B_r - 2 x_q x_r) + W_qb,
//    W_qb <= min_{r in b, r != q} (-2 w_q w_r R_qr). The first term is exact and follows B every
//    cycle (16 products per block, 8 blocks per vector: no M read). W_qb never changes: it is the
//    residual's Cauchy-Schwarz bound -2 b_q max_{r in b} b_r (b_j = |w_j| zR_j) until q's block is
//    first scanned, then the exact minimum over every column of the block (kept or pruned).
// 2. The drift bound: a scan of block b leaves D_qb = (its exact minimum) - cum_b, where cum_b sums
//    the block's least move of B per swap (over the columns pruned before and after it); D_qb + cum_b
//    then bounds the block's minimum at any later cycle. The newly pruned q* of each swap enters
//    its block's D_qb through the pair (q, q*), computed from q*'s row of M (read anyway).
// Stores W and D are float, rounded down; every bound is lowered by the kernel's slack.
// Measured (benchmarks/RESULTS.md "block scans"): 10-18x fewer pairs read than search 0, but
// slower on a CPU: the bound pass costs O(cols) per evaluated q, as a full scan does, and scattered
// block reads wait on memory. The design of a GPU kernel that reads M in blocks (KERNEL_CONTRACT.md).
// Storage: 2 x cols x ceil(cols / 16) floats per row being searched (60 MB at 11008 columns).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/simd.h"

namespace dsnot {
namespace cpu {
namespace {

constexpr int64_t kBlockCols = 16;              // columns per block
constexpr int64_t kGroupBlocks = 8;             // blocks per vector (lanes)
constexpr int64_t kGroupCols = kBlockCols * kGroupBlocks;
constexpr int64_t kPrefetchAhead = 8;           // blocks of M prefetched ahead of the scan
constexpr int64_t kBlockScanMaxBytes = int64_t{320} << 20;  // the W store of one row at most (D: as much)

typedef float v8f __attribute__((vector_size(32)));
typedef v8d v8db;
typedef v8l v8lb;

inline v8db broadcast8(double a) { return (v8db){a, a, a, a, a, a, a, a}; }

// The largest float <= v.
inline float float_down(double v) {
  float f = static_cast<float>(v);
  if (static_cast<double>(f) > v) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
  return f;
}

inline int64_t block_groups(int64_t cols) { return (cols + kGroupCols - 1) / kGroupCols; }
inline bool block_scan_fits(int64_t cols) {
  return cols * block_groups(cols) * kGroupBlocks * static_cast<int64_t>(sizeof(float)) <= kBlockScanMaxBytes;
}

// Block j0 .. j0 + 16 of row q, exactly: the least d_j = (aq - (tq w_j) M_qj) + B_j (B = +inf on
// kept columns) and the first j reaching it (*r; -1 if none finite), and *wmin = the least
// -((tq w_j) (M_qj - vq v_j)) over j != q. The pair scan's arithmetic, op for op (row_min).
DSNOT_CPU_CLONES double block_min16(double aq, double tq, double vq, const double* __restrict w,
                                     const double* __restrict B, const double* __restrict Mq,
                                     const double* __restrict v, int64_t j0, int64_t q, int64_t* r,
                                     double* wmin) {
  const double inf_s = std::numeric_limits<double>::infinity();
  const v8db av = broadcast8(aq), tv = broadcast8(tq), vqv = broadcast8(vq), inf = broadcast8(inf_s);
  v8db w0, w1, b0, b1, c0, c1, v0, v1;
  std::memcpy(&w0, w + j0, sizeof(w0)); std::memcpy(&w1, w + j0 + 8, sizeof(w1));
  std::memcpy(&b0, B + j0, sizeof(b0)); std::memcpy(&b1, B + j0 + 8, sizeof(b1));
  std::memcpy(&c0, Mq + j0, sizeof(c0)); std::memcpy(&c1, Mq + j0 + 8, sizeof(c1));
  std::memcpy(&v0, v + j0, sizeof(v0)); std::memcpy(&v1, v + j0 + 8, sizeof(v1));
  const v8db t0 = tv * w0, t1 = tv * w1;
  const v8db d0 = (av - t0 * c0) + b0, d1 = (av - t1 * c1) + b1;
  const v8lb idx0 = {0, 1, 2, 3, 4, 5, 6, 7};
  const v8lb j0v = idx0 + j0, j1v = j0v + 8, qv = {q, q, q, q, q, q, q, q};
  const v8db x0 = -(t0 * (c0 - vqv * v0)), x1 = -(t1 * (c1 - vqv * v1));
  const v8lb n0 = j0v == qv, n1 = j1v == qv;
  const v8db y0 = (v8db)(((v8lb)inf & n0) | ((v8lb)x0 & ~n0)), y1 = (v8db)(((v8lb)inf & n1) | ((v8lb)x1 & ~n1));
  const v8lb lt = d1 < d0;  // lane-wise: the lower index on ties
  const v8db dm = (v8db)(((v8lb)d1 & lt) | ((v8lb)d0 & ~lt));
  const v8lb im = (j1v & lt) | (j0v & ~lt);
  double e = inf_s, wm = inf_s;
  int64_t k = -1;
  for (int l = 0; l < 8; ++l) {
    if (dm[l] < e || (dm[l] == e && im[l] < k)) { e = dm[l]; k = im[l]; }
    wm = y0[l] < wm ? y0[l] : wm;
    wm = y1[l] < wm ? y1[l] : wm;
  }
  *r = e < inf_s ? k : -1;
  *wmin = wm;
  return e;
}

// One row's block-scan state. Column j = (g * 8 + l) * 16 + k sits at lane l of entry (g, k) of
// the transposed copies Bt and xt (groups of 8 blocks; columns past cols: B = +inf, x = 0).
struct BlockScanRow {
  int64_t cols = 0, ng = 0, nbp = 0;
  std::vector<double> Bt, xt, bmax;
  std::vector<float> W;                // (cols, nbp): W_qb, valid once inited[q]
  std::vector<float> D;                // (cols, nbp): D_qb + cum_b bounds the block's min (drift bound)
  std::vector<double> cum, Bprev;      // (nbp): the blocks' summed least B moves; last cycle's B
  std::vector<uint8_t> inited;
  std::vector<int32_t> todo;           // this scan's blocks to read, and their bounds
  std::vector<double> todo_bnd;
  std::vector<int32_t> order;

  void init(const double* x, const double* bR, int64_t n) {
    cols = n;
    ng = block_groups(n);
    nbp = ng * kGroupBlocks;
    Bt.assign(static_cast<size_t>(ng * kGroupCols), std::numeric_limits<double>::infinity());
    xt.assign(static_cast<size_t>(ng * kGroupCols), 0.0);
    bmax.assign(static_cast<size_t>(nbp), 0.0);
    W.resize(static_cast<size_t>(n * nbp));
    D.resize(static_cast<size_t>(n * nbp));
    cum.assign(static_cast<size_t>(nbp), 0.0);
    Bprev.resize(static_cast<size_t>(n));
    inited.assign(static_cast<size_t>(n), 0);
    todo.resize(static_cast<size_t>(nbp));
    todo_bnd.resize(static_cast<size_t>(nbp));
    for (int64_t j = 0; j < n; ++j) {
      xt[slot(j)] = x[j];
      double& m = bmax[j / kBlockCols];
      m = bR[j] > m ? bR[j] : m;
    }
  }
  static size_t slot(int64_t j) {
    const int64_t b = j / kBlockCols, k = j % kBlockCols, g = b / kGroupBlocks, l = b % kGroupBlocks;
    return static_cast<size_t>((g * kBlockCols + k) * kGroupBlocks + l);
  }
  // B of this cycle (+inf on kept columns) into Bt.
  void load_B(const double* B) {
    for (int64_t j = 0; j < cols; ++j) Bt[slot(j)] = B[j];
  }
  // q's W row, set to the residual's Cauchy-Schwarz bound the first time q is scanned.
  float* w_row(int64_t q, double tb) {
    float* wq = W.data() + q * nbp;
    if (!inited[q]) {
      for (int64_t b = 0; b < nbp; ++b) wq[b] = float_down(-(tb * bmax[b]));
      reset_drift(q);
      inited[q] = 1;
    }
    return wq;
  }
  void reset_drift(int64_t q) {
    float* dq = D.data() + q * nbp;
    for (int64_t b = 0; b < nbp; ++b) dq[b] = -std::numeric_limits<float>::infinity();
  }
  // After a swap (q_new pruned, B moved from Bprev to B): every block's least move over the columns
  // pruned before and after (both B finite) into cum, each lowered by the slack; then the new pairs
  // (q, q_new) of the kept q (pair[q], already lowered by the slack) into D's block of q_new.
  void after_swap(const double* B, const uint8_t* pr, int64_t q_new, const double* pair, double scale,
                  double slack) {
    const double inf = std::numeric_limits<double>::infinity();
    for (int64_t b = 0; b < nbp; ++b) {
      const int64_t j0 = b * kBlockCols, j1 = std::min(cols, j0 + kBlockCols);
      double m = inf;
      for (int64_t j = j0; j < j1; ++j) {
        const double d = B[j] - Bprev[j];
        m = (B[j] < inf && Bprev[j] < inf && d < m) ? d : m;
      }
      if (!(m < inf)) continue;
      const double c = cum[b] + m;
      cum[b] = c - slack * (scale + std::fabs(c) + std::fabs(m));
    }
    const int64_t bn = q_new / kBlockCols;
    const double cb = cum[bn];
    for (int64_t q = 0; q < cols; ++q) {
      if (pr[q] || !inited[q]) continue;
      float& d = D[static_cast<size_t>(q * nbp + bn)];
      const float v = float_down((pair[q] - cb) - slack * (scale + std::fabs(cb) + std::fabs(pair[q])));
      d = v < d ? v : d;
    }
  }
};

// The bounds of row q's blocks: bnd_b = (min over the block of (B_r - tx x_r)) + W_qb, lowered by
// the slack; the blocks whose lb = aq + bnd_b may reach `best` (or is NaN) go to todo (index, bnd)
// and their rows of M are prefetched; returns their count, and *lmin = the least bnd of the others
// (+inf for an empty block: no pruned column). Vectorised over 8 blocks a step (no M read).
DSNOT_CPU_CLONES size_t block_bounds(const double* __restrict Bt, const double* __restrict xt,
                                      const float* __restrict Wq, const float* __restrict Dq,
                                      const double* __restrict cum, int64_t ng, double tx, double aq,
                                      double scale, double slack, double best, const double* Mq, int64_t cols,
                                      int32_t* __restrict todo, double* __restrict todo_bnd, double* lmin) {
  const double inf_s = std::numeric_limits<double>::infinity();
  const v8db inf = broadcast8(inf_s), txv = broadcast8(tx), aqv = broadcast8(aq), sc = broadcast8(scale);
  const v8db ks = broadcast8(slack), bestv = broadcast8(best);
  const v8lb abs_mask = {INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX};
  v8db lminv = inf;
  size_t n = 0;
  for (int64_t g = 0; g < ng; ++g) {
    const double* bt = Bt + g * kGroupCols;
    const double* xv = xt + g * kGroupCols;
    v8db acc[4] = {inf, inf, inf, inf};  // four independent minima: no chain of 16 dependent steps
    for (int64_t k = 0; k < kBlockCols; ++k) {
      v8db b, x;
      std::memcpy(&b, bt + k * kGroupBlocks, sizeof(b));
      std::memcpy(&x, xv + k * kGroupBlocks, sizeof(x));
      const v8db e = b - txv * x;
      v8db& a = acc[k & 3];
      const v8lb lt = e < a;
      a = (v8db)(((v8lb)e & lt) | ((v8lb)a & ~lt));
    }
    const v8lb l01 = acc[1] < acc[0], l23 = acc[3] < acc[2];
    const v8db m01 = (v8db)(((v8lb)acc[1] & l01) | ((v8lb)acc[0] & ~l01));
    const v8db m23 = (v8db)(((v8lb)acc[3] & l23) | ((v8lb)acc[2] & ~l23));
    const v8lb lm = m23 < m01;
    const v8db m = (v8db)(((v8lb)m23 & lm) | ((v8lb)m01 & ~lm));
    v8f wf;
    std::memcpy(&wf, Wq + g * kGroupBlocks, sizeof(wf));
    const v8db raw = m + __builtin_convertvector(wf, v8db);
    const v8db bnd1 = raw - (ks + ks) * (sc + (v8db)((v8lb)raw & abs_mask));
    v8f df;
    v8db cv;
    std::memcpy(&df, Dq + g * kGroupBlocks, sizeof(df));
    std::memcpy(&cv, cum + g * kGroupBlocks, sizeof(cv));
    const v8db dr = __builtin_convertvector(df, v8db) + cv;
    const v8db bnd2 = dr - ks * (sc + (v8db)((v8lb)dr & abs_mask) + (v8db)((v8lb)cv & abs_mask));
    const v8lb hi = bnd2 > bnd1;  // NaN (-inf + inf cannot occur: cum is finite) keeps bnd1
    const v8db bnd = (v8db)(((v8lb)bnd2 & hi) | ((v8lb)bnd1 & ~hi));
    const v8db lb = (aqv + bnd) - ks * (sc + (v8db)((v8lb)bnd & abs_mask));
    const v8lb skip = (lb > bestv) | (m == inf);
    const v8lb take = skip & (bnd < lminv);
    lminv = (v8db)(((v8lb)bnd & take) | ((v8lb)lminv & ~take));
    // Every lane ruled out (the common case): nothing to list. An AND over the lanes by halves.
    const v8lb s4 = skip & __builtin_shufflevector(skip, skip, 4, 5, 6, 7, 0, 1, 2, 3);
    const v8lb s2 = s4 & __builtin_shufflevector(s4, s4, 2, 3, 0, 1, 6, 7, 4, 5);
    const v8lb s1 = s2 & __builtin_shufflevector(s2, s2, 1, 0, 3, 2, 5, 4, 7, 6);
    if (s1[0] != 0) continue;
    for (int l = 0; l < kGroupBlocks; ++l) {
      const int64_t b = g * kGroupBlocks + l;
      todo[n] = static_cast<int32_t>(b);
      todo_bnd[n] = bnd[l];
      n += skip[l] == 0;
    }
  }
  for (size_t t = 0; t < n && t < static_cast<size_t>(kPrefetchAhead); ++t) {  // the first blocks to read
    const int64_t j0 = static_cast<int64_t>(todo[t]) * kBlockCols;
    __builtin_prefetch(Mq + j0);
    if (j0 + kBlockCols - 1 < cols) __builtin_prefetch(Mq + j0 + kBlockCols - 1);
  }
  double lo = inf_s;
  for (int l = 0; l < kGroupBlocks; ++l) lo = lminv[l] < lo ? lminv[l] : lo;
  *lmin = lo;
  return n;
}

}  // namespace
}  // namespace cpu
}  // namespace dsnot
