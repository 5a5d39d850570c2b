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
#include "cpu/swap_scan32.h"
#include "cpu/swap_state.h"

namespace dsnot {
namespace cpu {
namespace {

// One row's unstructured search, in steps: setup(), then per cycle begin() (the bound pass and the
// candidates; with search 1 the full scan), the scans, and finish() (the swap and the bookkeeping).
// The single-row driver (cycles_unstructured) scans in increasing lb order (scan_in_order); the
// row-block driver (swap_row_block.h) scans candidates chosen with other rows' so that rows share
// the rows of M read. Any order returns the same pair: a q is skipped only when its bound exceeds
// the best delta found, which is never below the final best; ties go to the lowest q (then r).
struct RowSearch {
  const SwapProblem* P = nullptr;
  SwapScratch* S = nullptr;
  uint8_t* out = nullptr;
  int64_t* pairs = nullptr;
  int64_t n_pruned = 0, n_kept = 0, cycle = 0;
  double c_max = 0.0, c_all = 0.0, scale = 0.0;
  bool brute = false, use_cs = false, use_split = false, use_blk = false, use_f32 = false;
  double w_max = 0.0;
  bool pending = false;  // a swap whose bound update is still to apply
  double dmin = 0.0, peps = 0.0, pb = 0.0, pw = 0.0;
  const double* prow = nullptr;
  int32_t swaps = 0;
  // this cycle: the best pair so far (only delta < 0 matters), and the candidates (lb < 0, q)
  double best = 0.0;
  int64_t bq = -1, br = -1;
  size_t nc = 0;

  // False when the row has nothing to search (no pruned or no kept column).
  bool setup(const SwapProblem& Pr, SwapScratch& Sc, uint8_t* o, int64_t* pa) {
    P = &Pr; S = &Sc; out = o; pairs = pa;
    const int64_t cols = P->cols;
    const double* w = S->w.data();
    w_max = 0.0;
    n_pruned = 0;
    for (int64_t j = 0; j < cols; ++j) {
      n_pruned += S->pruned[j];
      w_max = std::max(w_max, std::fabs(w[j]));
    }
    n_kept = cols - n_pruned;
    if (n_pruned == 0 || n_kept == 0) return false;
    c_max = ((2.0 * w_max) * w_max) * P->m_abs_max;  // every |cross term|
    brute = P->search == 1;
    scale = side_terms(*P, *S, -1, nullptr, nullptr) + c_max;
    // Far from overflow only (the bounds multiply two such magnitudes).
    use_cs = !brute && std::isfinite(P->rho) && scale < 1e100;
    // The split bound: only with the plain one (both need a finite M), and far from overflow.
    use_split = use_cs && P->split != nullptr && P->split->ok && ((2.0 * w_max) * w_max) * P->split->vmax2 < 1e100;
    // The cross-term part of the slack's scale; with the split, every |2 x_q x_r| too.
    c_all = c_max + (use_split ? ((2.0 * w_max) * w_max) * P->split->vmax2 : 0.0);
    scale += c_all - c_max;
    if (use_split) S->sp.init(*P->split, w, S->pruned.data(), cols);
    use_blk = use_split && P->block_scan && block_scan_fits(cols);
    if (use_blk) S->blk.init(S->sp.x.data(), S->sp.b.data(), cols);
    if (use_cs) {
      const KeyLess less{S->key.data()};
      S->ps.clear();
      S->ks.clear();
      for (int64_t j = 0; j < cols; ++j) {
        S->key[j] = std::fabs(w[j]) * P->z[j];
        (S->pruned[j] ? S->ps : S->ks).push_back(static_cast<int32_t>(j));
      }
      std::sort(S->ps.begin(), S->ps.end(), less);
      std::sort(S->ks.begin(), S->ks.end(), less);
    }
    for (int64_t j = 0; j < cols; ++j) S->L[j] = -kInf;
    // The float32 scans (swap_scan32.h): the bounded search only, far from float32's overflow
    // (scan() checks the scale, which only grows, again).
    use_f32 = !brute && !use_blk && P->M32 != nullptr && c_max < kScan32Max && P->m_abs_max < kScan32Max;
    if (use_f32)
      for (int64_t j = 0; j < cols; ++j) S->w32[j] = static_cast<float>(w[j]);
    return true;
  }

  // The exact scan of row q of the pair matrix (one row of M); tightens L_q; marks q scanned
  // (lb = +inf: never proposed or scanned again this cycle).
  void scan(int64_t q) {
    if (use_blk) return scan_blocks(q);
    const double* A = S->A.data();
    int64_t r = -1;
    const double tq = 2.0 * S->w[q];
    const double* Mq = P->M + q * P->cols;
    const double e = use_f32 && scale < kScan32Max
        ? row_min32(A[q], tq, S->w.data(), S->B.data(), Mq, S->w32.data(), S->B32.data(), P->M32 + q * P->cols,
                    P->cols, scan32_tiny(A[q], scale, tq, w_max, P->row_abs[q]), S->d32.data(), &r)
        : row_min(A[q], tq, S->w.data(), S->B.data(), Mq, P->cols, &r);
    *pairs += n_pruned;
    if (!brute) S->L[q] = (e - A[q]) - kSlack * (scale + std::fabs(e));
    S->lb[q] = kInf;
    offer(e, q, r);
  }

  // Block b of row q, exactly (swap_block_scan.h): the least delta over its pruned r (the first r
  // reaching it into *r_out; +inf and -1 if none) and W_qb = the least -2 w_q w_r R_qr over its
  // other columns, stored rounded down.
  double scan_block(int64_t q, int64_t b, int64_t* r_out) {
    const double* B = S->B.data();
    const double* w = S->w.data();
    const double* v = P->split->v.data();
    const uint8_t* pr = S->pruned.data();
    const int64_t cols = P->cols, j0 = b * kBlockCols, j1 = std::min(cols, j0 + kBlockCols);
    const double aq = S->A[q], tq = 2.0 * w[q], vq = v[q];
    const double* Mq = P->M + q * cols;
    double e = kInf, wm = kInf;
    int64_t r = -1, cnt = 0;
    if (j1 - j0 == kBlockCols) {
      e = block_min16(aq, tq, vq, w, B, Mq, v, j0, q, &r, &wm);
      uint64_t p0, p1;  // pruned flags are 0 / 1 bytes: their sum
      std::memcpy(&p0, pr + j0, 8);
      std::memcpy(&p1, pr + j0 + 8, 8);
      cnt = static_cast<int64_t>(((p0 + p1) * 0x0101010101010101ULL) >> 56);
    } else {
      for (int64_t j = j0; j < j1; ++j) {  // the last, shorter block
        const double c = Mq[j];
        if (j != q) {
          const double wv = -((tq * w[j]) * (c - vq * v[j]));
          wm = wv < wm ? wv : wm;
        }
        if (pr[j]) {
          ++cnt;
          const double d = (aq - (tq * w[j]) * c) + B[j];
          if (d < e) { e = d; r = j; }
        }
      }
    }
    S->blk.W[static_cast<size_t>(q * S->blk.nbp + b)] = float_down(wm);
    *pairs += cnt;
    *r_out = r;
    return e;
  }
  // The pair (q, r) with delta e as the best so far: ties to the lowest q, then the lowest r.
  void offer(double e, int64_t q, int64_t r) {
    if (r >= 0 && (e < best || (e == best && bq >= 0 && (q < bq || (q == bq && r < br))))) { best = e; bq = q; br = r; }
  }
  // Row q by blocks (swap_block_scan.h): the bounds of its blocks (the exact rank-1 part of this
  // cycle plus the stored W_qb; no M read), then the exact scans of the blocks whose bound can reach
  // the best delta found (which also store their exact W_qb). L_q = the least of the skipped
  // blocks' bounds and the scanned blocks' minima; q is marked scanned (lb = +inf).
  void scan_blocks(int64_t q) {
    BlockScanRow& K = S->blk;
    const double aq = S->A[q];
    float* Wq = K.w_row(q, 2.0 * S->sp.b[q]);
    double lmin = kInf;
    float* Dq = K.D.data() + q * K.nbp;
    const double* Mq = P->M + q * P->cols;
    const size_t n = block_bounds(K.Bt.data(), K.xt.data(), Wq, Dq, K.cum.data(), K.ng, 2.0 * S->sp.x[q], aq, scale,
                                  kSlack, best, Mq, P->cols, K.todo.data(), K.todo_bnd.data(), &lmin);
    const double* tb = K.todo_bnd.data();
    for (size_t t = 0; t < n; ++t) {
      if (t + kPrefetchAhead < n) {
        const int64_t jp = static_cast<int64_t>(K.todo[t + kPrefetchAhead]) * kBlockCols;
        __builtin_prefetch(Mq + jp);
        __builtin_prefetch(Mq + std::min(P->cols - 1, jp + kBlockCols - 1));
      }
      const double bnd = tb[t];
      if ((aq + bnd) - kSlack * (scale + std::fabs(bnd)) > best) {  // the best found since rules it out
        lmin = bnd < lmin ? bnd : lmin;
        continue;
      }
      int64_t r = -1;
      const int32_t b = K.todo[t];
      const double e = scan_block(q, b, &r);
      if (r < 0) {  // no pruned column in the block: +inf until one joins (after_swap)
        Dq[b] = std::numeric_limits<float>::infinity();
        continue;
      }
      const double le = (e - aq) - kSlack * (scale + std::fabs(e));
      Dq[b] = float_down((le - K.cum[b]) - kSlack * (scale + std::fabs(K.cum[b]) + std::fabs(le)));
      lmin = le < lmin ? le : lmin;
      offer(e, q, r);
    }
    S->L[q] = lmin;
    S->lb[q] = kInf;
  }

  // Starts a cycle: false when the cycle cap is reached. Bounded search: the bound pass (the last
  // swap's bound update, the Cauchy-Schwarz bound, lb) and the candidates S->cand[0, nc) (lb < 0,
  // in column order). Full scan (search 1): every kept q, scanned here.
  bool begin() {
    if (cycle >= P->max_cycles) return false;
    best = 0.0;
    bq = br = -1;
    nc = 0;
    const int64_t cols = P->cols;
    const uint8_t* pr = S->pruned.data();
    if (brute) {
      for (int64_t q = 0; q < cols; ++q)
        if (!pr[q]) scan(q);
      return true;
    }
    double* L = S->L.data();
    const double* A = S->A.data();
    const double* w = S->w.data();
    double* LB = S->lb.data();
    if (use_blk) S->blk.load_B(S->B.data());
    if (use_f32) {
      const double* B = S->B.data();
      float* B32 = S->B32.data();
      for (int64_t j = 0; j < cols; ++j) B32[j] = static_cast<float>(B[j]);
    }
    if (use_cs) {
      const size_t nh = build_envelope(*S);
      const double* cs = nullptr;
      if (nh > kEnvelopeLanes || use_split) {  // walk the envelope in the a order of the kept q
        double* csw = S->cs.data();
        Envelope env{S->hm.data(), S->hb.data(), nh};
        for (const int32_t q : S->ks) csw[q] = env.at(S->key[q]);
        if (use_split) S->sp.bound(S->B.data(), csw, S->sp_tmp.data());  // the larger of the two bounds
        cs = csw;
      }
      bound_pass(cols, L, A, w, S->key.data(), pr, pending ? prow : nullptr, pb, pw, dmin, peps, scale,
                 S->hm.data(), S->hb.data(), static_cast<int64_t>(nh), cs, LB);
    } else {
      bound_pass(cols, L, A, w, S->key.data(), pr, pending ? prow : nullptr, pb, pw, dmin, peps, scale, nullptr,
                 nullptr, -1, nullptr, LB);
    }
    std::pair<double, int64_t>* cand = S->cand.data();
    for (int64_t q = 0; q < cols; ++q) {  // the candidates: lb < 0 (branch-free: about half are)
      cand[nc] = std::make_pair(LB[q], q);
      nc += LB[q] < 0.0;
    }
    if (pending) *pairs += n_kept;  // the (q, q*) pairs just read
    pending = false;
    return true;
  }

  // The single row's order: the lowest bound first (one scan gives an incumbent), then in
  // increasing lb only those that can still reach it.
  void scan_in_order() {
    std::pair<double, int64_t>* cand = S->cand.data();
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

  // Ends the cycle: false at a local optimum (no pair lowers the objective: the row is done);
  // otherwise applies the best swap and the bookkeeping the next begin() uses.
  bool finish() {
    if (bq < 0) return false;
    const double wq = S->w[bq], wr = S->w[br];
    update_g(*P, S->g.data(), wq, wr, bq, br);
    if (use_blk) std::copy(S->B.begin(), S->B.end(), S->blk.Bprev.begin());
    out[bq] = 1;
    out[br] = 0;
    S->pruned[bq] = 1;
    S->pruned[br] = 0;
    ++swaps;
    ++cycle;
    if (brute) {
      scale = side_terms(*P, *S, -1, nullptr, nullptr) + c_max;
      return true;
    }
    if (use_cs) {
      const KeyLess less{S->key.data()};
      move_between(S->ps, S->ks, static_cast<int32_t>(br), less);
      move_between(S->ks, S->ps, static_cast<int32_t>(bq), less);
    }
    if (use_split) S->sp.swap(static_cast<int32_t>(bq), static_cast<int32_t>(br));
    // New A and B, and how far B moved on the columns pruned before and after (every L_q moves by
    // at least the minimum); applied to the bounds at the next cycle's pass.
    double dmax_abs = 0.0;
    scale = std::max(scale, side_terms(*P, *S, bq, &dmin, &dmax_abs) + c_all);
    if (!(dmin < kInf)) dmin = 0.0;  // q* is the only pruned column now
    peps = kSlack * (scale + dmax_abs);
    prow = P->M + bq * P->cols;  // M[:, q*] = M[q*, :] (symmetric)
    pb = S->B[bq];
    pw = wq;
    pending = true;
    S->L[br] = -kInf;  // r* is kept now: bounded by Cauchy-Schwarz, or scanned
    if (use_blk) {  // the block scans' drift bounds (the new pairs (q, q*): q*'s row of M, as bound_pass)
      double* pair = S->sp_tmp.data();
      const double* w = S->w.data();
      for (int64_t j = 0; j < P->cols; ++j) {
        const double v = pb - ((2.0 * w[j]) * pw) * prow[j];
        pair[j] = v - kSlack * (scale + std::fabs(v));
      }
      S->blk.after_swap(S->B.data(), S->pruned.data(), bq, pair, scale, kSlack);
      if (S->blk.inited[br]) S->blk.reset_drift(br);
    }
    return true;
  }
};

// Unstructured cycles of one row, alone; returns the swap count.
int32_t cycles_unstructured(const SwapProblem& P, SwapScratch& S, uint8_t* out, int64_t* pairs) {
  RowSearch R;
  if (!R.setup(P, S, out, pairs)) return 0;
  while (R.begin()) {
    if (!R.brute) R.scan_in_order();
    if (!R.finish()) break;
  }
  return R.swaps;
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
