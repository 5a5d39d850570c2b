// The four candidate orders of the refinement (spec §3, contract "Orders") for one row, without
// sorting the row: growth hi (pruned, key > 0, descending (key, col)), growth lo (pruned, key < 0,
// ascending), prune plo / phi (kept, dm < 0 / dm > 0, ascending (wanda, col)).
//
// Each column gets a list id and a 32-bit key `u` ascending in its list's order (classify). A list
// is held as a *prefix*: every member with u <= limit. The limit is carried from the previous row
// of the thread (adapted after each row) or estimated from a strided sample, so that the prefix
// holds about max_cycle_time + 16 members (a row takes at most max_cycle_time). The row's main
// pass flags the members below the limits (vectorised), a sparse scan copies them, and a list whose
// prefix runs out while members remain is extended with all of them (rare, linear). Reading is
// lazy: a few min scans, then sorted chunks that double.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "dsnot_common.h"
#include "select.h"

namespace dsnot {
namespace cpu {

enum List : uint32_t { kHi = 0, kLo = 1, kPlo = 2, kPhi = 3, kNone = 4 };

// ord_key without a branch (vectorises): x + 0.0f maps -0.0 to +0.0; NaN gives some value.
inline uint32_t ord_bits(float x) {
  const uint32_t u = float_bits(x + 0.0f);
  return u ^ (static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u);
}

// List id and ascending key of one column. d = dm, div = growth-key divisor (var, var ** p, or 1
// for p == 0: x / 1 == x), pruned = initially pruned, word = ord(wanda). Branch-free.
// hi is descending in (key, col): its key is the complement of ord(key) (and of col, see col_bits).
struct Cls {
  uint32_t id, u;
};
inline Cls classify(float d, float div, uint32_t pruned, uint32_t word, bool with_prune_lists) {
  const float key = d / div;
  const uint32_t m = 0u - pruned;                              // all ones if pruned
  const uint32_t kgt = key > 0.0f, klt = key < 0.0f;           // NaN keys: neither
  const uint32_t dlt = (d < 0.0f) & with_prune_lists, dgt = (d > 0.0f) & with_prune_lists;
  // ids by bit selects (no integer multiply: SSE2 has none for 32-bit lanes)
  const uint32_t gid = (kHi & (0u - kgt)) | (kLo & (0u - klt)) | (kNone & (0u - (1u ^ (kgt | klt))));
  const uint32_t pid = (kPlo & (0u - dlt)) | (kPhi & (0u - dgt)) | (kNone & (0u - (1u ^ (dlt | dgt))));
  return {(gid & m) | (pid & ~m), ((ord_bits(key) ^ (0u - kgt)) & m) | (word & ~m)};
}

inline uint32_t col_bits(uint32_t id, uint32_t col) { return id == kHi ? ~col : col; }

// The r smallest of a stream of uint32 (r <= kMaxR), kept sorted.
struct TinyTop {
  static constexpr int kMaxR = 64;
  uint32_t v[kMaxR];
  int n = 0, r = 0;
  void reset(int r_) { n = 0; r = r_; }
  void push(uint32_t x) {
    if (n == r) {
      if (x >= v[r - 1]) return;
      --n;
    }
    int t = n++;
    while (t > 0 && v[t - 1] > x) { v[t] = v[t - 1]; --t; }
    v[t] = x;
  }
  // Inclusive limit: the r-th smallest, or everything when fewer than r were seen.
  uint32_t limit() const { return n < r ? 0xFFFFFFFFu : v[r - 1]; }
};

// One list's prefix: buf[0, sorted_end) holds its smallest keys in order, buf[sorted_end, size)
// the rest of the prefix in any order (appending larger keys keeps this true).
struct CandList {
  static constexpr int64_t kScanTakes = 8;
  uint64_t* buf = nullptr;
  int64_t size = 0, cursor = 0, sorted_end = 0, keep = 0, total = 0;
  uint32_t limit = 0;        // the prefix holds every member with u <= limit

  void reset(uint64_t* b, int64_t keep_, uint32_t limit_) {
    buf = b; size = 0; cursor = 0; sorted_end = 0; keep = keep_; total = 0; limit = limit_;
  }
  // Next key of the prefix in ascending order; false when the prefix is used up.
  __attribute__((always_inline)) bool next(uint64_t* key) {
    if (cursor >= size) return false;
    if (cursor >= sorted_end) {
      if (cursor < kScanTakes) {  // rows often stop early: a min scan (vectorises), then find it
        uint64_t bv = ~0ull;
        for (int64_t t = cursor; t < size; ++t) bv = std::min(bv, buf[t]);
        int64_t best = cursor;
        while (buf[best] != bv) ++best;
        buf[best] = buf[cursor];
        buf[cursor] = bv;
        sorted_end = cursor + 1;
      } else {  // then sorted chunks that double (a row takes at most keep keys of a list)
        const int64_t lim = std::min(size, cursor + std::max<int64_t>(kScanTakes, cursor));
        if (lim < size) std::nth_element(buf + cursor, buf + (lim - 1), buf + size);
        std::sort(buf + cursor, buf + lim);
        sorted_end = lim;
      }
    }
    *key = buf[cursor++];
    return true;
  }
};

// Everything the lists of one row need to classify a column again (sample, scan, extension).
struct RowLists {
  CandList list[4];
  const float* dm = nullptr;
  const float* div = nullptr;
  const uint8_t* pruned = nullptr;
  const uint32_t* word = nullptr;
  bool prune_lists = true;
  int64_t cols = 0;

  Cls at(int64_t j) const { return classify(dm[j], div[j], pruned[j] != 0, word[j], prune_lists); }

  // Limits carried from the previous row of this thread (rows of a layer are alike), adapted after
  // each row by adapt(); a list without one gets it from a strided sample (stride s; the r-th
  // smallest sampled key ~ (keep + 16) / s members).
  uint32_t carry[4] = {0, 0, 0, 0};
  bool has_carry[4] = {false, false, false, false};

  void estimate(int64_t keep, uint64_t* storage, int64_t cap, TinyTop* tops, int nlists) {
    const int64_t s = std::max<int64_t>(1, std::min<int64_t>(16, cols / 256));
    const int64_t r = (keep + 16 + s - 1) / s + 1;
    bool sample = false;
    for (int c = 0; c < nlists; ++c) sample |= !has_carry[c];
    sample &= r <= TinyTop::kMaxR;
    for (int c = 0; c < 4; ++c) tops[c].reset(static_cast<int>(std::min<int64_t>(r, TinyTop::kMaxR)));
    if (sample) {
      for (int64_t j = 0; j < cols; j += s) {
        const Cls k = at(j);
        if (k.id < kNone) tops[k.id].push(k.u);
      }
    }
    for (int c = 0; c < 4; ++c)
      list[c].reset(storage + c * cap, keep,
                    c >= nlists ? 0u : has_carry[c] ? carry[c] : sample ? tops[c].limit() : 0xFFFFFFFFu);
  }

  // After the lists are filled (before any take): the limits for the next row. A prefix with fewer
  // than keep + 8 members asks for a fresh sample; one far too long is cut (for the next row) at
  // keep + 16 by nth_element on its keys, which only reorders this row's unread prefix.
  void adapt(int64_t keep, int nlists) {
    const int64_t target = keep + 16;
    for (int c = 0; c < nlists; ++c) {
      CandList& L = list[c];
      // Too few for comfort (rows differ): sample afresh for the next row.
      has_carry[c] = L.size >= std::min(keep + 8, L.total);
      carry[c] = L.limit;
      if (has_carry[c] && L.size > 4 * target) {
        std::nth_element(L.buf, L.buf + (target - 1), L.buf + L.size);
        carry[c] = static_cast<uint32_t>(L.buf[target - 1] >> 32);
      }
    }
  }

  void add(int64_t j, uint32_t id, uint32_t u) {
    CandList& L = list[id];
    L.buf[L.size++] = pack(u, col_bits(id, static_cast<uint32_t>(j)));
  }

  // Take the next key of list c; extends an exhausted prefix with the rest of its list.
  __attribute__((always_inline)) bool next(int c, uint64_t* key) {
    CandList& L = list[c];
    if (L.next(key)) return true;
    if (L.size >= L.total || L.limit == 0xFFFFFFFFu) return false;
    const uint32_t old = L.limit;
    L.limit = 0xFFFFFFFFu;
    for (int64_t j = 0; j < cols; ++j) {  // every member above the old limit, in column order
      const Cls k = at(j);
      if (k.id == static_cast<uint32_t>(c) && k.u > old)
        L.buf[L.size++] = pack(k.u, col_bits(k.id, static_cast<uint32_t>(j)));
    }
    return L.next(key);
  }
};

}  // namespace cpu
}  // namespace dsnot
