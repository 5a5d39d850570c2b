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
#include <cstring>
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
  const float* divisor = nullptr;     // growth-key divisor (cols,): var, var ** p, or 1 for p == 0
  const float* sqrt_scaler = nullptr; // sqrtf(scaler_row) (cols,)
  const float* metric = nullptr;      // initial_metric (rows, cols) or null (= wanda)
  const uint8_t* init_mask = nullptr; // initial_mask (rows, cols) or null
  const float* mean = nullptr;        // (cols,), objective 1 only
  int64_t k = 0;                      // unstructured pruned count int(cols * sparsity)
  int prune_n = 0, prune_m = 0;
  int64_t max_cycles = 0;
  float thr = 0.f;                    // update_threshold rounded to float32
  bool same_sign = false;
  int objective = 0;
  uint8_t* mask_out = nullptr;        // (rows, cols) bool storage
  int32_t* swaps_out = nullptr;       // (rows,)
};

enum List { kHi = 0, kLo = 1, kPlo = 2, kPhi = 3, kNone = 4 };

struct RowScratch {
  std::vector<float> w, dm;
  std::vector<uint32_t> mord, word, hist, hist2, cls, ukey;
  std::vector<uint8_t> pruned0;
  std::vector<uint64_t> cand;
  std::vector<uint32_t> hist_lists;  // 5 * kListBins counters (uint16 or uint32)
  CandList top[4];
  int64_t keep = 0;

  explicit RowScratch(const Problem& p) {
    const int64_t c = p.cols;
    w.resize(c); dm.resize(c); mord.resize(c);
    if (p.metric != nullptr) word.resize(c);
    hist.resize(kHistBins); hist2.resize(kHist2Bins);
    pruned0.resize(c); cls.resize(c); ukey.resize(c);
    cand.resize(std::max<int64_t>(c, p.prune_m));
    keep = std::min<int64_t>(p.max_cycles, c);
    hist_lists.resize(5 * kListBins);
  }
};

// ord_key without a branch (vectorises): x + 0.0f maps -0.0 to +0.0, NaN gives some value.
inline uint32_t ord_bits(float x) {
  const uint32_t u = float_bits(x + 0.0f);
  return u ^ (static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u);
}

// x if flag else +0.0, by masking the bits: no branch, and x * 0 would turn inf into NaN.
inline float keep_if(float x, uint8_t flag) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  u &= 0u - static_cast<uint32_t>(flag != 0);
  float r;
  std::memcpy(&r, &u, sizeof(r));
  return r;
}
inline double keep_if(double x, uint8_t flag) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof(u));
  u &= 0ull - static_cast<uint64_t>(flag != 0);
  double r;
  std::memcpy(&r, &u, sizeof(r));
  return r;
}

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
  const bool need_word = refine && !nm && mrow != nullptr;

  // Pass 1 (spec §2, contract "Per-element quantities"): branch-free so that it vectorises.
  uint32_t* word = need_word ? S.word.data() : mord;
  for (int64_t j = 0; j < cols; ++j) {
    const float wj = static_cast<float>(wrow[j]);
    w[j] = wj;
    dm[j] = wj * P.dmul[j];
  }
  if (mrow == nullptr) {
    for (int64_t j = 0; j < cols; ++j) mord[j] = ord_bits(std::fabs(w[j]) * P.sqrt_scaler[j]);
  } else {
    for (int64_t j = 0; j < cols; ++j) mord[j] = ord_bits(mrow[j]);
    if (need_word)
      for (int64_t j = 0; j < cols; ++j) word[j] = ord_bits(std::fabs(w[j]) * P.sqrt_scaler[j]);
  }

  // Pass 2: the initial mask as a predicate.
  const uint8_t* p0 = nullptr;          // explicit per-column flags (mask given or N:M)
  uint32_t kth_ord = 0, kth_col = 0;    // unstructured: pruned iff (mord, j) <= (kth_ord, kth_col)
  bool any = false;
  if (P.init_mask != nullptr) {
    p0 = P.init_mask + i * cols;
  } else if (nm) {
    nm_select(mord, cols, P.prune_n, P.prune_m, S.pruned0.data(), S.cand.data());
    p0 = S.pruned0.data();
  } else if (P.k > 0) {
    uint32_t* hist = S.hist.data();
    std::fill(hist, hist + kHistBins, 0u);
    for (int64_t j = 0; j < cols; ++j) hist[mord[j] >> kHistShift]++;
    const uint64_t kth = kth_composite(mord, cols, P.k, hist, S.cand.data(), S.hist2.data());
    kth_ord = static_cast<uint32_t>(kth >> 32);
    kth_col = static_cast<uint32_t>(kth);
    any = true;
  }
  uint8_t* flags = S.pruned0.data();
  if (p0 == nullptr) {  // materialise the unstructured predicate (vectorises)
    for (int64_t j = 0; j < cols; ++j) {
      const uint32_t o = mord[j];
      flags[j] = any & ((o < kth_ord) | ((o == kth_ord) & (static_cast<uint32_t>(j) <= kth_col)));
    }
    p0 = flags;
  }

  if (!refine) {
    std::memcpy(out, p0, static_cast<size_t>(cols));
    P.swaps_out[i] = 0;
    return;
  }
  std::memcpy(out, p0, static_cast<size_t>(cols));

  // Pass 3a: the error lanes (contract "fixed summation order"), lane l takes j = l + 256 t.
  alignas(64) float part[kSumLanes];
  alignas(64) double epart[kSumLanes];
  for (int l = 0; l < kSumLanes; ++l) part[l] = 0.0f;
  const bool mse = P.objective == 1;
  for (int64_t base = 0; base < cols; base += kSumLanes) {
    const int n = static_cast<int>(std::min<int64_t>(kSumLanes, cols - base));
    const float* d = dm + base;
    const uint8_t* f = p0 + base;
    for (int l = 0; l < n; ++l) part[l] += keep_if(d[l], f[l]);
  }
  if (mse) {
    for (int l = 0; l < kSumLanes; ++l) epart[l] = 0.0;
    for (int64_t base = 0; base < cols; base += kSumLanes) {
      const int n = static_cast<int>(std::min<int64_t>(kSumLanes, cols - base));
      for (int l = 0; l < n; ++l)
        epart[l] += keep_if(mse_a(w[base + l], P.mean[base + l]), p0[base + l]);
    }
  }

  // Pass 3b: each column's candidate list and 32-bit ascending key (contract "Orders"), branch-free.
  // hi is descending in (key, col), i.e. ascending in the complement of the composite key.
  uint32_t* cls = S.cls.data();
  uint32_t* ukey = S.ukey.data();
  for (int64_t j = 0; j < cols; ++j) {
    const float d = dm[j];
    const float key = d / P.divisor[j];  // growth_key: divisor is var, var ** p or 1 (p == 0)
    const uint32_t ko = ord_bits(key);
    const uint32_t m = 0u - static_cast<uint32_t>(p0[j] != 0);   // all ones if pruned
    const uint32_t kgt = key > 0.0f, klt = key < 0.0f;            // NaN: neither
    const uint32_t dlt = d < 0.0f, dgt = d > 0.0f;
    const uint32_t gcls = kNone - (kNone - kHi) * kgt - (kNone - kLo) * klt;
    const uint32_t pcls = kNone - (kNone - kPlo) * dlt - (kNone - kPhi) * dgt;
    cls[j] = (gcls & m) | (pcls & ~m);
    ukey[j] = ((ko ^ (0u - kgt)) & m) | (word[j] & ~m);
  }
  // Pass 3c: the candidate lists, each cut to (a prefix holding) its max_cycle_time smallest keys.
  CandList* top = S.top;
  const int nlists = nm ? 2 : 4;  // N:M picks q per group instead of plo/phi
  if (cols < 65536)
    build_lists(cls, ukey, cols, S.keep, nlists, reinterpret_cast<uint16_t*>(S.hist_lists.data()), S.cand.data(), top);
  else
    build_lists(cls, ukey, cols, S.keep, nlists, S.hist_lists.data(), S.cand.data(), top);
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
