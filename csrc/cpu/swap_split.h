// The low-rank-plus-residual bound of the "swap" CPU kernel (csrc/cpu/refine_swap_cpu.cpp).
//
// M = v vᵀ + R with v = sqrt(λ) u, (λ, u) the top eigenpair of M from a few power iterations (any v
// gives a valid bound; a good one makes it tight). The cross term of a pair is then
//     C_qr = ((2 w_q) w_r) M_qr = 2 x_q x_r + 2 w_q w_r R_qr,   x_j = w_j v_j (signed),
// and |R_qr| <= zR_q zR_r (zR_j = tR_j sqrt(rhoR_j), tR_j = sqrt(R_jj), rhoR_j = max_r |R_jr| /
// (tR_j tR_r), measured once per call, like objective 4's plain Cauchy-Schwarz bound but on R only).
// So with b_j = |w_j| zR_j, for every kept q
//     min_r (B_r - C_qr) >= min_r (B_r - 2 x_r x_q - 2 b_r b_q).
// The dominant direction (a strong common component of the inputs, which makes every channel pair
// correlate and the plain bound |C_qr| <= 2 a_q a_r lose the sign) is kept exactly, signed; only
// the residual goes through Cauchy-Schwarz. The pruned columns are split into buckets by b (fixed
// per row; see kBuckets); in each bucket b_r <= bmax, and min over the bucket of the lines
// y = B_r - 2 x_r X is a lower envelope (the convex-hull trick over signed slopes), evaluated at
// X = x_q for the kept q in increasing x order. The bound of q is min over buckets of
// (envelope(x_q) - 2 b_q bmax); the caller lowers it by its slack, as every other bound.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/lower_envelope.h"

namespace dsnot {
namespace cpu {
namespace split {

// Buckets by b: at least kBuckets (equal counts), more where b spans over kBucketRatio within one.
// On bench_wide.py's inputs 32 equal-count buckets read 1.8x (4096 columns) to 2.7x (11008) more
// pairs than these (benchmarks/RESULTS.md, notes on "wide-f32"); the bound's cost is O(buckets) per
// kept q.
constexpr int kBuckets = 64;
constexpr double kBucketRatio = 1.25;
constexpr size_t kMaxBuckets = 512;
constexpr int64_t kMinCols = 2048;  // narrower rows: no split bound (search 0)
constexpr int kPowerIterations = 6;
constexpr double kInfS = std::numeric_limits<double>::infinity();

// Per call: v (cols) and zR (cols); ok = false when no usable split (then the bound is not used).
struct Consts {
  std::vector<double> v, zR;
  double vmax2 = 0.0;
  bool ok = false;
};

// y = M x (BLAS, through ATen: one call, not one parallel region per row block).
inline void matvec(const double* M, int64_t n, const double* x, double* y) {
  const auto opt = at::TensorOptions().dtype(at::kDouble);
  at::Tensor m = at::from_blob(const_cast<double*>(M), {n, n}, opt);
  at::Tensor xv = at::from_blob(const_cast<double*>(x), {n}, opt);
  at::Tensor yv = at::from_blob(y, {n}, opt);
  at::mv_out(yv, m, xv);
}

inline Consts constants(const double* M, int64_t n) {
  Consts C;
  if (n < 2) return C;
  std::vector<double> u(n), y(n);
  for (int64_t j = 0; j < n; ++j) u[j] = std::sqrt(std::max(M[j * n + j], 0.0)) + 1e-300;
  double lam = 0.0;
  for (int it = 0; it < kPowerIterations; ++it) {
    double nrm = 0.0;
    for (int64_t j = 0; j < n; ++j) nrm += u[j] * u[j];
    nrm = std::sqrt(nrm);
    if (!(nrm > 0.0) || !std::isfinite(nrm)) return C;
    for (int64_t j = 0; j < n; ++j) u[j] /= nrm;
    matvec(M, n, u.data(), y.data());
    lam = 0.0;
    for (int64_t j = 0; j < n; ++j) lam += u[j] * y[j];
    std::swap(u, y);
  }
  double nrm = 0.0;
  for (int64_t j = 0; j < n; ++j) nrm += u[j] * u[j];
  nrm = std::sqrt(nrm);
  if (!(lam > 0.0) || !std::isfinite(lam) || !(nrm > 0.0) || !std::isfinite(nrm)) return C;
  C.v.resize(n);
  const double sl = std::sqrt(lam) / nrm;
  for (int64_t j = 0; j < n; ++j) {
    C.v[j] = u[j] * sl;
    C.vmax2 = std::max(C.vmax2, C.v[j] * C.v[j]);
  }
  // The residual's scales and per-column largest correlation (one pass over M, rows in parallel).
  std::vector<double> t(n), rho(n, 0.0);
  for (int64_t j = 0; j < n; ++j) t[j] = std::sqrt(std::max(M[j * n + j] - C.v[j] * C.v[j], 0.0));
  const double* v = C.v.data();
  at::parallel_for(0, n, 16, [&](int64_t qb, int64_t qe) {
    for (int64_t q = qb; q < qe; ++q) {
      const double* mq = M + q * n;
      double mr = 0.0;
      for (int64_t r = 0; r < n; ++r) {
        const double a = std::fabs(mq[r] - v[q] * v[r]);
        if (r == q || a == 0.0) continue;
        const double den = t[q] * t[r];
        const double x = den > 0.0 ? a / den : kInfS;
        mr = x > mr ? x : mr;
      }
      rho[q] = mr;
    }
  });
  C.zR.resize(n);
  for (int64_t j = 0; j < n; ++j) {
    C.zR[j] = (t[j] * std::sqrt(rho[j])) * (1.0 + 1e-12);
    if (!std::isfinite(C.zR[j])) return Consts{};
  }
  C.ok = std::isfinite(C.vmax2);
  return C;
}

// Lines i of `idx` (in increasing x order: slopes -2 x decreasing), intercepts B: the lower
// envelope into (hm, hb); returns its size.
inline size_t lower_hull(const std::vector<int32_t>& idx, const double* x, const double* B, double* hm, double* hb) {
  size_t n = 0;
  for (const int32_t r : idx) n = push_lower_line(hm, hb, n, -2.0 * x[r], B[r]);
  return n;
}

// Per row.
struct Row {
  std::vector<double> x, b, hm, hb, xk, bk;
  std::vector<int16_t> bucket;
  int nb = kBuckets;
  std::vector<double> bmax;
  std::vector<int32_t> kept;                // kept columns by (x, j)
  std::vector<std::vector<int32_t>> pruned; // pruned columns of each bucket by (x, j)

  struct Less {
    const double* x;
    bool operator()(int32_t p, int32_t q) const { return x[p] < x[q] || (x[p] == x[q] && p < q); }
  };

  void init(const Consts& C, const double* w, const uint8_t* pr, int64_t n) {
    x.resize(n); b.resize(n); hm.resize(n); hb.resize(n); bucket.resize(n);
    std::vector<int32_t> order(n);
    for (int64_t j = 0; j < n; ++j) {
      x[j] = w[j] * C.v[j];
      b[j] = std::fabs(w[j]) * C.zR[j];
      order[j] = static_cast<int32_t>(j);
    }
    std::sort(order.begin(), order.end(), [&](int32_t p, int32_t q) { return b[p] < b[q] || (b[p] == b[q] && p < q); });
    // Buckets from the largest b down: a new one after ceil(n / kBuckets) columns, or as soon as b
    // falls below the bucket's largest / kBucketRatio (the heavy tail of |w| and the outlier
    // channels get buckets of their own), at most kMaxBuckets.
    // (The ratio rule stops at 1 % of the largest b: below, a bucket's loss is small anyway.)
    bmax.clear();
    int64_t cnt = 0;
    const int64_t per = (n + kBuckets - 1) / kBuckets;
    const double floor_b = n > 0 ? 1e-2 * b[order[n - 1]] : 0.0;
    for (int64_t i = n - 1; i >= 0; --i) {
      const double bi = b[order[i]];
      const bool fresh = bmax.empty() || ((cnt >= per || (bi >= floor_b && bi * kBucketRatio < bmax.back())) &&
                                          bmax.size() < kMaxBuckets);
      if (fresh) { bmax.push_back(bi); cnt = 0; }
      ++cnt;
      bucket[order[i]] = static_cast<int16_t>(bmax.size() - 1);
    }
    nb = static_cast<int>(bmax.size());
    pruned.resize(nb);
    for (int k = 0; k < nb; ++k) pruned[k].clear();
    kept.clear();
    for (int64_t j = 0; j < n; ++j) (pr[j] ? pruned[bucket[j]] : kept).push_back(static_cast<int32_t>(j));
    const Less less{x.data()};
    std::sort(kept.begin(), kept.end(), less);
    for (auto& p : pruned) std::sort(p.begin(), p.end(), less);
  }

  // q kept -> pruned, r pruned -> kept.
  void swap(int32_t q, int32_t r) {
    const Less less{x.data()};
    auto& pr = pruned[bucket[r]];
    pr.erase(std::lower_bound(pr.begin(), pr.end(), r, less));
    kept.erase(std::lower_bound(kept.begin(), kept.end(), q, less));
    kept.insert(std::lower_bound(kept.begin(), kept.end(), r, less), r);
    auto& pq = pruned[bucket[q]];
    pq.insert(std::lower_bound(pq.begin(), pq.end(), q, less), q);
  }

  // out[q] = max(out[q], the split bound of q) for every kept q (out holds the caller's bound).
  // tmp: cols doubles of scratch. The kept q's x, b and running bound sit contiguous, in x order.
  void bound(const double* B, double* out, double* tmp) {
    const size_t nk = kept.size();
    xk.resize(nk);
    bk.resize(nk);
    double* t = tmp;
    for (size_t i = 0; i < nk; ++i) {
      xk[i] = x[kept[i]];
      bk[i] = b[kept[i]];
      t[i] = kInfS;
    }
    for (int k = 0; k < nb; ++k) {
      if (pruned[k].empty()) continue;
      const size_t nh = lower_hull(pruned[k], x.data(), B, hm.data(), hb.data());
      const double tb = 2.0 * bmax[k];
      Envelope env{hm.data(), hb.data(), nh};
      for (size_t i = 0; i < nk; ++i) {  // increasing x
        const double e = env.at(xk[i]) - tb * bk[i];
        t[i] = e < t[i] ? e : t[i];
      }
    }
    for (size_t i = 0; i < nk; ++i) {
      const int32_t q = kept[i];
      out[q] = t[i] > out[q] ? t[i] : out[q];
    }
  }
};

}  // namespace split
}  // namespace cpu
}  // namespace dsnot
