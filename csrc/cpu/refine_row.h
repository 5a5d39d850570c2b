// One row of DSnoT on the CPU (spec §2-§3, docs/KERNEL_CONTRACT.md). Rows are independent; the
// caller runs them in parallel with one RowScratch per thread (no allocation per row).
//
// Passes over the row (all linear, no full sort):
//   1. widen w, dm = w * sum_metric_row, ord(metric) (+ its radix histogram), ord(wanda);
//   2. the initial mask: radix select of the k-th composite key (unstructured), per-group ranks
//      (N:M) or the caller's mask;
//   3. write the mask, the 256-lane error sum, and filter the four candidate orders (growth hi/lo,
//      prune plo/phi) keeping only the max_cycle_time smallest keys of each;
//   4. the swap loop of the contract (objective 0 "dsnot" or 1 "mse").
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "dsnot_common.h"
#include "select.h"

namespace dsnot {
namespace cpu {

// Everything a row needs; pointers are to contiguous CPU buffers (see refine_mask_cpu.cpp).
struct Problem {
  int64_t rows = 0, cols = 0;
  const void* weight = nullptr;       // (rows, cols) scalar_t
  const float* dmul = nullptr;        // sum_metric_row (cols,)
  const float* var = nullptr;         // (cols,)
  const float* varp = nullptr;        // var ** p (cols,), only for key_mode 2
  const float* sqrt_scaler = nullptr; // sqrtf(scaler_row) (cols,)
  const float* metric = nullptr;      // initial_metric (rows, cols) or null (= wanda)
  const uint8_t* init_mask = nullptr; // initial_mask (rows, cols) or null
  const float* mean = nullptr;        // (cols,), objective 1 only
  int64_t k = 0;                      // unstructured pruned count int(cols * sparsity)
  int prune_n = 0, prune_m = 0;
  int64_t max_cycles = 0;
  float thr = 0.f;                    // update_threshold rounded to float32
  int key_mode = 1;                   // 0: p == 0, 1: p == 1, 2: general p (growth_key)
  bool same_sign = false;
  int objective = 0;
  uint8_t* mask_out = nullptr;        // (rows, cols) bool storage
  int32_t* swaps_out = nullptr;       // (rows,)
};

enum List { kHi = 0, kLo = 1, kPlo = 2, kPhi = 3, kNone = 4 };

struct RowScratch {
  std::vector<float> w, dm;
  std::vector<uint32_t> mord, word, hist, hist2;
  std::vector<uint8_t> pruned0;
  std::vector<uint64_t> cand, lists;
  TopList top[4];
  int64_t keep = 0, cap = 0;

  explicit RowScratch(const Problem& p) {
    const int64_t c = p.cols;
    w.resize(c); dm.resize(c); mord.resize(c);
    if (p.metric != nullptr) word.resize(c);
    hist.resize(kHistBins); hist2.resize(kHist2Bins);
    pruned0.resize(c);
    cand.resize(std::max<int64_t>(c, p.prune_m));
    keep = std::min<int64_t>(p.max_cycles, c);
    // A list holds at most cols keys, so cap = cols + 1 never refills (large max_cycle_time).
    cap = std::min<int64_t>(2 * keep + 128, c + 1);
    lists.resize(4 * static_cast<size_t>(std::max<int64_t>(cap, 1)));
  }
};

// Lane partial sums of the contract's fixed summation order, then the pairwise tree.
template <typename T>
inline T lane_tree(T* part) {
  for (int n = kSumLanes; n > 1; n >>= 1)
    for (int l = 0; l < n / 2; ++l) part[l] = part[2 * l] + part[2 * l + 1];
  return part[0];
}

template <typename scalar_t>
void refine_row(const Problem& P, int64_t i, RowScratch& S) {
  const int64_t cols = P.cols;
  const bool nm = P.prune_n > 0;
  const bool refine = P.max_cycles > 0;
  const scalar_t* wrow = static_cast<const scalar_t*>(P.weight) + i * cols;
  const float* mrow = P.metric != nullptr ? P.metric + i * cols : nullptr;
  uint8_t* out = P.mask_out + i * cols;
  float* w = S.w.data();
  float* dm = S.dm.data();
  uint32_t* mord = S.mord.data();
  const bool need_hist = !nm && P.init_mask == nullptr;
  const bool need_word = refine && !nm && mrow != nullptr;

  // Pass 1 (spec §2, contract "Per-element quantities").
  uint32_t* hist = S.hist.data();
  if (need_hist) std::fill(hist, hist + kHistBins, 0u);
  for (int64_t j = 0; j < cols; ++j) {
    const float wj = static_cast<float>(wrow[j]);
    w[j] = wj;
    dm[j] = wj * P.dmul[j];
    const float wanda = std::fabs(wj) * P.sqrt_scaler[j];
    const uint32_t o = ord_key(mrow != nullptr ? mrow[j] : wanda);
    mord[j] = o;
    if (need_hist) hist[o >> kHistShift]++;
    if (need_word) S.word[j] = ord_key(wanda);
  }
  const uint32_t* word = need_word ? S.word.data() : mord;

  // Pass 2: the initial mask as a predicate.
  const uint8_t* p0 = nullptr;          // explicit per-column flags (mask given or N:M)
  uint64_t kth_excl = 0;                // unstructured: pruned iff (mord, j) < kth_excl
  if (P.init_mask != nullptr) {
    p0 = P.init_mask + i * cols;
  } else if (nm) {
    nm_select(mord, cols, P.prune_n, P.prune_m, S.pruned0.data(), S.cand.data());
    p0 = S.pruned0.data();
  } else if (P.k > 0) {
    kth_excl = kth_composite(mord, cols, P.k, hist, S.cand.data(), S.hist2.data()) + 1;
  }

  if (!refine) {
    for (int64_t j = 0; j < cols; ++j)
      out[j] = p0 != nullptr ? p0[j] : static_cast<uint8_t>(pack(mord[j], static_cast<uint32_t>(j)) < kth_excl);
    P.swaps_out[i] = 0;
    return;
  }

  // Pass 3: mask, error lanes, candidate filters (contract "Orders" and "fixed summation order").
  TopList* top = S.top;
  for (int l = 0; l < 4; ++l) top[l].reset(S.lists.data() + l * S.cap, S.keep, S.cap);
  uint64_t thr[5] = {~0ull, ~0ull, ~0ull, ~0ull, 0ull};  // kNone never passes
  if (nm) thr[kPlo] = thr[kPhi] = 0ull;                    // N:M picks q per group instead
  alignas(64) float part[kSumLanes];
  alignas(64) double epart[kSumLanes];
  for (int l = 0; l < kSumLanes; ++l) { part[l] = 0.0f; epart[l] = 0.0; }
  const bool mse = P.objective == 1;
  for (int64_t j = 0; j < cols; ++j) {
    const uint32_t col = static_cast<uint32_t>(j);
    const bool p = p0 != nullptr ? p0[j] != 0 : pack(mord[j], col) < kth_excl;
    out[j] = p;
    const float d = dm[j];
    part[j & (kSumLanes - 1)] += p ? d : 0.0f;
    if (mse) epart[j & (kSumLanes - 1)] += p ? mse_a(w[j], P.mean[j]) : 0.0;
    const float key = growth_key(d, P.var[j], P.key_mode == 2 ? P.varp[j] : 0.0f, P.key_mode);
    const uint32_t ko = ord_key(key == key ? key : 0.0f);  // NaN keys are no candidates anyway
    const int gcls = key > 0.0f ? kHi : (key < 0.0f ? kLo : kNone);
    const int pcls = d < 0.0f ? kPlo : (d > 0.0f ? kPhi : kNone);
    const int cls = p ? gcls : pcls;
    // hi is descending in (key, col): ascending in the complement of the composite key.
    const uint64_t ck = cls == kHi ? ~pack(ko, col) : pack(p ? ko : word[j], col);
    if (ck < thr[cls]) {
      top[cls].push(ck);
      thr[cls] = top[cls].thr;
    }
  }
  float err = lane_tree(part);
  double e = mse ? lane_tree(epart) : 0.0;

  // Pass 4: the swap loop (contract "The swap loop" / "Objective 1").
  const int sign0 = sign_of(err);
  const uint8_t* init = p0;  // N:M: initially pruned flags (p0 is always set for N:M)
  int32_t swaps = 0;
  for (int64_t cycle = 0; cycle < P.max_cycles; ++cycle) {
    if (!(std::fabs(err) > P.thr)) break;
    uint64_t rk;
    int64_t r;
    if (err > 0.0f) {
      if (!top[kHi].next(&rk)) break;
      r = key_column(~rk);
    } else {
      if (!top[kLo].next(&rk)) break;
      r = key_column(rk);
    }
    int64_t q = -1;
    if (nm) {
      const int64_t start = r - r % P.prune_m;
      uint32_t best = ord_key(INFINITY);  // metric < +inf only
      for (int64_t c = start; c < start + P.prune_m; ++c) {
        if (init[c] == 0 && out[c] == 0 && mord[c] < best) { best = mord[c]; q = c; }
      }
      if (q < 0) {
        if (mse) continue;  // pair rejected, r consumed, the row goes on
        break;
      }
    } else {
      uint64_t qk;
      if (!top[err < 0.0f ? kPhi : kPlo].next(&qk)) break;
      q = key_column(qk);
    }
    const float after = error_after(err, dm[q], dm[r]);
    if (!mse) {
      if (!dsnot_accept(after, sign0, P.same_sign)) break;
    } else {
      double t;
      const double delta = mse_delta(e, mse_a(w[q], P.mean[q]), mse_a(w[r], P.mean[r]),
                                     mse_b(w[q], P.var[q]), mse_b(w[r], P.var[r]), &t);
      if (!(delta < 0.0)) continue;
      e = t;
    }
    out[q] = 1;
    out[r] = 0;
    err = after;
    ++swaps;
  }
  P.swaps_out[i] = swaps;
}

}  // namespace cpu
}  // namespace dsnot
