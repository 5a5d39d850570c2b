// One row of DSnoT on the CPU (spec §2-§3, docs/KERNEL_CONTRACT.md). Rows are independent; the
// caller runs them in parallel with one RowScratch per thread (no allocation per row).
//
// Passes over the row (all linear, no full sort; each loop is branch-free and vectorises unless
// noted):
//   1. widen w, dm = w * sum_metric_row, ord(metric), ord(wanda) (contract "Per-element");
//   2. the initial mask (spec §2): radix select of the k-th composite key (select.h, unstructured),
//      per-group ranks (N:M) or the caller's mask;
//   3. the 256-lane error sum, each column's candidate list and key, flags of the keys below each
//      list's cut-off, then a sparse scan that copies the flagged keys (lists.h);
//   4. the swap loop of the contract (objective 0 "dsnot" or 1 "mse"), reading the lists lazily.
// Pass 3 also prefetches the next row's weights into L2 when the caller says that this thread runs
// it next (pass 1 of that row then reads L2, not memory). N:M rows have a pass 3 of their own:
// only pruned columns are growth candidates and q is chosen per group, so two lists, not four.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "dsnot_common.h"
#include "lists.h"
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


constexpr int64_t kTile = 4096;  // pass 3 tile (multiple of kSumLanes and of 64)

struct RowScratch {
  std::vector<float> w, dm;
  std::vector<uint32_t> mord, word, hist, ukey;
  std::vector<uint8_t> pruned0;
  std::vector<uint64_t> cand;
  std::vector<uint8_t> flag, xflag;
  std::vector<uint32_t> xkey;
  std::vector<uint64_t> lbuf;        // 4 lists x cols keys
  RowLists lists;
  TinyTop tops[4];
  int64_t keep = 0;

  explicit RowScratch(const Problem& p) {
    const int64_t c = p.cols;
    w.resize(c); dm.resize(c); mord.resize(c);
    if (p.metric != nullptr) word.resize(c);
    hist.resize(2 * kHistBins);
    pruned0.resize(c); flag.resize(std::min(c, kTile)); ukey.resize(std::min(c, kTile));
    xflag.resize(std::min(c, RowLists::kExtTile)); xkey.resize(std::min(c, RowLists::kExtTile));
    cand.resize(std::max<int64_t>(c, p.prune_m));
    keep = std::min<int64_t>(p.max_cycles, c);
    lbuf.resize(4 * static_cast<size_t>(c));
  }
};

// x if flag else +0.0, by masking the bits: no branch, and x * 0 would turn inf into NaN.
// T is float (with U = uint32_t) or double (U = uint64_t).
template <typename T, typename U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>
inline T keep_if(T x, uint8_t flag) {
  static_assert(sizeof(T) == sizeof(U), "keep_if: T and U must have the same size");
  U u;
  std::memcpy(&u, &x, sizeof(u));
  u &= U{0} - static_cast<U>(flag != 0);
  T r;
  std::memcpy(&r, &u, sizeof(r));
  return r;
}

// Lane partial sums of the contract's fixed summation order, then the pairwise tree.
// Each level splits even and odd lanes into two arrays first (so the sum of a level vectorises);
// the additions are the same, in the same order.
template <typename T, int N>
__attribute__((always_inline)) inline void lane_level(T* part) {
  T ev[N / 2], od[N / 2];
  for (int l = 0; l < N / 2; ++l) { ev[l] = part[2 * l]; od[l] = part[2 * l + 1]; }
  for (int l = 0; l < N / 2; ++l) part[l] = ev[l] + od[l];
}
template <typename T>
__attribute__((always_inline)) inline T lane_tree(T* part) {
  static_assert(kSumLanes == 256, "lane_tree is written for 256 lanes");
  lane_level<T, 256>(part); lane_level<T, 128>(part); lane_level<T, 64>(part); lane_level<T, 32>(part);
  lane_level<T, 16>(part); lane_level<T, 8>(part); lane_level<T, 4>(part); lane_level<T, 2>(part);
  return part[0];
}

// prefetch_next: row i + 1 is this thread's next row (its weights are fetched during pass 3).
// always_inline: the caller (refine_mask_cpu.cpp) is compiled once per ISA (target_clones) and
// the whole row must be compiled for it.
template <typename scalar_t>
__attribute__((always_inline)) inline void refine_row(const Problem& P, int64_t i, RowScratch& S, bool prefetch_next = false) {
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
  // w is kept only for objective 1 (mse); otherwise the pass writes two arrays, not three (a long
  // row's scratch then stays in L2).
  const bool keep_w = refine && P.objective == 1;
  if (mrow == nullptr) {  // one fused loop: w, dm and ord(wanda) (= the metric)
    if (keep_w) {
      for (int64_t j = 0; j < cols; ++j) {
        const float wj = static_cast<float>(wrow[j]);
        w[j] = wj;
        dm[j] = wj * P.dmul[j];
        mord[j] = ord_bits(std::fabs(wj) * P.sqrt_scaler[j]);
      }
    } else {
      for (int64_t j = 0; j < cols; ++j) {
        const float wj = static_cast<float>(wrow[j]);
        dm[j] = wj * P.dmul[j];
        mord[j] = ord_bits(std::fabs(wj) * P.sqrt_scaler[j]);
      }
    }
  } else {
    for (int64_t j = 0; j < cols; ++j) {
      const float wj = static_cast<float>(wrow[j]);
      if (keep_w) w[j] = wj;
      dm[j] = wj * P.dmul[j];
      mord[j] = ord_bits(mrow[j]);
    }
    if (need_word)
      for (int64_t j = 0; j < cols; ++j)
        word[j] = ord_bits(std::fabs(static_cast<float>(wrow[j])) * P.sqrt_scaler[j]);
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
    uint32_t lo = 0xFFFFFFFFu, hi = 0u;
    for (int64_t j = 0; j < cols; ++j) {  // the row's range of ord (vectorised min / max)
      lo = std::min(lo, mord[j]);
      hi = std::max(hi, mord[j]);
    }
    const uint64_t kth = kth_composite(mord, cols, P.k, lo, hi, S.hist.data(), S.cand.data());
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

  // Pass 3: list limits from a sample, then one vectorised pass for the error lanes (contract
  // "fixed summation order": lane l takes j = l + 256 t), list membership counts and the flags of
  // the members below the limits; a sparse scan of the flags fills the lists (lists.h).
  RowLists& L = S.lists;
  L.dm = dm; L.div = P.divisor; L.xflag = S.xflag.data(); L.xkey = S.xkey.data(); L.pruned = p0; L.word = word; L.prune_lists = !nm; L.cols = cols;
  const int nlists = nm ? 2 : 4;  // N:M picks q per group instead of plo/phi
  L.estimate(S.keep, S.lbuf.data(), cols, S.tops, nlists);
  const uint32_t lim_hi = L.list[kHi].limit, lim_lo = L.list[kLo].limit;
  const uint32_t lim_plo = L.list[kPlo].limit, lim_phi = L.list[kPhi].limit;
  alignas(64) float part[kSumLanes];
  for (int l = 0; l < kSumLanes; ++l) part[l] = 0.0f;
  uint8_t* flag = S.flag.data();
  uint32_t* ukey = S.ukey.data();
  uint32_t n_hi = 0, n_lo = 0, n_plo = 0, n_phi = 0;
  const bool prune_lists = !nm;
  // Column tiles of kTile: the flags and keys of a tile are scanned while they are in L1.
  for (int64_t t0 = 0; t0 < cols; t0 += kTile) {
    const int64_t t1 = std::min<int64_t>(cols, t0 + kTile), tn = t1 - t0;
    for (int64_t base = t0; base < t1; base += kSumLanes) {
      const int n = static_cast<int>(std::min<int64_t>(kSumLanes, cols - base));
      const float* d = dm + base;
      const float* dv = P.divisor + base;
      const uint8_t* f = p0 + base;
      const uint32_t* wo = word + base;
      uint8_t* fl = flag + (base - t0);
      uint32_t* uk = ukey + (base - t0);
      if (prefetch_next) {  // the next row's weights into L2 while this row computes
        const char* nx = reinterpret_cast<const char*>(wrow + cols + base);
        const int64_t nb = static_cast<int64_t>(n) * static_cast<int64_t>(sizeof(scalar_t));
        for (int64_t o = 0; o < nb; o += 64) __builtin_prefetch(nx + o, 0, 2);
      }
      if (!prune_lists) {  // N:M: only the growth lists (pruned columns; q is picked per group)
        for (int l = 0; l < n; ++l) {
          const float dd = d[l];
          const uint32_t pr = f[l] != 0;
          part[l] += keep_if(dd, f[l]);
          const float key = dd / dv[l];
          const uint32_t kgt = pr & (key > 0.0f), klt = pr & (key < 0.0f);
          const uint32_t u = ord_bits(key) ^ (0u - (key > 0.0f));
          n_hi += kgt; n_lo += klt;
          const uint32_t lim = (lim_hi & (0u - kgt)) | (lim_lo & ~(0u - kgt));
          uk[l] = u;
          fl[l] = static_cast<uint8_t>(((kgt | klt) & (u <= lim)) * (1u + klt));  // kHi + 1 or kLo + 1
        }
        continue;
      }
      for (int l = 0; l < n; ++l) {
        const uint32_t pr = f[l] != 0;
        part[l] += keep_if(d[l], f[l]);
        const Cls k = classify(d[l], dv[l], pr, wo[l], prune_lists);
        const uint32_t is_hi = k.id == kHi, is_lo = k.id == kLo, is_plo = k.id == kPlo, is_phi = k.id == kPhi;
        n_hi += is_hi; n_lo += is_lo; n_plo += is_plo; n_phi += is_phi;
        const uint32_t lim = (lim_hi & (0u - is_hi)) | (lim_lo & (0u - is_lo)) | (lim_plo & (0u - is_plo)) |
                             (lim_phi & (0u - is_phi));
        uk[l] = k.u;
        fl[l] = static_cast<uint8_t>(((k.id != kNone) & (k.u <= lim)) * (k.id + 1));  // 0 or id + 1
      }
    }
    // Sparse scan of the flags: 64 at a time, folded into a bit mask of the non-zero flags (a byte
    // holds 0..4, so bit 7 of byte + 0x7F marks a non-zero byte), then one bit loop per block.
    for (int64_t j0 = 0; j0 < tn; j0 += 64) {
      uint64_t wv[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      std::memcpy(wv, flag + j0, static_cast<size_t>(std::min<int64_t>(64, tn - j0)));
      uint64_t bits = 0;
      for (int t = 0; t < 8; ++t) {
        const uint64_t hi = (wv[t] + 0x7F7F7F7F7F7F7F7Full) & 0x8080808080808080ull;
        bits |= ((hi >> 7) * 0x0102040810204080ull >> 56) << (8 * t);  // byte b -> bit b
      }
      while (bits != 0) {
        const int64_t j = j0 + __builtin_ctzll(bits);
        L.add(t0 + j, flag[j] - 1u, ukey[j]);
        bits &= bits - 1;
      }
    }
  }
  L.list[kHi].total = n_hi; L.list[kLo].total = n_lo; L.list[kPlo].total = n_plo; L.list[kPhi].total = n_phi;
  const bool mse = P.objective == 1;
  alignas(64) double epart[kSumLanes];
  if (mse) {
    for (int l = 0; l < kSumLanes; ++l) epart[l] = 0.0;
    for (int64_t base = 0; base < cols; base += kSumLanes) {
      const int n = static_cast<int>(std::min<int64_t>(kSumLanes, cols - base));
      for (int l = 0; l < n; ++l)
        epart[l] += keep_if(mse_a(w[base + l], P.mean[base + l]), p0[base + l]);
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
      if (!L.next(kHi, &rk)) break;
      r = key_column(~rk);
    } else {
      if (!L.next(kLo, &rk)) break;
      r = key_column(rk);
    }
    int64_t q = -1;
    if (nm) {
      // The smallest (metric, column) among the group's kept, initially kept columns with a
      // metric below +inf; branch-free (the flags are unpredictable).
      const int64_t start = r - r % P.prune_m;
      const uint32_t inf_ord = ord_key(INFINITY);
      uint64_t best = ~0ull;
      for (int64_t c = start; c < start + P.prune_m; ++c) {
        const uint64_t ok = (init[c] == 0) & (out[c] == 0) & (mord[c] < inf_ord);
        best = std::min(best, pack(mord[c], static_cast<uint32_t>(c - start)) | (ok - 1));
      }
      if (best != ~0ull) q = start + static_cast<int64_t>(static_cast<uint32_t>(best));
      if (q < 0) {
        if (mse) continue;  // pair rejected, r consumed, the row goes on
        break;
      }
    } else {
      uint64_t qk;
      if (!L.next(err < 0.0f ? kPhi : kPlo, &qk)) break;
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
  L.adapt(S.keep, nlists);
  P.swaps_out[i] = swaps;
}

}  // namespace cpu
}  // namespace dsnot
