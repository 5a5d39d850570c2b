// CUDA refine_mask: initial mask + DSnoT swap loop, one thread block per row
// (ALGORITHM.md §2-§3, bit-exact rules in docs/KERNEL_CONTRACT.md).
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
#pragma once
#include <cmath>
#include <cstdint>

#include "../dsnot_common.h"
#include "dsnot_launch.h"
#include "simt.h"

#if !defined(DSNOT_SIMT_HOST)
#include <cuda_fp16.h>
#endif

namespace dsnot {
namespace cuda {

enum ListId : int { kHi = 0, kLo = 1, kPlo = 2, kPhi = 3 };
enum SelState : int32_t { kSelNone = 0, kSelRun = 1, kSelDone = 2, kSelAll = 3 };
constexpr uint32_t kOrdPosInf = 0xFF800000u;  // ord_key(+inf); larger ords are NaNs

// The control area of a block's shared memory.
struct RowShared {
  uint32_t hist[kLists][256];
  uint64_t sel_prefix[kLists];   // key prefix chosen so far (top 64 - sel_shift bits)
  uint64_t bound[kLists];        // refill: only keys strictly above this one
  uint32_t sel_k[kLists];        // keys still to take inside the prefix
  uint32_t sel_total[kLists];    // eligible keys (set by the first pass)
  int32_t sel_shift[kLists];
  int32_t sel_state[kLists];
  int32_t has_bound[kLists];
  uint32_t cnt[kLists];
  int32_t fill_mask;             // lists selected in this round
  int32_t pad0;
  uint64_t raw_key[kLists][kListChunk];
  uint64_t list_key[kLists][kListChunk];
  int32_t raw_col[kLists][kListChunk];
  int32_t list_col[kLists][kListChunk];
  float list_dm[kLists][kListChunk];  // dm of each staged candidate, for the swap loop
  int32_t list_n[kLists];        // staged candidates
  int32_t list_pos[kLists];      // next staged candidate
  int32_t list_tot[kLists];      // candidates of the whole list
  int32_t list_used[kLists];     // candidates taken so far
  float warp_f[kWarps];
  double warp_d[kWarps];
  double e;
  float err;
  int32_t sign0;
  int32_t cycle;
  int32_t swaps;
  int32_t done;
  int32_t refill;
};

// ---- scalar helpers (exact IEEE operations, no contraction) ---------------------------------

DSNOT_DEV float add_f(float a, float b) {
#if defined(DSNOT_SIMT_HOST)
  volatile float s = a + b;
  return s;
#else
  return __fadd_rn(a, b);
#endif
}

DSNOT_DEV double add_d(double a, double b) {
#if defined(DSNOT_SIMT_HOST)
  volatile double s = a + b;
  return s;
#else
  return __dadd_rn(a, b);
#endif
}

DSNOT_DEV float sqrt_rn(float x) {
#if defined(DSNOT_SIMT_HOST)
  return std::sqrt(x);
#else
  return __fsqrt_rn(x);
#endif
}

template <typename T>
DSNOT_DEV T ld_stat(const T* p) {
#if defined(DSNOT_SIMT_HOST)
  return *p;
#else
  return __ldg(p);
#endif
}

DSNOT_DEV float half_bits_to_float(uint16_t h) {
#if defined(DSNOT_SIMT_HOST)
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t man = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while ((man & 0x400u) == 0);
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((man & 0x3FFu) << 13);
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
#else
  return __half2float(__ushort_as_half(h));
#endif
}

DSNOT_DEV float bits_to_float(uint32_t u) {
#if defined(DSNOT_SIMT_HOST)
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#else
  return __uint_as_float(u);
#endif
}

// Element j of a weight row (staged or in global memory) as float32; fp16/bf16 widen exactly.
template <int DT>
DSNOT_DEV float weight_at(const void* row, int32_t j) {
  if (DT == kF32) return static_cast<const float*>(row)[j];
  const uint16_t h = static_cast<const uint16_t*>(row)[j];
  if (DT == kF16) return half_bits_to_float(h);
  return bits_to_float(static_cast<uint32_t>(h) << 16);
}

// 16-byte copy between 16-byte aligned addresses.
DSNOT_DEV void copy16(void* dst, const void* src) {
#if defined(DSNOT_SIMT_HOST)
  std::memcpy(dst, src, 16);
#else
  *static_cast<uint4*>(dst) = *static_cast<const uint4*>(src);
#endif
}

// out[0..16) = in[0..16) & 1 (bit 0 of the flags), both 16-byte aligned.
DSNOT_DEV void mask16(uint8_t* out, const uint8_t* in) {
#if defined(DSNOT_SIMT_HOST)
  uint32_t v[4];
  std::memcpy(v, in, 16);
  for (int t = 0; t < 4; ++t) v[t] &= 0x01010101u;
  std::memcpy(out, v, 16);
#else
  uint4 v = *reinterpret_cast<const uint4*>(in);
  v.x &= 0x01010101u;
  v.y &= 0x01010101u;
  v.z &= 0x01010101u;
  v.w &= 0x01010101u;
  *reinterpret_cast<uint4*>(out) = v;
#endif
}

// ---- the per-row view ------------------------------------------------------------------------

template <int DT>
struct RowCtx {
  const RefineParams* p;
  const void* w;            // weight row, shared or global memory
  int32_t row;              // rows < 2**31 (checked by the launcher): one register, not a pointer
  uint8_t* flags;           // shared, bit 0 = pruned now, bit 1 = initially pruned, bits 2-4 = list + 1
  uint32_t* kc;             // shared key cache: ord(metric), then list keys (when use_kc)
  bool use_kc;              // kc always points into shared memory (32-bit addressing); this says
                            // whether it holds keys or the keys are recomputed
  int32_t cols;

  DSNOT_DEV float wv(int32_t j) const { return weight_at<DT>(w, j); }
  DSNOT_DEV float dm(int32_t j) const { return mul_rn(wv(j), ld_stat(p->sum_metric_row + j)); }
  DSNOT_DEV float wanda(int32_t j) const {
    return mul_rn(fabsf(wv(j)), sqrt_rn(ld_stat(p->scaler_row + j)));
  }
  DSNOT_DEV float metric(int32_t j) const {
    return p->initial_metric != nullptr ? ld_stat(p->initial_metric + static_cast<int64_t>(row) * cols + j) : wanda(j);
  }
  DSNOT_DEV float gkey(float d, int32_t j) const {
    const float v = ld_stat(p->var + j);
    const float vp = p->key_mode == 2 ? ld_stat(p->varp + j) : 0.0f;
    return growth_key(d, v, vp, p->key_mode);
  }
  DSNOT_DEV double a(int32_t j) const { return mse_a(wv(j), ld_stat(p->mean + j)); }
  DSNOT_DEV double b(int32_t j) const { return mse_b(wv(j), ld_stat(p->var + j)); }

  // Order key of the initial selection: ord(metric) (cached when kc is there).
  DSNOT_DEV uint32_t metric_ord(int32_t j) const { return use_kc ? kc[j] : ord_key(metric(j)); }

  // The cursor list of column j and its order key (ascending = the order the cursor takes):
  // hi: (gkey, j) descending, lo: (gkey, j) ascending, plo/phi: (wanda, j) ascending.
  // With the key cache, refine_row has stored the list in the flags and the key's top half in kc.
  DSNOT_DEV int classify(int32_t j, uint64_t* lkey) const {
    if (use_kc) {
      const int L = ((flags[j] >> 2) & 7) - 1;
      if (L >= 0) {
        const uint32_t lo32 = L == kHi ? ~static_cast<uint32_t>(j) : static_cast<uint32_t>(j);
        *lkey = (static_cast<uint64_t>(kc[j]) << 32) | lo32;
      }
      return L;
    }
    return classify_compute(j, lkey);
  }

  DSNOT_DEV int classify_compute(int32_t j, uint64_t* lkey) const { return classify_dm(j, dm(j), lkey); }

  // classify_compute with dm(j) = d already at hand.
  DSNOT_DEV int classify_dm(int32_t j, float d, uint64_t* lkey) const {
    const uint8_t f = flags[j];
    if (f & 2) {
      const float g = gkey(d, j);
      if (g > 0.0f) {
        *lkey = ~composite_key(g, j);
        return kHi;
      }
      if (g < 0.0f) {
        *lkey = composite_key(g, j);
        return kLo;
      }
      return -1;  // zero or NaN: never a candidate
    }
    if (p->prune_n > 0) return -1;
    if (d < 0.0f) {
      *lkey = composite_key(wanda(j), j);
      return kPlo;
    }
    if (d > 0.0f) {
      *lkey = composite_key(wanda(j), j);
      return kPhi;
    }
    return -1;
  }
};

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
