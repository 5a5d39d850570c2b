// Rows that share the rows of M: the row-block driver of the "swap" CPU kernel's bounded search
// (refine_swap_cpu.cpp, which alone includes this file).
//
// A row's cycle scans, exactly, hundreds to thousands of rows of M (cols x cols float64: far larger
// than the caches from ~2k columns), so one row at a time streams M from memory once per cycle
// (benchmarks/RESULTS.md "wide-rows": the pair scans wait on M's loads). Here one thread runs a
// block of rows together and sweeps M in tiles of consecutive rows, round and round: at each tile,
// every row of the block scans the q of the tile that are its candidates (lb < 0) and can still
// reach its best delta (lb <= best), so a row of M is read from memory once per sweep and then
// from the cache by every row of the block that needs it. A row starts each cycle with its own
// kOwnScans lowest bounds (an incumbent), joins the sweep at the tile it is on, and ends the cycle
// (swap, bookkeeping) after one full turn, or as soon as no candidate it has not scanned can reach
// its best; it then starts the next cycle at once: rows never wait for each other.
// The pair each row picks is the one the single-row search picks (RowSearch: a q is skipped only
// when its bound exceeds the best delta found, which is never below the final best; ties to the
// lowest q then r, whatever the order): masks and swap counts are equal; only the pairs read differ.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "cpu/swap_cycles.h"
#include "cpu/swap_state.h"

namespace dsnot {
namespace cpu {
namespace {

// Rows per block: at most kRowBlock, and at most kBlockBytes of their scratch (~160 bytes per column
// per row); the bytes of one tile of rows of M (every row of the block scans its part of a tile
// while the tile is in the core's L2); the scans a row makes on its own at the start of each cycle
// (its lowest bounds: a good incumbent before it joins the sweep). Blocks from kBlockMinCols
// columns: below, M fits in the last-level cache and one row at a time is faster.
// (benchmarks/RESULTS.md "wide-rows": 64 rows and 512 KiB tiles were the fastest of those tried.)
constexpr int kRowBlock = 64;
constexpr int64_t kBlockBytes = int64_t{128} << 20;
constexpr int64_t kTileBytes = int64_t{512} << 10;
constexpr int kOwnScans = 8;
constexpr int64_t kBlockMinCols = 2048;

inline int row_block_size(int64_t cols) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kRowBlock, kBlockBytes / (160 * cols))));
}

struct RowBlock {
  std::vector<SwapScratch> S;
  std::vector<RowSearch> R;
  std::vector<uint8_t> active, scanning;
  std::vector<size_t> pos;
  std::vector<int64_t> start;

  RowBlock(const SwapProblem& P, int n) : active(n), scanning(n), pos(n), start(n) {
    S.reserve(n);
    for (int k = 0; k < n; ++k) S.emplace_back(P);
    R.resize(n);
  }

  // True while row k has a candidate not scanned yet that can still reach its best delta.
  bool has_more(int k) {
    const RowSearch& rs = R[k];
    const double* LB = S[k].lb.data();
    const auto* cand = S[k].cand.data();
    while (pos[k] < rs.nc && !(LB[cand[pos[k]].second] < kInf)) ++pos[k];  // scanned already
    return pos[k] < rs.nc && cand[pos[k]].first <= rs.best;
  }

  // Starts cycles of row k until one has candidates left after its own scans (scanning from tile
  // t on) or the row is done.
  void start_cycle(int k, int64_t t) {
    RowSearch& rs = R[k];
    for (;;) {
      if (!rs.begin()) { active[k] = 0; return; }
      auto* cand = S[k].cand.data();
      std::sort(cand, cand + rs.nc);
      pos[k] = 0;
      for (size_t u = 0; u < rs.nc && u < static_cast<size_t>(kOwnScans); ++u) {
        if (cand[u].first > rs.best) break;
        rs.scan(cand[u].second);
      }
      if (has_more(k)) { scanning[k] = 1; start[k] = t; return; }
      if (!rs.finish()) { active[k] = 0; return; }
    }
  }

  // Rows k < n of the block, each loaded into S[k] (w, g, pruned) with its mask out[k]; the
  // pairs read into pairs[k]; the swap counts into swaps[k].
  void run(const SwapProblem& P, int n, uint8_t* const* out, int64_t* pairs, int32_t* swaps) {
    const int64_t cols = P.cols;
    const int64_t elt = P.M32 != nullptr ? sizeof(float) : sizeof(double);  // the scans' M
    const int64_t tile = std::max<int64_t>(4, kTileBytes / (cols * elt));
    const int64_t n_tiles = (cols + tile - 1) / tile;
    for (int k = 0; k < n; ++k) {
      R[k] = RowSearch();
      active[k] = R[k].setup(P, S[k], out[k], &pairs[k]);
      scanning[k] = 0;
    }
    int64_t t = 0;  // the tile the sweep is on
    for (;;) {
      int n_active = 0;
      for (int k = 0; k < n; ++k) {
        if (active[k] && !scanning[k]) start_cycle(k, t);
        n_active += active[k];
      }
      if (n_active == 0) break;
      const int64_t q0 = t * tile, q1 = std::min(cols, q0 + tile);
      for (int k = 0; k < n; ++k) {  // each row's part of the tile (lb < 0 and lb <= its best)
        if (!active[k]) continue;
        RowSearch& rs = R[k];
        const double* LB = S[k].lb.data();
        for (int64_t q = q0; q < q1; ++q)
          if (LB[q] < 0.0 && LB[q] <= rs.best) rs.scan(q);
      }
      t = t + 1 == n_tiles ? 0 : t + 1;
      for (int k = 0; k < n; ++k) {  // a row that has seen every tile, or has nothing left, ends its cycle
        if (!active[k] || (t != start[k] && has_more(k))) continue;
        scanning[k] = 0;
        if (!R[k].finish()) active[k] = 0;
      }
    }
    for (int k = 0; k < n; ++k) swaps[k] = R[k].swaps;
  }
};

}  // namespace
}  // namespace cpu
}  // namespace dsnot
