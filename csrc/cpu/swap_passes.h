// The per-row passes of the "swap" CPU kernel (refine_swap_cpu.cpp, which alone includes this
// file): the pair scan of one row of M (row_min), the eager g update, the side terms A and B, the
// Cauchy-Schwarz envelope, and the bound pass. Every one is contiguous over the row's columns and
// vectorised; float64, each op rounded (no FMA), as docs/KERNEL_CONTRACT.md "Objective 4" states.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/lower_envelope.h"
#include "cpu/swap_state.h"

namespace dsnot {
namespace cpu {
namespace {

// Row q of the pair matrix: the first minimum over j of d_j = (a - (tq w_j) M_qj) + B_j, where
// B_j = +inf on kept columns (never a pair). One pass: each of 8 lanes keeps its minimum and the
// first index reaching it (strict <); the lanes' minima then tie-break by index, so the result is
// the pair a scalar scan with `<` picks (-0.0 == +0.0). *arg = -1 if no finite d.
DSNOT_CPU_CLONES double row_min(double a, double tq, const double* w, const double* B, const double* Mq,
                                 int64_t n, int64_t* arg) {
  const v8d inf = {kInf, kInf, kInf, kInf, kInf, kInf, kInf, kInf};
  const v8d av = {a, a, a, a, a, a, a, a};
  const v8d tv = {tq, tq, tq, tq, tq, tq, tq, tq};
  v8d m0 = inf, m1 = inf;
  v8l i0 = {-1, -1, -1, -1, -1, -1, -1, -1}, i1 = i0;
  v8l j0 = {0, 1, 2, 3, 4, 5, 6, 7}, j1 = {8, 9, 10, 11, 12, 13, 14, 15};
  const v8l step = {16, 16, 16, 16, 16, 16, 16, 16};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    v8d w0, w1, b0, b1, c0, c1;
    std::memcpy(&w0, w + j, sizeof(w0)); std::memcpy(&w1, w + j + 8, sizeof(w1));
    std::memcpy(&b0, B + j, sizeof(b0)); std::memcpy(&b1, B + j + 8, sizeof(b1));
    std::memcpy(&c0, Mq + j, sizeof(c0)); std::memcpy(&c1, Mq + j + 8, sizeof(c1));
    const v8d d0 = (av - (tv * w0) * c0) + b0;
    const v8d d1 = (av - (tv * w1) * c1) + b1;
    const v8l l0 = d0 < m0, l1 = d1 < m1;
    m0 = (v8d)(((v8l)d0 & l0) | ((v8l)m0 & ~l0));
    m1 = (v8d)(((v8l)d1 & l1) | ((v8l)m1 & ~l1));
    i0 = (j0 & l0) | (i0 & ~l0);
    i1 = (j1 & l1) | (i1 & ~l1);
    j0 += step;
    j1 += step;
  }
  double v = kInf;
  int64_t k = -1;
  for (int l = 0; l < 8; ++l) {
    if (m0[l] < v || (m0[l] == v && i0[l] < k)) { v = m0[l]; k = i0[l]; }
    if (m1[l] < v || (m1[l] == v && i1[l] < k)) { v = m1[l]; k = i1[l]; }
  }
  for (; j < n; ++j) {  // the tail, after every vector index
    const double d = (a - (tq * w[j]) * Mq[j]) + B[j];
    if (d < v) { v = d; k = j; }
  }
  *arg = v < kInf ? k : -1;
  return v;
}

// g <- g + (w_q M[q, :] - w_r M[r, :]), each op rounded (contract "Objective 2").
DSNOT_CPU_CLONES void update_g_row(double* __restrict g, const double* __restrict mq, const double* __restrict mr,
                                    double wq, double wr, int64_t n) {
  for (int64_t j = 0; j < n; ++j) g[j] = g[j] + (wq * mq[j] - wr * mr[j]);
}
inline void update_g(const SwapProblem& P, double* g, double wq, double wr, int64_t q, int64_t r) {
  update_g_row(g, P.M + q * P.cols, P.M + r * P.cols, wq, wr, P.cols);
}

inline double a_term(double w, double g, double md) { return (2.0 * w) * g + (w * w) * md; }
inline double b_term(double w, double g, double md) { return (w * w) * md - (2.0 * w) * g; }

// A on kept columns (+inf on pruned), B on pruned columns (+inf on kept); returns max |A|, |B|.
// With kDelta: also the min and max |.| of B_new - B_old over the columns pruned before and after
// (pruned now and not q_new). Branch-free (the kept/pruned pattern of a row is
// random) and vectorised.
// Lane-wise select (m: all-ones lanes take x) and |x|, as macros: no v4d passes through a call.
#define DSNOT_VSEL(m, x, y) ((v4d)((((v4l)(x)) & (m)) | (((v4l)(y)) & ~(m))))
#define DSNOT_VABS(x) ((v4d)(((v4l)(x)) & kAbsMask))
template <bool kDelta>
__attribute__((always_inline)) inline double side_pass(int64_t n, const double* __restrict w, const double* __restrict g,
                        const double* __restrict diag, const uint8_t* __restrict pr, int64_t q_new,
                        double* __restrict A, double* __restrict B, double* dmin, double* dmax_abs) {
  const v4d inf = {kInf, kInf, kInf, kInf}, zero = {0.0, 0.0, 0.0, 0.0}, two = {2.0, 2.0, 2.0, 2.0};
  const v4l qn = {q_new, q_new, q_new, q_new}, step = {4, 4, 4, 4};
  const v4l kAbsMask = {INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX};
  v4d mxv = zero, dnv = inf, dav = zero;
  v4l idx = {0, 1, 2, 3};
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    v4d wv, gv, mv, bo;
    std::memcpy(&wv, w + j, sizeof(wv));
    std::memcpy(&gv, g + j, sizeof(gv));
    std::memcpy(&mv, diag + j, sizeof(mv));
    const v4l pv = {pr[j], pr[j + 1], pr[j + 2], pr[j + 3]};
    const v4l p = pv != 0;
    const v4d a = (two * wv) * gv + (wv * wv) * mv, b = (wv * wv) * mv - (two * wv) * gv;
    if (kDelta) {
      std::memcpy(&bo, B + j, sizeof(bo));
      const v4l both = p & (idx != qn);
      const v4d d = DSNOT_VSEL(both, b - bo, inf);
      dnv = DSNOT_VSEL(d < dnv, d, dnv);
      const v4d ad = DSNOT_VSEL(both, DSNOT_VABS(d), zero);
      dav = DSNOT_VSEL(ad > dav, ad, dav);
      idx += step;
    }
    const v4d an = DSNOT_VSEL(p, inf, a), bn = DSNOT_VSEL(p, b, inf);
    std::memcpy(A + j, &an, sizeof(an));
    std::memcpy(B + j, &bn, sizeof(bn));
    const v4d v = DSNOT_VABS(DSNOT_VSEL(p, b, a));
    mxv = DSNOT_VSEL(v > mxv, v, mxv);
  }
  double mx = 0.0, dn = kInf, da = 0.0;
  for (int l = 0; l < 4; ++l) {
    mx = mxv[l] > mx ? mxv[l] : mx;
    dn = dnv[l] < dn ? dnv[l] : dn;
    da = dav[l] > da ? dav[l] : da;
  }
  for (; j < n; ++j) {  // the tail
    const double a = a_term(w[j], g[j], diag[j]), b = b_term(w[j], g[j], diag[j]);
    const bool p = pr[j] != 0;
    if (kDelta) {
      const bool both = p && j != q_new;
      const double d = both ? b - B[j] : kInf;
      dn = d < dn ? d : dn;
      const double ad = both ? std::fabs(d) : 0.0;
      da = ad > da ? ad : da;
    }
    A[j] = p ? kInf : a;
    B[j] = p ? b : kInf;
    const double v = std::fabs(p ? b : a);
    mx = v > mx ? v : mx;
  }
  if (kDelta) { *dmin = dn; *dmax_abs = da; }
  return mx;
}
DSNOT_CPU_CLONES double side_pass_delta(int64_t n, const double* w, const double* g, const double* diag,
                                         const uint8_t* pr, int64_t q_new, double* A, double* B, double* dmin,
                                         double* dmax_abs) {
  return side_pass<true>(n, w, g, diag, pr, q_new, A, B, dmin, dmax_abs);
}
DSNOT_CPU_CLONES double side_pass_plain(int64_t n, const double* w, const double* g, const double* diag,
                                         const uint8_t* pr, double* A, double* B) {
  return side_pass<false>(n, w, g, diag, pr, -1, A, B, nullptr, nullptr);
}
double side_terms(const SwapProblem& P, SwapScratch& S, int64_t q_new, double* dmin, double* dmax_abs) {
  if (dmin == nullptr)
    return side_pass_plain(P.cols, S.w.data(), S.g.data(), P.diag, S.pruned.data(), S.A.data(), S.B.data());
  return side_pass_delta(P.cols, S.w.data(), S.g.data(), P.diag, S.pruned.data(), q_new, S.A.data(), S.B.data(),
                         dmin, dmax_abs);
}

// (a_j, j) order of the row's columns.
struct KeyLess {
  const double* key;
  bool operator()(int32_t x, int32_t y) const { return key[x] < key[y] || (key[x] == key[y] && x < y); }
};

inline void move_between(std::vector<int32_t>& from, std::vector<int32_t>& to, int32_t c, KeyLess less) {
  from.erase(std::lower_bound(from.begin(), from.end(), c, less));
  to.insert(std::lower_bound(to.begin(), to.end(), c, less), c);
}

// Cauchy-Schwarz bounds: cs_q <= min_{r pruned} (B_r - C_qr) up to rounding, from
// |C_qr| <= 2 a_q a_r (a_j = |w_j| z_j): the lower envelope of the lines y = B_r - 2 a_r x
// (r pruned, slopes decreasing in the a order), built here (hm, hb; returns its size) and
// evaluated at x = a_q for the kept q in increasing a order by Envelope::at.
size_t build_envelope(SwapScratch& S) {
  // Only lines below every line of a larger or equal a can be lowest at some x >= 0 (a_q >= 0):
  // the others are dropped first (one compare each, from the largest a down; the staircase left
  // is short on real layers, where a large |w_r| also makes B_r very negative).
  int32_t* st = S.stair.data();
  size_t ns = 0;
  double lo = kInf;
  for (auto it = S.ps.rbegin(); it != S.ps.rend(); ++it) {
    const double b = S.B[*it];
    st[ns] = *it;
    ns += b < lo;
    lo = b < lo ? b : lo;
  }
  double* hm = S.hm.data();
  double* hb = S.hb.data();
  size_t n = 0;
  while (ns > 0) {  // increasing a
    const int32_t r = st[--ns];
    n = push_lower_line(hm, hb, n, -2.0 * S.key[r], S.B[r]);
  }
  return n;
}

// Lines of the envelope evaluated at every column (a min over all its lines, vectorised) up to
// this many; a longer envelope is walked in the a order of the kept columns.
constexpr size_t kEnvelopeLanes = 32;

// The bound pass, every column (contiguous, vectorised). Kept q: with prow (a swap (q*, r*) just
// applied), L_q <- min(L_q + dmin - slack, the new pair (q, q*) = pb - ((2 w_q) pw) prow_q - slack);
// then L_q <- max(L_q, the Cauchy-Schwarz bound cs_q - slack), cs_q = the envelope at a_q (nh >= 0
// lines hm, hb; or read from cs when given; none when nh < 0); LB_q = (A_q + L_q) - slack. Pruned
// columns: LB = +inf (their L is never read).
DSNOT_CPU_CLONES void bound_pass(int64_t n, double* __restrict L, const double* __restrict A,
                                  const double* __restrict w, const double* __restrict key,
                                  const uint8_t* __restrict pr, const double* __restrict prow, double pb,
                                  double pw, double dmin, double peps, double scale, const double* hm,
                                  const double* hb, int64_t nh, const double* __restrict cs_given,
                                  double* __restrict LB) {
  const v4d inf = {kInf, kInf, kInf, kInf}, ninf = -inf, two = {2.0, 2.0, 2.0, 2.0};
  const v4d ks = {kSlack, kSlack, kSlack, kSlack}, ks2 = ks * two;
  const v4d sc = {scale, scale, scale, scale}, pbv = {pb, pb, pb, pb}, pwv = {pw, pw, pw, pw};
  const v4d dm = {dmin, dmin, dmin, dmin}, pe = {peps, peps, peps, peps};
  const v4l kAbsMask = {INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX};
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    v4d l, av;
    std::memcpy(&l, L + j, sizeof(l));
    std::memcpy(&av, A + j, sizeof(av));
    if (prow != nullptr) {
      v4d wv, mv;
      std::memcpy(&wv, w + j, sizeof(wv));
      std::memcpy(&mv, prow + j, sizeof(mv));
      const v4d pair = pbv - ((two * wv) * pwv) * mv;
      const v4d moved = (l + dm) - (pe + ks * DSNOT_VABS(l));
      const v4d lo = pair - ks * (sc + DSNOT_VABS(pair));
      l = DSNOT_VSEL(moved < lo, moved, lo);
    }
    v4d cs = ninf;
    if (cs_given != nullptr) {
      std::memcpy(&cs, cs_given + j, sizeof(cs));
    } else if (nh >= 0) {
      v4d x;
      std::memcpy(&x, key + j, sizeof(x));
      cs = inf;
      for (int64_t h = 0; h < nh; ++h) {
        const v4d bh = {hb[h], hb[h], hb[h], hb[h]}, mh = {hm[h], hm[h], hm[h], hm[h]};
        const v4d v = bh + mh * x;
        cs = DSNOT_VSEL(v < cs, v, cs);
      }
    }
    const v4d c = cs - ks2 * (sc + DSNOT_VABS(cs));
    l = DSNOT_VSEL(c > l, c, l);
    std::memcpy(L + j, &l, sizeof(l));
    const v4l pv = {pr[j], pr[j + 1], pr[j + 2], pr[j + 3]};
    const v4d lb = (av + l) - ks * (sc + DSNOT_VABS(l));
    const v4d out = DSNOT_VSEL(pv != 0, inf, lb);
    std::memcpy(LB + j, &out, sizeof(out));
  }
  for (; j < n; ++j) {  // the tail
    double l = L[j];
    if (prow != nullptr) {
      const double pair = pb - ((2.0 * w[j]) * pw) * prow[j];
      const double moved = (l + dmin) - (peps + kSlack * std::fabs(l));
      const double lo = pair - kSlack * (scale + std::fabs(pair));
      l = moved < lo ? moved : lo;
    }
    double cs = -kInf;
    if (cs_given != nullptr) {
      cs = cs_given[j];
    } else if (nh >= 0) {
      cs = kInf;
      for (int64_t h = 0; h < nh; ++h) {
        const double v = hb[h] + hm[h] * key[j];
        cs = v < cs ? v : cs;
      }
    }
    const double c = cs - kSlack * 2.0 * (scale + std::fabs(cs));
    l = c > l ? c : l;
    L[j] = l;
    const double lb = (A[j] + l) - kSlack * (scale + std::fabs(l));
    LB[j] = pr[j] ? kInf : lb;
  }
}

}  // namespace
}  // namespace cpu
}  // namespace dsnot
