// The swap loop of one row (docs/ALGORITHM.md §3, contract: "The swap loop"), run by warp 0 with the
// cursor positions in registers. Part of dsnot_kernels.cuh.
#pragma once
#include "row_state.cuh"

namespace dsnot {
namespace cuda {

// ---- the swap loop (warp 0) ------------------------------------------------------------------

// 0: the cursor (next staged position pos of list L) has a staged candidate; 1: the list is
// exhausted; 2: more must be selected first. list_n/list_pos/list_used/list_tot are fixed during
// one run_swaps call (positions live in registers until it returns).
DSNOT_DEV int cursor_status(const RowShared* S, int L, int32_t pos) {
  const int32_t n = S->list_n[L];
  if (pos < n) return 0;
  return S->list_used[L] + (n - S->list_pos[L]) < S->list_tot[L] ? 2 : 1;
}

// N:M (§3 step 1): the kept, not yet chosen column of r's group with the smallest (metric, col)
// and a metric below +inf; -1 if none.
template <class Ctx>
DSNOT_DEV int32_t nm_pick(const Ctx& ctx, int32_t r, int lane) {
  const int32_t m = ctx.p->prune_m;
  const int32_t start = r - r % m;
  uint64_t best = ~0ull;
  for (int32_t c = start + lane; c < start + m; c += 32) {
    if ((ctx.flags[c] & 3) == 0) {
      // Kept columns of an N:M row are in no list, so the cache still holds ord(metric) there.
      const uint32_t mo = ctx.metric_ord(c);
      if (mo < kOrdPosInf) {  // metric < +inf
        const uint64_t k = (static_cast<uint64_t>(mo) << 32) | static_cast<uint32_t>(c);
        best = k < best ? k : best;
      }
    }
  }
#pragma unroll
  for (int d = 16; d >= 1; d >>= 1) {
    const uint64_t o = simt::shfl_xor(best, d);
    best = o < best ? o : best;
  }
  return best == ~0ull ? -1 : static_cast<int32_t>(best & 0xFFFFFFFFull);
}

template <class Ctx>
DSNOT_DEV void run_swaps(RowShared* S, const Ctx& ctx, int lane) {
  const RefineParams& p = *ctx.p;
  const bool nm = p.prune_n > 0;
  float err = S->err;
  double e = S->e;
  int32_t cycle = S->cycle;
  int32_t swaps = S->swaps;
  const int32_t sign0 = S->sign0;
  // Cursor positions in registers (no shared-memory writes or warp barriers per cycle); the staged
  // candidates' columns and dm values are read from shared memory.
  int32_t pos_hi = S->list_pos[kHi], pos_lo = S->list_pos[kLo];
  int32_t pos_plo = S->list_pos[kPlo], pos_phi = S->list_pos[kPhi];
  int32_t done = 0;
  int32_t refill = 0;
  for (;;) {
    if (cycle >= p.max_cycle_time || !(fabsf(err) > p.thr)) {
      done = 1;
      break;
    }
    const bool r_hi = err > 0.0f;   // regrow from hi, else lo
    const bool q_phi = err < 0.0f;  // unstructured: prune from phi, else plo
    const int Lr = r_hi ? kHi : kLo;
    const int Lq = q_phi ? kPhi : kPlo;
    const int32_t pr = r_hi ? pos_hi : pos_lo;
    const int32_t pq = q_phi ? pos_phi : pos_plo;
    const int sr = cursor_status(S, Lr, pr);
    const int sq = nm ? 0 : cursor_status(S, Lq, pq);
    if (sr == 1 || sq == 1) {  // a cursor without candidates of its sign stops the row
      done = 1;
      break;
    }
    if (sr == 2 || sq == 2) {
      refill = (sr == 2 ? (1 << Lr) : 0) | (sq == 2 ? (1 << Lq) : 0);
      break;
    }
    const int32_t r = S->list_col[Lr][pr];
    const float dr = S->list_dm[Lr][pr];
    if (r_hi) ++pos_hi; else ++pos_lo;
    int32_t q;
    float dq = 0.0f;
    if (nm) {
      q = nm_pick(ctx, r, lane);
      if (q >= 0) dq = ctx.dm(q);
    } else {
      q = S->list_col[Lq][pq];
      dq = S->list_dm[Lq][pq];
      if (q_phi) ++pos_phi; else ++pos_plo;
    }
    if (q < 0) {  // N:M group without a candidate
      if (p.objective == 0) {
        done = 1;
        break;
      }
      ++cycle;  // mse: the pair is rejected, r is consumed
      continue;
    }
    const float after = error_after(err, dq, dr);
    bool accept;
    if (p.objective == 0) {
      if (!dsnot_accept(after, sign0, p.same_sign != 0)) {
        done = 1;
        break;
      }
      accept = true;
    } else {
      double t = 0.0;
      const double delta = mse_delta(e, ctx.a(q), ctx.a(r), ctx.b(q), ctx.b(r), &t);
      accept = delta < 0.0;
      if (accept) e = t;
    }
    if (accept) {
      if (nm) simt::sync_warp();  // nm_pick's flag reads by every lane come before the write
      if (lane == 0) {
        ctx.flags[q] = static_cast<uint8_t>(ctx.flags[q] | 1);
        ctx.flags[r] = static_cast<uint8_t>(ctx.flags[r] & ~1);
      }
      if (nm) simt::sync_warp();  // ... and the next nm_pick's after it
      err = after;
      ++swaps;
    }
    ++cycle;
  }
  simt::sync_warp();  // every lane has read the list state before lane 0 rewrites it
  if (lane == 0) {
    const int32_t pos[kLists] = {pos_hi, pos_lo, pos_plo, pos_phi};
#pragma unroll
    for (int L = 0; L < kLists; ++L) {
      S->list_used[L] += pos[L] - S->list_pos[L];
      S->list_pos[L] = pos[L];
    }
    S->err = err;
    S->e = e;
    S->cycle = cycle;
    S->swaps = swaps;
    S->done = done;
    S->refill = refill;
  }
  simt::sync_warp();
}

}  // namespace cuda
}  // namespace dsnot
