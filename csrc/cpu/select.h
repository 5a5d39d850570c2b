// Selection primitives of the CPU kernel (docs/KERNEL_CONTRACT.md, "Orders"): every order is
// ascending in a composite uint64 key (ord(x) << 32) | col, so "ties by column" comes for free.
//   * kth_composite: the k-th smallest composite key of a row, radix select on ord (spec §2,
//     unstructured initial mask) -- linear, no sort.
//   * nm_select: the prune_n smallest composite keys of each prune_m group (spec §2, N:M).
// The candidate orders of the refinement are in lists.h.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

namespace dsnot {
namespace cpu {

constexpr int kHistBits = 11;                  // first radix digit: at most 2048 bins over the row's range
constexpr int kHistBins = 1 << kHistBits;
constexpr int kHist2Bits = 11;                 // second digit: the next 11 bits of ord
constexpr int kHist2Bins = 1 << kHist2Bits;

inline uint64_t pack(uint32_t hi, uint32_t lo) { return (static_cast<uint64_t>(hi) << 32) | lo; }

// Smallest bin b with below + hist[0..b] >= k; returns b and sets *below = sum of hist[0..b).
// Blocks of 16 bins first (the sum vectorises), then bin by bin inside the block.
__attribute__((always_inline)) inline int find_bin(const uint32_t* hist, int bins, int64_t k, int64_t* below) {
  int64_t acc = 0;
  int b = 0;
  for (; b + 16 <= bins; b += 16) {
    uint32_t blk = 0;
    for (int t = 0; t < 16; ++t) blk += hist[b + t];
    if (acc + blk >= k) break;
    acc += blk;
  }
  for (; b < bins - 1; ++b) {
    if (acc + hist[b] >= k) break;
    acc += hist[b];
  }
  *below = acc;
  return b;
}

// The k-th smallest (1 <= k <= n) composite key (ord[j], j) of j in [0, n): radix select whose
// first digit spans only the row's range [lo, hi] of ord (so a bin is narrow and the boundary bin
// small), with as many bins as the row can use; a second digit splits a still large boundary bin;
// nth_element finishes (ties by column). `hist` is scratch of 2 * kHistBins, `cand` of n uint64.
__attribute__((always_inline)) inline uint64_t kth_composite(const uint32_t* ord, int64_t n, int64_t k,
                                                             uint32_t lo, uint32_t hi, uint32_t* hist,
                                                             uint64_t* cand) {
  const uint32_t span = hi - lo;
  const int span_bits = span == 0 ? 0 : 32 - __builtin_clz(span);
  const int bits = n >= 2048 ? kHistBits : (n >= 512 ? 9 : 7);
  const int shift = std::max(0, span_bits - bits);
  const int bins = 1 << bits;
  uint32_t* ha = hist;
  uint32_t* hb = hist + kHistBins;
  std::memset(ha, 0, sizeof(uint32_t) * bins);
  std::memset(hb, 0, sizeof(uint32_t) * bins);
  int64_t j = 0;
  for (; j + 1 < n; j += 2) {  // two interleaved histograms halve store-to-load chains
    ha[(ord[j] - lo) >> shift]++;
    hb[(ord[j + 1] - lo) >> shift]++;
  }
  if (j < n) ha[(ord[j] - lo) >> shift]++;
  for (int b = 0; b < bins; ++b) ha[b] += hb[b];
  int64_t below = 0;
  const uint32_t bin = static_cast<uint32_t>(find_bin(ha, bins, k, &below));
  int64_t need = k - below;  // 1 .. ha[bin]
  int64_t m = 0;
  const uint32_t bin_lo = lo + (bin << shift), bin_width_1 = (1u << shift) - 1u;
  // The boundary bin is a small fraction of the row: test 16 keys at once (vectorises), copy
  // members one by one only from blocks that hold some.
  for (j = 0; j < n; j += 16) {
    const int64_t e = std::min<int64_t>(n, j + 16);
    uint32_t any = 0;
    for (int64_t t = j; t < e; ++t) any |= (ord[t] - bin_lo <= bin_width_1);
    if (!any) continue;
    for (int64_t t = j; t < e; ++t)
      if (ord[t] - bin_lo <= bin_width_1) cand[m++] = pack(ord[t], static_cast<uint32_t>(t));
  }
  if (m > 64 && shift > 0) {  // second digit: the next (up to 11) bits below the first
    const int shift2 = std::max(0, shift - kHist2Bits);
    const uint32_t mask2 = (1u << (shift - shift2)) - 1u;
    const int bins2 = static_cast<int>(mask2) + 1;
    std::memset(hb, 0, sizeof(uint32_t) * bins2);
    for (int64_t t = 0; t < m; ++t) hb[((static_cast<uint32_t>(cand[t] >> 32) - lo) >> shift2) & mask2]++;
    int64_t below2 = 0;
    const uint32_t bin2 = static_cast<uint32_t>(find_bin(hb, bins2, need, &below2));
    need -= below2;
    int64_t m2 = 0;
    for (int64_t t = 0; t < m; ++t) {
      const uint64_t c = cand[t];
      cand[m2] = c;
      m2 += (((static_cast<uint32_t>(c >> 32) - lo) >> shift2) & mask2) == bin2;
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

// 2:4-style groups of 4, written so that the loop vectorises (interleaved loads and stores).
__attribute__((always_inline)) inline void nm_select_4(const uint32_t* ord, int64_t cols, uint32_t n, uint8_t* pruned) {
  for (int64_t g = 0; g < cols / 4; ++g) {
    const uint32_t a = ord[4 * g], b = ord[4 * g + 1], c = ord[4 * g + 2], d = ord[4 * g + 3];
    const uint32_t ra = (b < a) + (c < a) + (d < a);
    const uint32_t rb = (a <= b) + (c < b) + (d < b);
    const uint32_t rc = (a <= c) + (b <= c) + (d < c);
    const uint32_t rd = (a <= d) + (b <= d) + (c <= d);
    pruned[4 * g] = ra < n;
    pruned[4 * g + 1] = rb < n;
    pruned[4 * g + 2] = rc < n;
    pruned[4 * g + 3] = rd < n;
  }
}

__attribute__((always_inline)) inline void nm_select(const uint32_t* ord, int64_t cols, int n, int m, uint8_t* pruned, uint64_t* scratch) {
  if (m == 4) return nm_select_4(ord, cols, static_cast<uint32_t>(n), pruned);
  if (m == 8) return nm_select_fixed<8>(ord, cols, n, pruned);
  for (int64_t g = 0; g < cols; g += m) {
    for (int x = 0; x < m; ++x) scratch[x] = pack(ord[g + x], static_cast<uint32_t>(x));
    std::nth_element(scratch, scratch + (n - 1), scratch + m);
    const uint64_t kth = scratch[n - 1];
    for (int x = 0; x < m; ++x) pruned[g + x] = pack(ord[g + x], static_cast<uint32_t>(x)) <= kth;
  }
}

}  // namespace cpu
}  // namespace dsnot
