// Block-wide radix selection over 64-bit order keys, for up to four disjoint lists at once, and
// the gathering + rank sort of the selected cursor candidates (docs/ALGORITHM.md §2-§3). Part of
// dsnot_kernels.cuh.
#pragma once
#include "row_state.cuh"

namespace dsnot {
namespace cuda {

// ---- block radix select ----------------------------------------------------------------------

// Lists to select must be set up (select_setup by one thread, then a barrier) before the call.
DSNOT_DEV void select_setup(RowShared* S, int L, bool run, uint32_t kmax, bool has_bound, uint64_t bound) {
  S->sel_state[L] = run ? kSelRun : kSelNone;
  S->sel_k[L] = kmax;
  S->sel_total[L] = 0;
  S->sel_prefix[L] = 0;
  S->sel_shift[L] = 64;
  S->has_bound[L] = has_bound ? 1 : 0;
  S->bound[L] = bound;
  S->cnt[L] = 0;
}

DSNOT_DEV bool sel_eligible(const RowShared* S, int L, uint64_t lkey) {
  return !S->has_bound[L] || lkey > S->bound[L];
}

// After block_select: is this key one of the selected ones of list L?
DSNOT_DEV bool sel_member(const RowShared* S, int L, uint64_t lkey) {
  const int32_t st = S->sel_state[L];
  if (st == kSelNone || st == kSelRun || !sel_eligible(S, L, lkey)) return false;
  if (st == kSelAll) return true;
  return (lkey >> S->sel_shift[L]) <= S->sel_prefix[L];
}

// For every list L in state kSelRun: find the min(sel_k, eligible count) smallest eligible keys.
// classify(j, &lkey) -> list id or -1. Ends with the lists in kSelNone / kSelAll / kSelDone.
template <class Classify>
DSNOT_DEV void block_select(RowShared* S, int nlists, int32_t cols, const Classify& classify) {
  const int tid = simt::thread_id();
  const int lane = tid & 31;
  const int warp = tid >> 5;
  for (int pass = 0; pass < 8; ++pass) {
    bool any = false;
    for (int L = 0; L < nlists; ++L) any = any || S->sel_state[L] == kSelRun;
    if (!any) break;
    for (int i = tid; i < nlists * 256; i += kThreads) (&S->hist[0][0])[i] = 0;
    simt::sync_block();
    for (int32_t base = 0; base < cols; base += kThreads) {
      const int32_t j = base + tid;
      uint32_t bin = 0xFFFFFFFFu;
      if (j < cols) {
        uint64_t lk = 0;
        const int L = classify(j, &lk);
        if (L >= 0 && S->sel_state[L] == kSelRun && sel_eligible(S, L, lk)) {
          const int sh = S->sel_shift[L];
          if (sh == 64 || (lk >> sh) == S->sel_prefix[L]) {
            bin = static_cast<uint32_t>(L) * 256u + static_cast<uint32_t>((lk >> (sh - 8)) & 0xFFu);
          }
        }
      }
      // Lanes with the same bucket add once (a warp's keys often share the top bucket).
      const uint32_t peers = simt::match_any(bin);
      if (bin != 0xFFFFFFFFu && simt::ffs(peers) - 1 == lane) {
        simt::atomic_add(&(&S->hist[0][0])[bin], static_cast<uint32_t>(simt::popc(peers)));
      }
    }
    simt::sync_block();
    if (warp < nlists && S->sel_state[warp] == kSelRun) {
      const int L = warp;
      uint32_t h[8];
      uint32_t local = 0;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        h[i] = S->hist[L][lane * 8 + i];
        local += h[i];
      }
      uint32_t incl = local;
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const uint32_t o = simt::shfl_up(incl, d);
        if (lane >= d) incl += o;
      }
      const uint32_t total = simt::shfl(incl, 31);
      uint32_t k = S->sel_k[L];
      const uint64_t prefix = S->sel_prefix[L];
      const int shift = S->sel_shift[L];
      simt::sync_warp();  // every lane has read the state before one lane rewrites it
      if (pass == 0) {
        k = k < total ? k : total;
        if (lane == 0) S->sel_total[L] = total;
      }
      if (pass == 0 && (k == 0 || k == total)) {
        if (lane == 0) {
          S->sel_k[L] = k;
          S->sel_state[L] = k == 0 ? kSelNone : kSelAll;
        }
      } else {
        uint32_t c = incl - local;  // keys in lower buckets
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          if (c < k && k <= c + h[i]) {  // the k-th key is in bucket lane*8+i
            const uint32_t rest = k - c;
            S->sel_prefix[L] = (prefix << 8) | static_cast<uint64_t>(lane * 8 + i);
            S->sel_shift[L] = shift - 8;
            S->sel_k[L] = rest;
            S->sel_state[L] = rest == h[i] ? kSelDone : kSelRun;
          }
          c += h[i];
        }
      }
    }
    simt::sync_block();
  }
}

// After block_select over the cursor lists: gather each filled list's members and order them.
template <class Ctx>
DSNOT_DEV void gather_lists(RowShared* S, const Ctx& ctx) {
  const int tid = simt::thread_id();
  const int fill = S->fill_mask;
  for (int32_t base = 0; base < ctx.cols; base += kThreads) {
    const int32_t j = base + tid;
    if (j < ctx.cols) {
      uint64_t lk = 0;
      const int L = ctx.classify(j, &lk);
      if (L >= 0 && ((fill >> L) & 1) && sel_member(S, L, lk)) {
        const uint32_t idx = simt::atomic_add(&S->cnt[L], 1u);
        S->raw_key[L][idx] = lk;
        S->raw_col[L][idx] = j;
      }
    }
  }
  simt::sync_block();
  for (int e = tid; e < kLists * kListChunk; e += kThreads) {
    const int L = e / kListChunk;
    const int a = e % kListChunk;
    const int n = static_cast<int>(S->cnt[L]);
    if (((fill >> L) & 1) && a < n) {
      const uint64_t mine = S->raw_key[L][a];
      int rank = 0;
      for (int bidx = 0; bidx < n; ++bidx) rank += S->raw_key[L][bidx] < mine ? 1 : 0;
      const int32_t col = S->raw_col[L][a];
      S->list_key[L][rank] = mine;
      S->list_col[L][rank] = col;
      S->list_dm[L][rank] = ctx.dm(col);
    }
  }
  if (tid < kLists && ((fill >> tid) & 1)) {
    S->list_n[tid] = static_cast<int32_t>(S->cnt[tid]);
    S->list_pos[tid] = 0;
  }
  simt::sync_block();
}

}  // namespace cuda
}  // namespace dsnot
