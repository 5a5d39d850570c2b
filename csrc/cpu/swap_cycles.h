// The cycles of one row of the "swap" CPU kernel (refine_swap_cpu.cpp, which alone includes this
// file): the bounded exact search of unstructured masks (and its full-scan mode, search 1), and
// the N:M search. The search itself is described at the top of refine_swap_cpu.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>

#include "cpu/lower_envelope.h"
#include "cpu/swap_passes.h"
#include "cpu/swap_state.h"

namespace dsnot {
namespace cpu {
namespace {

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

}  // namespace
}  // namespace cpu
}  // namespace dsnot
