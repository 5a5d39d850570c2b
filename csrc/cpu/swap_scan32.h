// The float32 row scan of the "swap" CPU kernel (refine_swap_cpu.cpp, which alone includes this
// file): the same first minimum as row_min (swap_passes.h), bit for bit, from a float32 copy of M.
//
// Pass 1 computes, for every column j of row q, t_j = B_j - (tq w_j) M_qj in float32 (the delta
// less A_q, the row's constant) from float32 copies of tq, w (exact: the weights are float32,
// float16 or bfloat16), M and B, 16 lanes at a time, with a bound E_j of its distance to the
// float64 delta d64_j less A_q. It keeps min_j hi_j (hi_j = t_j + E_j) and, per group of 16 x 16
// columns, the lane-wise least lo_j = t_j - E_j; nothing per column (the bytes a scan moves are
// half the float64 scan's). The float64 first minimum, and every j tied with it, has lo_j <=
// d64_j - A_q <= min_k (d64_k - A_q) <= min_k hi_k, so pass 2 recomputes (same float32 operations,
// same values) the lo of only the lanes whose least lo reaches min hi, and computes the j whose lo
// does in float64 with row_min's expression, the least value winning, ties to the lowest j. The
// result is row_min's (value and index), whatever the rounding of pass 1. A_q stays out of the
// float32 part: a large A_q against a large B_r - C_qr would leave hundreds of candidates.
//
// The error bound. With u = 2^-24 and p_j = (tq w_j) M_qj: p_j has five roundings (the conversions
// of tq, w, M and the two products: (1 + u)^5 - 1 < 5.01 u), B_j one conversion, t_j one sum, so
// |t32 - (B - p)| <= u (6.02 |p| + 2.01 |B|); E_j = 10 u (|p_j| + |B_j|) computed in float32 (its
// own roundings and those of lo and hi stay below 2 u of the same sum) covers it. The uniform part
// (scan32_tiny) adds float64's own three roundings of d, relative to |A_q| + |p| + |B|, and an
// absolute 2^-146 (4 + |tq| max|w| + max_j |M_qj|) for results in float32's subnormal range (each
// rounding there errs by at most 2^-150, amplified by at most those factors). The caller uses the
// scan only when every magnitude is far from float32's overflow (kScan32Max).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "cpu/simd.h"

namespace dsnot {
namespace cpu {
namespace {

constexpr double kScan32Max = 1e30;  // every |a|, |B|, |M|, cross term below this
constexpr float kScan32Rel = 10.0f / 16777216.0f;  // 10 u, u = 2^-24
constexpr double kScan32Abs = 1.2e-44;  // > 2^-146
constexpr double kScan32F64 = 8.0 / 9007199254740992.0;  // 8 2^-53

// The uniform part of E for row q: float64's own rounding of d (3 roundings, relative to |a| and
// every |p|, |B| <= 2 scale + P_q, P_q = |tq| max|w| max_j |M_qj|) and the subnormal term; rounded
// up into float32.
inline float scan32_tiny(double a, double scale, double tq, double w_max, double row_abs_q) {
  const double pq = (std::fabs(tq) * w_max) * row_abs_q;
  const double t = kScan32F64 * (std::fabs(a) + 2.0 * scale + pq) + kScan32Abs * (4.0 + std::fabs(tq) * w_max + row_abs_q);
  return std::nextafter(static_cast<float>(t), std::numeric_limits<float>::infinity());
}

// Lanes x vectors of a pass-1 group: pass 1 stores each group's lane-wise least lo (no per-column
// store: the row's bytes are then half the float64 scan's), and pass 2 recomputes the lo of a lane
// of a group only when that least lo is a candidate (nearly always once per row).
constexpr int64_t kScan32Lanes = 16, kScan32Group = 16 * kScan32Lanes;
inline size_t scan32_buf_size(int64_t n) { return static_cast<size_t>((n / kScan32Group + 1) * kScan32Lanes); }

// lo_j and hi_j of one column, less a (the row's constant): t_j = B_j - (tq w_j) M_qj in float32,
// E_j = 10 u (|p_j| + |B_j|) + tiny; the same operations as pass 1's lanes, so the same values.
inline void scan32_one(float tq, float tiny, const float* w, const float* B, const float* Mq, int64_t j, float* lo,
                       float* hi) {
  const float p = (tq * w[j]) * Mq[j];
  const float t = B[j] - p;
  const float e = kScan32Rel * (std::fabs(p) + std::fabs(B[j])) + tiny;
  *lo = t - e;
  *hi = t + e;
}

// Pass 1: the groups' lane-wise least lo into gmin (lo is NaN on kept columns, whose B is +inf, and
// never a candidate); returns min_j hi_j (+inf if no delta is finite).
DSNOT_CPU_CLONES float scan32_pass(float tq, float tiny, const float* __restrict w, const float* __restrict B,
                                    const float* __restrict Mq, int64_t n, float* __restrict gmin) {
  const float inf = std::numeric_limits<float>::infinity(), k = kScan32Rel;
  v16f tv, kv, tyv, m, g;
  v16i absm;
  for (int l = 0; l < 16; ++l) { tv[l] = tq; kv[l] = k; tyv[l] = tiny; m[l] = inf; g[l] = inf; absm[l] = INT32_MAX; }
  const int64_t n16 = n - n % kScan32Lanes;
  for (int64_t j = 0; j < n16; j += kScan32Lanes) {
    v16f w0, b0, c0;
    std::memcpy(&w0, w + j, sizeof(w0));
    std::memcpy(&b0, B + j, sizeof(b0));
    std::memcpy(&c0, Mq + j, sizeof(c0));
    const v16f p0 = (tv * w0) * c0;
    const v16f t0 = b0 - p0;
    const v16f e0 = kv * ((v16f)((v16i)p0 & absm) + (v16f)((v16i)b0 & absm)) + tyv;
    const v16f lo = t0 - e0, hi = t0 + e0;
    m = hi < m ? hi : m;
    g = lo < g ? lo : g;
    if ((j + kScan32Lanes) % kScan32Group == 0 || j + kScan32Lanes == n16) {
      std::memcpy(gmin + (j / kScan32Group) * kScan32Lanes, &g, sizeof(g));
      for (int l = 0; l < 16; ++l) g[l] = inf;
    }
  }
  float mn = inf;
  for (int l = 0; l < 16; ++l) mn = m[l] < mn ? m[l] : mn;
  for (int64_t j = n16; j < n; ++j) {
    float lo, hi;
    scan32_one(tq, tiny, w, B, Mq, j, &lo, &hi);
    mn = hi < mn ? hi : mn;
  }
  return mn;
}

// Pass 2: the float64 first minimum (w, B, M row Mq in float64) over the j with lo_j <= thr, read
// from the groups' least lo: only a lane whose least lo is a candidate has its lo recomputed.
inline double scan32_exact(double a, double tq, const double* w, const double* B, const double* Mq, float tq32,
                           float tiny, const float* w32, const float* B32, const float* Mq32, const float* gmin,
                           int64_t n, float thr, int64_t* arg) {
  double v = std::numeric_limits<double>::infinity();
  int64_t k = -1;
  auto consider = [&](int64_t j) {  // the least value, ties to the lowest j
    float lo, hi;
    scan32_one(tq32, tiny, w32, B32, Mq32, j, &lo, &hi);
    if (!(lo <= thr)) return;
    const double e = (a - (tq * w[j]) * Mq[j]) + B[j];
    if (e < v || (e == v && j < k)) { v = e; k = j; }  // lanes are visited out of j order
  };
  const int64_t n16 = n - n % kScan32Lanes, groups = (n16 + kScan32Group - 1) / kScan32Group;
  for (int64_t gi = 0; gi < groups; ++gi) {
    for (int64_t l = 0; l < kScan32Lanes; ++l) {
      if (!(gmin[gi * kScan32Lanes + l] <= thr)) continue;
      const int64_t j1 = std::min(n16, (gi + 1) * kScan32Group);
      for (int64_t j = gi * kScan32Group + l; j < j1; j += kScan32Lanes) consider(j);
    }
  }
  for (int64_t j = n16; j < n; ++j) consider(j);
  *arg = v < std::numeric_limits<double>::infinity() ? k : -1;
  return v;
}

// row_min's result (first minimum of row q, value and index) through the float32 scan; tiny from
// scan32_tiny. gmin: scan32_buf_size(n) floats of scratch.
inline double row_min32(double a, double tq, const double* w, const double* B, const double* Mq, const float* w32,
                        const float* B32, const float* Mq32, int64_t n, float tiny, float* gmin, int64_t* arg) {
  const float tq32 = static_cast<float>(tq);
  const float thr = scan32_pass(tq32, tiny, w32, B32, Mq32, n, gmin);
  if (!(thr < std::numeric_limits<float>::infinity())) { *arg = -1; return std::numeric_limits<double>::infinity(); }
  return scan32_exact(a, tq, w, B, Mq, tq32, tiny, w32, B32, Mq32, gmin, n, thr, arg);
}

}  // namespace
}  // namespace cpu
}  // namespace dsnot
