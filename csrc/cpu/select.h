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
  const int bits = n >= 512 ? kHistBits : 7;  // 512+ columns: the full 2048 bins (a smaller boundary bin measured 6 % faster at 1024)
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

// Groups of 4 (2:4), 16 columns (4 groups) at a time with GCC vector extensions: each column is
// compared with its three group neighbours (j ^ 1, j ^ 2, j ^ 3: shuffles within 128-bit lanes, no
// de-interleaving), ties going to the smaller column. The vector types are lowered to whatever ISA
// the caller is compiled for (every target_clones variant).
typedef uint32_t v16u32 __attribute__((vector_size(64)));
typedef int32_t v16i32 __attribute__((vector_size(64)));
typedef uint8_t v16u8 __attribute__((vector_size(16)));
__attribute__((always_inline)) inline void nm_select_4(const uint32_t* ord, int64_t cols, uint32_t n, uint8_t* pruned) {
  const v16i32 i1 = {1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14};
  const v16i32 i2 = {2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13};
  const v16i32 i3 = {3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12};
  // -1 where the neighbour's column is smaller (it wins a tie): j ^ 1 < j iff j odd, j ^ 2 and
  // j ^ 3 < j iff j % 4 >= 2.
  const v16i32 t1 = {0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1};
  const v16i32 t2 = {0, 0, -1, -1, 0, 0, -1, -1, 0, 0, -1, -1, 0, 0, -1, -1};
  const v16i32 vn = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  const v16i32 nn = vn + static_cast<int32_t>(n);
  int64_t j = 0;
  for (; j + 16 <= cols; j += 16) {
    v16u32 v;
    std::memcpy(&v, ord + j, sizeof(v));
    const v16u32 a = __builtin_shuffle(v, i1), b = __builtin_shuffle(v, i2), c = __builtin_shuffle(v, i3);
    // comparisons give -1 (true) or 0 per lane; rank = how many neighbours come first
    const v16i32 lt = (a < v) | ((a == v) & t1);
    const v16i32 lt2 = (b < v) | ((b == v) & t2);
    const v16i32 lt3 = (c < v) | ((c == v) & t2);
    const v16i32 rank = -(lt + lt2 + lt3);
    const v16i32 pr = -(rank < nn);  // 1 if pruned
    const v16u8 bytes = __builtin_convertvector(pr, v16u8);
    std::memcpy(pruned + j, &bytes, sizeof(bytes));
  }
  for (; j < cols; j += 4) {
    const uint32_t a = ord[j], b = ord[j + 1], c = ord[j + 2], d = ord[j + 3];
    pruned[j] = static_cast<uint32_t>((b < a) + (c < a) + (d < a)) < n;
    pruned[j + 1] = static_cast<uint32_t>((a <= b) + (c < b) + (d < b)) < n;
    pruned[j + 2] = static_cast<uint32_t>((a <= c) + (b <= c) + (d < c)) < n;
    pruned[j + 3] = static_cast<uint32_t>((a <= d) + (b <= d) + (c <= d)) < n;
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
