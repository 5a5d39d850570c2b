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
// N:M compares only pairs within a group: O(cols * M) per cycle, scanned in full.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "dsnot_common.h"
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
  const double* diag = nullptr;        // (cols,) M_jj
  const double* z = nullptr;           // (cols,) s_j sqrt(rho_j) (1 + 1e-12), s = sqrt(diag M) (Cauchy-Schwarz)
  const double* g0 = nullptr;          // (rows, cols)
  double m_abs_max = 0.0;              // max |M_qr|
  double rho = kInf;                   // max_j rho_j (see z); inf = no Cauchy-Schwarz bound
  int prune_m = 0;                     // 0 = unstructured
  int64_t max_cycles = 0;
  int search = 0;                      // 0, 2, 3 = bounded (fast; 2: no split bound, 3: split at any width), 1 = full scan
  uint8_t* mask_out = nullptr;
  int32_t* swaps_out = nullptr;
  int64_t* pairs_out = nullptr;        // pairs whose delta was computed, per row
  const split::Consts* split = nullptr;  // the low-rank-plus-residual bound (csrc/cpu/swap_split.h)
};

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(DSNOT_CPU_NO_CLONES)
#define DSNOT_SWAP_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define DSNOT_SWAP_CLONES
#endif
typedef double v4d __attribute__((vector_size(32)));
typedef int64_t v4l __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));
typedef int64_t v8l __attribute__((vector_size(64)));

// Row q of the pair matrix: the first minimum over j of d_j = (a - (tq w_j) M_qj) + B_j, where
// B_j = +inf on kept columns (never a pair). One pass: each of 8 lanes keeps its minimum and the
// first index reaching it (strict <); the lanes' minima then tie-break by index, so the result is
// the pair a scalar scan with `<` picks (-0.0 == +0.0). *arg = -1 if no finite d.
DSNOT_SWAP_CLONES double row_min(double a, double tq, const double* w, const double* B, const double* Mq,
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

struct SwapScratch {
  std::vector<double> w, g, A, B, L, key, hm, hb, lb, cs;  // lb, cs: the bound pass's
  std::vector<uint8_t> pruned;
  std::vector<int32_t> ps, ks, stair;           // pruned / kept columns by (a_j, j) ascending; the undominated pruned
  std::vector<std::pair<double, int64_t>> cand; // (lb, q) to visit this cycle (the first nc)
  split::Row sp;                                // the split bound's per-row state
  std::vector<double> sp_tmp;
  explicit SwapScratch(const SwapProblem& P) {
    sp_tmp.resize(static_cast<size_t>(P.cols));
    const size_t c = static_cast<size_t>(P.cols);
    w.resize(c); g.resize(c); A.resize(c); B.resize(c); L.resize(c);
    key.resize(c); lb.resize(c); cs.resize(c); hm.resize(c); hb.resize(c); pruned.resize(c); stair.resize(c); cand.resize(c);
  }
};

// g <- g + (w_q M[q, :] - w_r M[r, :]), each op rounded (contract "Objective 2").
DSNOT_SWAP_CLONES void update_g_row(double* __restrict g, const double* __restrict mq, const double* __restrict mr,
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
DSNOT_SWAP_CLONES double side_pass_delta(int64_t n, const double* w, const double* g, const double* diag,
                                         const uint8_t* pr, int64_t q_new, double* A, double* B, double* dmin,
                                         double* dmax_abs) {
  return side_pass<true>(n, w, g, diag, pr, q_new, A, B, dmin, dmax_abs);
}
DSNOT_SWAP_CLONES double side_pass_plain(int64_t n, const double* w, const double* g, const double* diag,
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
    const double m = -2.0 * S.key[r], b = S.B[r];
    if (n > 0 && hm[n - 1] == m) {  // equal slopes: the lower intercept
      if (hb[n - 1] <= b) continue;
      --n;
    }
    // drop the last line if the new one meets the one before it no later than the last does
    while (n >= 2 && (b - hb[n - 2]) * (hm[n - 2] - hm[n - 1]) <= (hb[n - 1] - hb[n - 2]) * (hm[n - 2] - m)) --n;
    hm[n] = m;
    hb[n] = b;
    ++n;
  }
  return n;
}

struct Envelope {
  const double* hm;
  const double* hb;
  size_t n, h = 0;
  double at(double x) {  // x never decreases between calls
    if (n == 0) return kInf;
    while (h + 1 < n && hb[h + 1] + hm[h + 1] * x <= hb[h] + hm[h] * x) ++h;
    return hb[h] + hm[h] * x;
  }
};

// Lines of the envelope evaluated at every column (a min over all its lines, vectorised) up to
// this many; a longer envelope is walked in the a order of the kept columns.
constexpr size_t kEnvelopeLanes = 32;

// The bound pass, every column (contiguous, vectorised). Kept q: with prow (a swap (q*, r*) just
// applied), L_q <- min(L_q + dmin - slack, the new pair (q, q*) = pb - ((2 w_q) pw) prow_q - slack);
// then L_q <- max(L_q, the Cauchy-Schwarz bound cs_q - slack), cs_q = the envelope at a_q (nh >= 0
// lines hm, hb; or read from cs when given; none when nh < 0); LB_q = (A_q + L_q) - slack. Pruned
// columns: LB = +inf (their L is never read).
DSNOT_SWAP_CLONES void bound_pass(int64_t n, double* __restrict L, const double* __restrict A,
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

// Unstructured cycles; returns the swap count.
int32_t cycles_unstructured(const SwapProblem& P, SwapScratch& S, uint8_t* out, int64_t* pairs) {
  const int64_t cols = P.cols;
  const double* M = P.M;
  double* w = S.w.data();
  double* A = S.A.data();
  double* B = S.B.data();
  double* L = S.L.data();
  const uint8_t* pr = S.pruned.data();
  int64_t n_pruned = 0;
  double w_max = 0.0;
  for (int64_t j = 0; j < cols; ++j) {
    n_pruned += S.pruned[j];
    w_max = std::max(w_max, std::fabs(w[j]));
  }
  const int64_t n_kept = cols - n_pruned;
  if (n_pruned == 0 || n_kept == 0) return 0;
  const double c_max = ((2.0 * w_max) * w_max) * P.m_abs_max;  // every |cross term|
  const bool brute = P.search == 1;
  double scale = side_terms(P, S, -1, nullptr, nullptr) + c_max;
  // Far from overflow only (the bounds multiply two such magnitudes).
  const bool use_cs = !brute && std::isfinite(P.rho) && scale < 1e100;
  // The split bound: only with the plain one (both need a finite M), and far from overflow.
  const bool use_split = use_cs && P.split != nullptr && P.split->ok &&
                         ((2.0 * w_max) * w_max) * P.split->vmax2 < 1e100;
  // The cross-term part of the slack's scale; with the split, every |2 x_q x_r| too.
  const double c_all = c_max + (use_split ? ((2.0 * w_max) * w_max) * P.split->vmax2 : 0.0);
  scale += c_all - c_max;
  if (use_split) S.sp.init(*P.split, w, pr, cols);
  const KeyLess less{S.key.data()};
  if (use_cs) {
    S.ps.clear();
    S.ks.clear();
    for (int64_t j = 0; j < cols; ++j) {
      S.key[j] = std::fabs(w[j]) * P.z[j];
      (S.pruned[j] ? S.ps : S.ks).push_back(static_cast<int32_t>(j));
    }
    std::sort(S.ps.begin(), S.ps.end(), less);
    std::sort(S.ks.begin(), S.ks.end(), less);
  }
  for (int64_t j = 0; j < cols; ++j) L[j] = -kInf;
  int32_t swaps = 0;
  bool pending = false;  // a swap whose bound update is still to apply
  double dmin = 0.0, peps = 0.0, pb = 0.0, pw = 0.0;
  const double* prow = nullptr;
  for (int64_t cycle = 0; cycle < P.max_cycles; ++cycle) {
    double best = 0.0;  // only pairs with delta < 0 matter: a row stops when none is
    int64_t bq = -1, br = -1;
    auto scan = [&](int64_t q) {
      int64_t r = -1;
      const double e = row_min(A[q], 2.0 * w[q], w, B, M + q * cols, cols, &r);
      *pairs += n_pruned;
      if (!brute) L[q] = (e - A[q]) - kSlack * (scale + std::fabs(e));
      if (r >= 0 && (e < best || (e == best && bq >= 0 && q < bq))) { best = e; bq = q; br = r; }
    };
    if (brute) {
      for (int64_t q = 0; q < cols; ++q)
        if (!pr[q]) scan(q);
    } else {
      // One pass over every column: the last swap's bound update, the Cauchy-Schwarz bound (every
      // cycle: measured best; every 2nd or 4th cycle read 2-5x more pairs), lb; then the candidates.
      size_t nc = 0;
      std::pair<double, int64_t>* cand = S.cand.data();
      double* LB = S.lb.data();
      if (use_cs) {
        const size_t nh = build_envelope(S);
        const double* cs = nullptr;
        if (nh > kEnvelopeLanes || use_split) {  // walk the envelope in the a order of the kept q
          double* csw = S.cs.data();
          Envelope env{S.hm.data(), S.hb.data(), nh};
          for (const int32_t q : S.ks) csw[q] = env.at(S.key[q]);
          if (use_split) S.sp.bound(B, csw, S.sp_tmp.data());  // the larger of the two bounds
          cs = csw;
        }
        bound_pass(cols, L, A, w, S.key.data(), pr, pending ? prow : nullptr, pb, pw, dmin, peps, scale,
                   S.hm.data(), S.hb.data(), static_cast<int64_t>(nh), cs, LB);
      } else {
        bound_pass(cols, L, A, w, S.key.data(), pr, pending ? prow : nullptr, pb, pw, dmin, peps, scale,
                   nullptr, nullptr, -1, nullptr, LB);
      }
      for (int64_t q = 0; q < cols; ++q) {  // the candidates: lb < 0 (branch-free: about half are)
        cand[nc] = std::make_pair(LB[q], q);
        nc += LB[q] < 0.0;
      }
      if (pending) *pairs += n_kept;  // the (q, q*) pairs just read
      pending = false;
      // The lowest bound first (one scan gives an incumbent), then in order only those that can
      // still reach it.
      if (nc > 0) {
        auto lo = std::min_element(cand, cand + nc);
        std::iter_swap(cand, lo);
        scan(cand[0].second);
        const double cut = best;
        nc = std::partition(cand + 1, cand + nc, [cut](const auto& c) { return c.first <= cut; }) - cand;
        std::sort(cand + 1, cand + nc);
      }
      for (size_t t = 1; t < nc; ++t) {
        const auto& c = cand[t];
        if (c.first > best) break;
        scan(c.second);
      }
    }
    if (bq < 0) break;  // no pair lowers L = D M Dᵀ: a local optimum
    const double wq = w[bq], wr = w[br];
    update_g(P, S.g.data(), wq, wr, bq, br);
    out[bq] = 1;
    out[br] = 0;
    S.pruned[bq] = 1;
    S.pruned[br] = 0;
    ++swaps;
    if (brute) {
      scale = side_terms(P, S, -1, nullptr, nullptr) + c_max;
      continue;
    }
    if (use_cs) {
      move_between(S.ps, S.ks, static_cast<int32_t>(br), less);
      move_between(S.ks, S.ps, static_cast<int32_t>(bq), less);
    }
    if (use_split) S.sp.swap(static_cast<int32_t>(bq), static_cast<int32_t>(br));
    // New A and B, and how far B moved on the columns pruned before and after (every L_q moves by
    // at least the minimum); applied to the bounds at the next cycle's pass.
    double dmax_abs = 0.0;
    scale = std::max(scale, side_terms(P, S, bq, &dmin, &dmax_abs) + c_all);
    if (!(dmin < kInf)) dmin = 0.0;  // q* is the only pruned column now
    peps = kSlack * (scale + dmax_abs);
    prow = M + bq * cols;  // M[:, q*] = M[q*, :] (symmetric)
    pb = B[bq];
    pw = wq;
    pending = true;
    L[br] = -kInf;  // r* is kept now: bounded by Cauchy-Schwarz, or scanned
  }
  return swaps;
}

// N:M cycles: pairs within a group only, all of them each cycle (O(cols * M)).
int32_t cycles_nm(const SwapProblem& P, SwapScratch& S, uint8_t* out, int64_t* pairs) {
  const int64_t cols = P.cols, m = P.prune_m;
  const double* M = P.M;
  const double* w = S.w.data();
  const double* A = S.A.data();
  const double* B = S.B.data();
  int32_t swaps = 0;
  side_terms(P, S, -1, nullptr, nullptr);
  for (int64_t cycle = 0; cycle < P.max_cycles; ++cycle) {
    double best = kInf;
    int64_t bq = -1, br = -1;
    for (int64_t q = 0; q < cols; ++q) {
      if (S.pruned[q]) continue;
      const double a = A[q], tq = 2.0 * w[q];
      const int64_t start = q - q % m;
      for (int64_t r = start; r < start + m; ++r) {
        if (!S.pruned[r]) continue;
        const double d = (a - (tq * w[r]) * M[q * cols + r]) + B[r];
        ++*pairs;
        if (d < best) { best = d; bq = q; br = r; }
      }
    }
    if (!(best < 0.0)) break;
    update_g(P, S.g.data(), w[bq], w[br], bq, br);
    out[bq] = 1;
    out[br] = 0;
    S.pruned[bq] = 1;
    S.pruned[br] = 0;
    ++swaps;
    side_terms(P, S, -1, nullptr, nullptr);
  }
  return swaps;
}

template <typename scalar_t>
void swap_row(const SwapProblem& P, int64_t i, SwapScratch& S) {
  const int64_t cols = P.cols;
  const scalar_t* wrow = static_cast<const scalar_t*>(P.weight) + i * cols;
  const uint8_t* init = P.init_mask + i * cols;
  uint8_t* out = P.mask_out + i * cols;
  std::memcpy(out, init, static_cast<size_t>(cols));
  std::memcpy(S.g.data(), P.g0 + i * cols, sizeof(double) * static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) {
    S.w[j] = static_cast<double>(static_cast<float>(wrow[j]));
    S.pruned[j] = init[j] != 0;
  }
  int64_t pairs = 0;
  P.swaps_out[i] = P.prune_m > 0 ? cycles_nm(P, S, out, &pairs) : cycles_unstructured(P, S, out, &pairs);
  P.pairs_out[i] = pairs;
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
  TORCH_CHECK(search >= 0 && search <= 3,
              "refine_mask_swap (cpu): search must be 0 (bounded), 1 (full scan), 2 (bounded without the "
              "low-rank split bound) or 3 (bounded, the split bound at every width), got ", search);

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
  const bool want_split = search == 3 || (search == 0 && cols >= split::kMinCols);
  if (prune_m == 0 && want_split && P.rho < kInf && max_cycle_time > 0) {
    sc = split::constants(M, cols);
    P.split = &sc;
  }
  at::parallel_for(0, rows, 1, [&](int64_t b, int64_t e) {
    SwapScratch S(P);
    for (int64_t i = b; i < e; ++i) {
      if (wt == at::kFloat) swap_row<float>(P, i, S);
      else if (wt == at::kHalf) swap_row<at::Half>(P, i, S);
      else swap_row<at::BFloat16>(P, i, S);
    }
  });
  return {mask, swaps, pairs};
}

}  // namespace cpu
}  // namespace dsnot

TORCH_LIBRARY_IMPL(dsnot_kernels, CPU, m) {
  m.impl("refine_mask_swap", &dsnot::cpu::refine_mask_swap_cpu);
}
