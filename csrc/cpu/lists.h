// The four candidate orders of the refinement (spec §3, contract "Orders") for one row, without
// sorting the row: growth hi (pruned, key > 0, descending (key, col)), growth lo (pruned, key < 0,
// ascending), prune plo / phi (kept, dm < 0 / dm > 0, ascending (wanda, col)).
//
// Each column gets a list id and a 32-bit key `u` ascending in its list's order (classify). A list
// is held as a *prefix*: every member with u <= limit. The limit is carried from the previous row
// of the thread (adapted after each row) or estimated from a strided sample, so that the prefix
// holds about the wanted length: twice what recent rows took plus a margin that grows with cols
// (a short prefix saves copies on short rows; on long rows an extension, a pass over the row,
// costs more than many members). The row's main pass flags the members below the limits
// (vectorised), a sparse scan copies them, and a list whose prefix runs out while members remain
// is extended (a sampled new limit, one vectorised pass). Reading is lazy: a few min scans, then
// sorted chunks that double.
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
  // smallest sampled key ~ want / s members). The wanted prefix length follows what recent rows of
  // the thread actually took from the list (twice the decayed maximum, plus a margin), capped at
  // keep + 16: rows usually stop after a few swaps, and every prefix member costs a copy and a
  // look in the min scans. A row that takes more extends its prefix (extend); the limits change
  // only the speed, never a result.
  uint32_t carry[4] = {0, 0, 0, 0};
  bool has_carry[4] = {false, false, false, false};
  int64_t recent[4] = {-1, -1, -1, -1};   // decayed maximum taken per row; -1: no row yet

  int64_t want(int c, int64_t keep) const {
    if (recent[c] < 0) return keep + 24 + cols / 512;
    return std::min(2 * keep + 16, 2 * recent[c] + 16) + 8 + cols / 512;
  }

  void estimate(int64_t keep, uint64_t* storage, int64_t cap, TinyTop* tops, int nlists) {
    const int64_t s = std::max<int64_t>(1, std::min<int64_t>(16, cols / 256));
    bool sample = false;
    for (int c = 0; c < nlists; ++c) {
      const int64_t r = (want(c, keep) + s - 1) / s + 1;
      tops[c].reset(static_cast<int>(std::min<int64_t>(r, TinyTop::kMaxR)));
      sample |= !has_carry[c] && r <= TinyTop::kMaxR;
    }
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

  // After the swap loop: the limits for the next row, from what this row took and held. A prefix
  // far longer than wanted is cut at the wanted length (nth_element on its keys); one far shorter
  // while members remain asks for a fresh sample; otherwise the (possibly extended) limit carries.
  void adapt(int64_t keep, int nlists) {
    for (int c = 0; c < nlists; ++c) {
      CandList& L = list[c];
      const int64_t used = L.cursor;
      recent[c] = recent[c] < 0 ? used : std::max(used, recent[c] - (recent[c] + 31) / 32);
      const int64_t target = want(c, keep);
      has_carry[c] = L.size >= std::min(target / 4, L.total) || L.limit == 0xFFFFFFFFu;
      carry[c] = L.limit;
      if (L.size > target + target / 2) {
        std::nth_element(L.buf, L.buf + (target - 1), L.buf + L.size);
        carry[c] = static_cast<uint32_t>(L.buf[target - 1] >> 32);
        has_carry[c] = true;
      }
    }
  }

  void add(int64_t j, uint32_t id, uint32_t u) {
    CandList& L = list[id];
    L.buf[L.size++] = pack(u, col_bits(id, static_cast<uint32_t>(j)));
  }

  // Take the next key of list c; extends an exhausted prefix while members remain (extend).
  __attribute__((always_inline)) bool next(int c, uint64_t* key) {
    CandList& L = list[c];
    while (!L.next(key)) {
      if (L.size >= L.total || L.limit == 0xFFFFFFFFu) return false;
      extend(c);
    }
    return true;
  }

  // Scratch of extend: a tile of flags and keys (set by the row, kExtTile entries each).
  static constexpr int64_t kExtTile = 4096;
  uint8_t* xflag = nullptr;
  uint32_t* xkey = nullptr;

  // Raise list c's limit past its exhausted prefix and append the members in between, in column
  // order. The new limit is the r-th smallest key above the old one in a strided sample (about as
  // many new members as the prefix had, at least keep + 16), or everything when the sample holds
  // fewer or the row is short (at most kExtTile columns). One vectorised pass per tile flags the new members; a sparse scan appends them.
  __attribute__((noinline)) void extend(int c) {
    CandList& L = list[c];
    const uint32_t old = L.limit;
    const int64_t s = std::max<int64_t>(1, std::min<int64_t>(16, cols / 256));
    const int64_t grow = std::max<int64_t>(L.keep + 16, L.size);
    const int64_t r = (grow + s - 1) / s + 1;
    uint32_t lim = 0xFFFFFFFFu;
    if (r <= TinyTop::kMaxR && cols > kExtTile) {  // short rows: a sample costs more than the copies
      TinyTop top;
      top.reset(static_cast<int>(r));
      for (int64_t j = 0; j < cols; j += s) {
        const Cls k = at(j);
        if (k.id == static_cast<uint32_t>(c) && k.u > old) top.push(k.u);
      }
      lim = top.limit();
    }
    for (int64_t t0 = 0; t0 < cols; t0 += kExtTile) {
      const int64_t tn = std::min<int64_t>(kExtTile, cols - t0);
      for (int64_t t = 0; t < tn; ++t) {  // branch-free: vectorises
        const Cls k = at(t0 + t);
        xkey[t] = k.u;
        xflag[t] = (k.id == static_cast<uint32_t>(c)) & (k.u > old) & (k.u <= lim);
      }
      for (int64_t t = 0; t < tn; ++t)
        if (xflag[t]) L.buf[L.size++] = pack(xkey[t], col_bits(static_cast<uint32_t>(c), static_cast<uint32_t>(t0 + t)));
    }
    L.limit = lim;
  }
};

}  // namespace cpu
}  // namespace dsnot
