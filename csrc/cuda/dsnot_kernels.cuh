// CUDA refine_mask: initial mask + DSnoT swap loop, one thread block per row
// (docs/ALGORITHM.md §2-§3, bit-exact rules in docs/KERNEL_CONTRACT.md).
//
// Needs no torch headers: dsnot_kernels.cu instantiates it under nvcc, and the host emulation
// harness (simt_host_harness.cpp) compiles the same body as plain C++ (DSNOT_SIMT_HOST) to run it
// without a GPU. All threads of a block take the same branches (every decision is read from shared
// memory after a barrier), and every warp primitive is called by full warps.
//
// Per row, with 256 threads (thread l is lane l of the contract's error sum):
//   1. stage the weight row in shared memory (when it fits) and set per-column flags
//      (bit 1 = initially pruned, bit 0 = pruned now); with the key cache, compute each column's
//      ord(metric) once, and later its list and list key once, so that selection passes read
//      4 bytes of shared memory per column instead of recomputing sqrt / division;
//   2. initial selection: block radix select over composite keys (ord(metric) << 32 | col),
//      8 bits per pass from the top, stopping as soon as the k-th key's bucket is taken whole;
//      N:M ranks each column inside its group;
//   3. err (and e for the mse objective) in the contract's fixed order: strided lane partials,
//      xor butterflies inside each warp, a pairwise combine of the 8 warp sums;
//   4. the four cursor lists (growth hi/lo, prune plo/phi) are disjoint, so one radix select with
//      four histograms picks the first kListChunk of each; a rank sort orders them;
//   5. warp 0 runs the swap loop; when a cursor runs past its staged chunk while its list has more,
//      the block selects the next chunk (keys above the last one taken) and warp 0 goes on.
//
// Files: row_state.cuh (shared control area, per-row view), block_select.cuh (radix selection,
// list gathering), swap_loop.cuh (the swap loop), this file (one row, start to end).
#pragma once
#include <cmath>
#include <cstdint>

#include "block_select.cuh"
#include "row_state.cuh"
#include "swap_loop.cuh"

namespace dsnot {
namespace cuda {

// ---- one row ---------------------------------------------------------------------------------

template <int DT>
DSNOT_DEV void refine_row(const RefineParams& p, char* smem, int64_t row) {
  const int tid = simt::thread_id();
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int32_t cols = p.cols;
  const SmemLayout lay = smem_layout(sizeof(RowShared), cols, p.dtype, p.stage_weight != 0, p.cache_keys != 0);
  RowShared* S = reinterpret_cast<RowShared*>(smem);
  uint8_t* flags = reinterpret_cast<uint8_t*>(smem + lay.flags);
  const size_t row_bytes = static_cast<size_t>(cols) * weight_elem_size(DT);
  const char* wglobal = static_cast<const char*>(p.weight) + static_cast<size_t>(row) * row_bytes;

  RowCtx<DT> ctx;
  ctx.p = &p;
  ctx.cols = cols;
  ctx.flags = flags;
  ctx.kc = reinterpret_cast<uint32_t*>(smem + lay.keys);
  ctx.use_kc = p.cache_keys != 0;
  ctx.row = static_cast<int32_t>(row);
  ctx.w = wglobal;

  // 1. Stage the row (16-byte pieces where both ends are aligned) and the initial-mask flags.
  if (p.stage_weight) {
    char* wst = smem + lay.weight;
    size_t done_bytes = 0;
    if ((reinterpret_cast<uintptr_t>(wglobal) & 15) == 0) {
      const size_t n16 = row_bytes / 16;
      for (size_t i = tid; i < n16; i += kThreads) copy16(wst + 16 * i, wglobal + 16 * i);
      done_bytes = n16 * 16;
    }
    const int es = weight_elem_size(DT);
    for (size_t off = done_bytes + static_cast<size_t>(tid) * es; off < row_bytes; off += static_cast<size_t>(kThreads) * es) {
      if (es == 4) {
        *reinterpret_cast<uint32_t*>(wst + off) = *reinterpret_cast<const uint32_t*>(wglobal + off);
      } else {
        *reinterpret_cast<uint16_t*>(wst + off) = *reinterpret_cast<const uint16_t*>(wglobal + off);
      }
    }
    ctx.w = wst;
  }
  if (p.initial_mask != nullptr) {
    const uint8_t* imk = p.initial_mask + row * cols;
    for (int32_t j = tid; j < cols; j += kThreads) flags[j] = imk[j] != 0 ? 3 : 0;
  } else {
    for (int32_t j = tid; j < cols; j += kThreads) flags[j] = 0;
  }
  if (tid == 0) {
    select_setup(S, 0, p.initial_mask == nullptr && p.prune_n == 0, static_cast<uint32_t>(p.k_prune), false, 0);
    for (int L = 1; L < kLists; ++L) select_setup(S, L, false, 0, false, 0);
  }
  simt::sync_block();

  // Metric order keys, once: the initial selection and the N:M choice of q read them.
  const bool need_metric = p.initial_mask == nullptr || p.prune_n > 0;
  if (ctx.use_kc && need_metric) {
    ctx.use_kc = false;  // compute, not read, below
    for (int32_t j = tid; j < cols; j += kThreads) ctx.kc[j] = ctx.metric_ord(j);
    ctx.use_kc = true;
    simt::sync_block();
  }
  auto metric_key = [&](int32_t j) -> uint64_t {
    return (static_cast<uint64_t>(ctx.metric_ord(j)) << 32) | static_cast<uint32_t>(j);
  };

  // 2. Initial selection (§2).
  if (p.initial_mask == nullptr) {
    if (p.prune_n > 0) {
      const int32_t m = p.prune_m;
      for (int32_t j = tid; j < cols; j += kThreads) {
        const int32_t start = j - j % m;
        const uint64_t mine = metric_key(j);
        int32_t rank = 0;
        for (int32_t c = start; c < start + m; ++c) rank += metric_key(c) < mine ? 1 : 0;
        if (rank < p.prune_n) flags[j] = 3;
      }
    } else {
      auto by_metric = [&](int32_t j, uint64_t* lk) -> int {
        *lk = metric_key(j);
        return 0;
      };
      block_select(S, 1, cols, by_metric);
      for (int32_t j = tid; j < cols; j += kThreads) {
        if (sel_member(S, 0, metric_key(j))) flags[j] = 3;
      }
    }
    simt::sync_block();
  }

  // 3. err (float32) and, for mse, e (float64) in the contract's fixed order.
  //    With the key cache, the same sweep classifies every column once for step 4: its list in
  //    flags bits 2-4, the top half of its list key in kc (the bottom half is the column, or its
  //    complement for hi). Kept N:M columns are in no list and keep ord(metric) for nm_pick.
  bool refine = p.max_cycle_time > 0;
  if (refine) {
    const bool mse = p.objective == 1;
    const bool classify_now = ctx.use_kc;
    float part = 0.0f;
    double part_d = 0.0;
    for (int32_t base = 0; base < cols; base += kThreads) {
      const int32_t j = base + tid;
      bool pruned = false;
      float d = 0.0f;
      if (j < cols) {
        pruned = (flags[j] & 2) != 0;
        d = ctx.dm(j);
        if (classify_now) {
          uint64_t lk = 0;
          const int L = ctx.classify_dm(j, d, &lk);
          if (L >= 0) {
            ctx.kc[j] = static_cast<uint32_t>(lk >> 32);
            flags[j] = static_cast<uint8_t>(flags[j] | ((L + 1) << 2));
          }
        }
      }
      part = add_f(part, pruned ? d : 0.0f);
      if (mse) part_d = add_d(part_d, pruned ? ctx.a(j) : 0.0);
    }
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      part = add_f(part, simt::shfl_xor(part, d));
      if (mse) part_d = add_d(part_d, simt::shfl_xor(part_d, d));
    }
    if (lane == 0) {
      S->warp_f[warp] = part;
      S->warp_d[warp] = part_d;
    }
    simt::sync_block();
    if (tid == 0) {
      float f4[4];
      double d4[4];
      for (int i = 0; i < 4; ++i) {
        f4[i] = add_f(S->warp_f[2 * i], S->warp_f[2 * i + 1]);
        d4[i] = add_d(S->warp_d[2 * i], S->warp_d[2 * i + 1]);
      }
      const float err = add_f(add_f(f4[0], f4[1]), add_f(f4[2], f4[3]));
      S->err = err;
      S->e = add_d(add_d(d4[0], d4[1]), add_d(d4[2], d4[3]));
      S->sign0 = sign_of(err);
      S->cycle = 0;
      S->swaps = 0;
      S->done = 0;
      S->refill = 0;
      // A row with |err| <= thr never swaps: skip the lists.
      const bool active = fabsf(err) > p.thr;
      const bool nm = p.prune_n > 0;
      for (int L = 0; L < kLists; ++L) {
        select_setup(S, L, active && (L < kPlo || !nm), kListChunk, false, 0);
      }
      S->fill_mask = active ? (nm ? 0x3 : 0xF) : 0;
    }
    simt::sync_block();
    refine = S->fill_mask != 0;
  }

  // 4-5. Cursor lists, then the swap loop with on-demand refills.
  if (refine) {
    auto by_list = [&](int32_t j, uint64_t* lk) -> int { return ctx.classify(j, lk); };
    block_select(S, kLists, cols, by_list);
    gather_lists(S, ctx);
    if (tid < kLists) {
      S->list_tot[tid] = static_cast<int32_t>(S->sel_total[tid]);
      S->list_used[tid] = 0;
      if (!((S->fill_mask >> tid) & 1)) {
        S->list_n[tid] = 0;
        S->list_pos[tid] = 0;
      }
    }
    simt::sync_block();
    for (;;) {
      if (warp == 0) run_swaps(S, ctx, lane);
      simt::sync_block();
      if (S->done) break;
      const int refill = S->refill;
      if (tid == 0) {
        for (int L = 0; L < kLists; ++L) {
          const bool run = (refill >> L) & 1;
          const uint64_t last = run ? S->list_key[L][S->list_n[L] - 1] : 0;
          select_setup(S, L, run, kListChunk, true, last);
        }
        S->fill_mask = refill;
      }
      simt::sync_block();
      block_select(S, kLists, cols, by_list);
      gather_lists(S, ctx);
    }
  }

  // Output: every element of the row, 16-byte stores where aligned.
  uint8_t* out = p.mask_out + row * cols;
  int32_t j0 = 0;
  if ((reinterpret_cast<uintptr_t>(out) & 15) == 0) {
    const int32_t n16 = cols / 16;
    for (int32_t i = tid; i < n16; i += kThreads) mask16(out + 16 * i, flags + 16 * i);
    j0 = n16 * 16;
  }
  for (int32_t j = j0 + tid; j < cols; j += kThreads) out[j] = flags[j] & 1;
  if (tid == 0) p.swaps_out[row] = refine ? S->swaps : 0;
  simt::sync_block();  // the next row reuses the shared memory
}

}  // namespace cuda
}  // namespace dsnot
