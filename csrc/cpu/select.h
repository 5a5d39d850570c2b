// Selection primitives of the CPU kernel (docs/KERNEL_CONTRACT.md, "Orders"): every order is
// ascending in a composite uint64 key (ord(x) << 32) | col, so "ties by column" comes for free.
//   * kth_composite: the k-th smallest composite key of a row, radix select on ord (spec §2,
//     unstructured initial mask) -- linear, no sort.
//   * nm_select: the prune_n smallest composite keys of each prune_m group (spec §2, N:M).
//   * build_lists / CandList: the candidate orders of spec §3, each cut by a radix histogram to a
//     prefix holding its max_cycle_time smallest keys (a cursor never reads more), read lazily.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

namespace dsnot {
namespace cpu {

constexpr int kHistBits = 11;                  // first radix digit: sign, exponent, 2 mantissa bits
constexpr int kHistBins = 1 << kHistBits;
constexpr int kHistShift = 32 - kHistBits;
constexpr int kHist2Bits = 11;                 // second digit: the next 11 bits of ord
constexpr int kHist2Bins = 1 << kHist2Bits;

inline uint64_t pack(uint32_t hi, uint32_t lo) { return (static_cast<uint64_t>(hi) << 32) | lo; }

// Smallest bin b with below + hist[0..b] >= k; returns b and sets *below = sum of hist[0..b).
inline int find_bin(const uint32_t* hist, int bins, int64_t k, int64_t* below) {
  int64_t acc = 0;
  int b = 0;
  for (; b < bins - 1; ++b) {
    if (acc + hist[b] >= k) break;
    acc += hist[b];
  }
  *below = acc;
  return b;
}

// The k-th smallest (1 <= k <= n) composite key (ord[j], j) of j in [0, n). `hist` must already
// hold the histogram of ord >> kHistShift over the n keys (built by the caller's first pass);
// `cand` is scratch of n uint64, `hist2` scratch of kHist2Bins.
inline uint64_t kth_composite(const uint32_t* ord, int64_t n, int64_t k, const uint32_t* hist,
                              uint64_t* cand, uint32_t* hist2) {
  int64_t below = 0;
  const uint32_t bin = static_cast<uint32_t>(find_bin(hist, kHistBins, k, &below));
  int64_t need = k - below;  // 1 .. hist[bin]
  int64_t m = 0;
  for (int64_t j = 0; j < n; ++j) {  // branchless compaction of the boundary bin
    const uint32_t o = ord[j];
    cand[m] = pack(o, static_cast<uint32_t>(j));
    m += (o >> kHistShift) == bin;
  }
  if (m > 512) {  // second radix digit over the (still large) boundary bin
    std::memset(hist2, 0, sizeof(uint32_t) * kHist2Bins);
    const int sh = 32 + kHistShift - kHist2Bits;
    for (int64_t t = 0; t < m; ++t) hist2[(cand[t] >> sh) & (kHist2Bins - 1)]++;
    int64_t below2 = 0;
    const uint64_t bin2 = static_cast<uint64_t>(find_bin(hist2, kHist2Bins, need, &below2));
    need -= below2;
    int64_t m2 = 0;
    for (int64_t t = 0; t < m; ++t) {
      const uint64_t c = cand[t];
      cand[m2] = c;
      m2 += ((c >> sh) & (kHist2Bins - 1)) == bin2;
    }
    m = m2;
  }
  std::nth_element(cand, cand + (need - 1), cand + m);
  return cand[need - 1];
}

// Initial N:M selection (spec §2): in each group of m columns prune the n smallest (ord, col).
// Within a group columns ascend with the index, so x < y wins the tie.
template <int M>
inline void nm_select_fixed(const uint32_t* ord, int64_t cols, int n, uint8_t* pruned) {
  for (int64_t g = 0; g < cols; g += M) {
    const uint32_t* o = ord + g;
    int rank[M] = {};
    for (int x = 0; x < M; ++x)
      for (int y = x + 1; y < M; ++y) {
        const int ylow = o[y] < o[x];  // y before x in the order
        rank[x] += ylow;
        rank[y] += 1 - ylow;
      }
    for (int x = 0; x < M; ++x) pruned[g + x] = rank[x] < n;
  }
}

inline void nm_select(const uint32_t* ord, int64_t cols, int n, int m, uint8_t* pruned, uint64_t* scratch) {
  if (m == 4) return nm_select_fixed<4>(ord, cols, n, pruned);
  if (m == 8) return nm_select_fixed<8>(ord, cols, n, pruned);
  for (int64_t g = 0; g < cols; g += m) {
    for (int x = 0; x < m; ++x) scratch[x] = pack(ord[g + x], static_cast<uint32_t>(x));
    std::nth_element(scratch, scratch + (n - 1), scratch + m);
    const uint64_t kth = scratch[n - 1];
    for (int x = 0; x < m; ++x) pruned[g + x] = pack(ord[g + x], static_cast<uint32_t>(x)) <= kth;
  }
}

// A candidate order of spec §3 (contract "Orders"): a buffer that holds exactly the `size`
// smallest composite keys of the list (a prefix of its ascending order, size >= the number a row
// can consume), read in ascending order with next(). The first few takes are selection scans
// (rows often stop after a handful of swaps); after that the rest is sorted once.
struct CandList {
  static constexpr int64_t kScanTakes = 8;
  uint64_t* buf = nullptr;
  int64_t size = 0, cursor = 0, keep = 0;
  bool sorted = false;

  void reset(uint64_t* b, int64_t n, int64_t keep_) { buf = b; size = n; cursor = 0; keep = keep_; sorted = false; }
  bool next(uint64_t* key) {
    if (cursor >= size) return false;
    if (!sorted) {
      if (cursor < kScanTakes) {
        int64_t best = cursor;
        uint64_t bv = buf[cursor];
        for (int64_t t = cursor + 1; t < size; ++t) {  // branch-free min
          const uint64_t v = buf[t];
          const bool lt = v < bv;
          bv = lt ? v : bv;
          best = lt ? t : best;
        }
        buf[best] = buf[cursor];
        buf[cursor] = bv;
      } else {
        const int64_t lim = std::max(cursor + 1, std::min(size, keep));
        if (lim < size) std::nth_element(buf + cursor, buf + (lim - 1), buf + size);
        std::sort(buf + cursor, buf + lim);
        size = lim;
        sorted = true;
      }
    }
    *key = buf[cursor++];
    return true;
  }
};

constexpr int kListBins = 2048;  // radix digit of the candidate lists: ukey >> 21
constexpr int kListShift = 21;

// Sum of the `keep` smallest bins' boundary: the smallest b with sum(h[0..b]) >= keep, or -1 if the
// whole list is smaller than keep. Blocks of 16 bins first (vectorises), then bin by bin.
template <typename Cnt>
inline int boundary_bin(const Cnt* h, int64_t keep, int64_t* count) {
  int64_t acc = 0;
  int b = 0;
  for (; b < kListBins; b += 16) {
    uint32_t blk = 0;
    for (int t = 0; t < 16; ++t) blk += h[b + t];
    if (acc + blk >= keep) break;
    acc += blk;
  }
  if (b >= kListBins) { *count = acc; return -1; }
  for (;; ++b) {
    acc += h[b];
    if (acc >= keep) break;
  }
  *count = acc;
  return b;
}

// Build the candidate lists of one row from per-column list ids `cls` (0..3, 4 = none) and 32-bit
// ascending keys `ukey`: one radix histogram per list, the boundary bin of its `keep` smallest,
// then one pass copies every key below or in that bin. `hist` holds 5 * kListBins counters (the
// fifth is a sink for "none" and is never read); `buf` holds cols uint64.
template <typename Cnt>
inline void build_lists(const uint32_t* cls, const uint32_t* ukey, int64_t cols, int64_t keep, int nlists,
                        Cnt* hist, uint64_t* buf, CandList* lists) {
  std::memset(hist, 0, sizeof(Cnt) * 4 * kListBins);
  for (int64_t j = 0; j < cols; ++j) hist[(cls[j] << 11) | (ukey[j] >> kListShift)]++;
  uint64_t lim[5] = {0, 0, 0, 0, 0};  // copy iff ukey < lim[cls]
  int64_t offset = 0;
  uint64_t* base[5] = {buf, buf, buf, buf, buf};
  int64_t fill[5] = {0, 0, 0, 0, 0};
  for (int c = 0; c < nlists; ++c) {
    int64_t count = 0;
    const int b = boundary_bin(hist + c * kListBins, keep, &count);
    lim[c] = b < 0 ? (1ull << 32) : (static_cast<uint64_t>(b) + 1) << kListShift;
    base[c] = buf + offset;
    lists[c].reset(base[c], count, keep);
    offset += count;
  }
  for (int c = nlists; c < 4; ++c) lists[c].reset(buf, 0, keep);
  for (int64_t j = 0; j < cols; ++j) {
    const uint32_t c = cls[j];
    const uint32_t u = ukey[j];
    if (u < lim[c]) {
      const uint32_t col = static_cast<uint32_t>(j);
      base[c][fill[c]++] = pack(u, c == 0 ? ~col : col);  // list 0 (hi) is descending in col too
    }
  }
}

}  // namespace cpu
}  // namespace dsnot
