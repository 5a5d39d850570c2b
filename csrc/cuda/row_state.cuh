// Per-row state of the CUDA refine kernel: the shared-memory control area (RowShared), exact
// scalar helpers, weight access and the per-row view (RowCtx) with the contract's per-element
// quantities (docs/KERNEL_CONTRACT.md). Part of dsnot_kernels.cuh; no torch headers.
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

}  // namespace cuda
}  // namespace dsnot
