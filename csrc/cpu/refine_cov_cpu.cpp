// CPU kernel of dsnot_kernels::refine_mask_cov: objectives 2 ("cov", window == 0) and 3
// ("cov_window", window >= 1) of docs/KERNEL_CONTRACT.md. Both score a swap by the change of the
// row's output error D M Dᵀ in float64, with g = D0 @ M given by the caller (one torch matmul, as
// the reference: masks are defined given that g) and the initial mask given by the caller.
//
// Per row: widen the weights, dm and the 256-lane error sum (contract order); the four candidate
// lists as composite (value, column) keys, of which only the first `need` are ordered
// (nth_element + sort: a row reads at most window + max_cycle_time entries of a list); then the
// cycles. g is updated eagerly, O(cols) per accepted swap, in the reference's rounding. Window
// mode caches the cross terms (2 w_q) w_r M_qr of both window pairs and refreshes one slot row or
// column per swap. Float64 arithmetic is never contracted into FMAs (-ffp-contract=off).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "dsnot_common.h"
#include "cpu/simd.h"
#include "refine_row.h"  // lane_tree, keep_if and the list ids kHi/kLo/kPlo/kPhi of the main CPU kernel

namespace dsnot {
namespace cpu {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

struct CovProblem {
  int64_t rows = 0, cols = 0;
  const void* weight = nullptr;        // (rows, cols) scalar_t
  const float* dmul = nullptr;         // sum_metric_row
  const float* divisor = nullptr;      // growth-key divisor: var, var ** p, or 1 (p == 0)
  const float* sqrt_scaler = nullptr;  // sqrtf(scaler_row)
  const float* metric = nullptr;       // initial metric (rows, cols) or null (= wanda); N:M q of "cov"
  const uint8_t* init_mask = nullptr;  // (rows, cols)
  const double* M = nullptr;           // (cols, cols), symmetric
  const double* g0 = nullptr;          // (rows, cols)
  int prune_m = 0;                     // 0 = unstructured
  int64_t max_cycles = 0, window = 0;  // window 0 = objective 2
  float thr = 0.f;
  uint8_t* mask_out = nullptr;
  int32_t* swaps_out = nullptr;
};

// Ascending composite key (ord(value), column); hi uses the complement of both (descending).
inline uint64_t asc_key(float v, int64_t j) { return composite_key(v, j); }
inline uint64_t desc_key(float v, int64_t j) { return ~composite_key(v, j); }
inline int64_t col_of(uint64_t key, bool desc) { return key_column(desc ? ~key : key); }

// One candidate list of a row: keys, of which [0, ordered) are sorted.
struct KeyList {
  std::vector<uint64_t> keys;
  bool desc = false;
  int64_t n() const { return static_cast<int64_t>(keys.size()); }
  void order_prefix(int64_t need) {  // the first `need` in order (linear selection, then a sort)
    need = std::min(need, n());
    if (need <= 0) return;
    if (need < n()) std::nth_element(keys.begin(), keys.begin() + (need - 1), keys.end());
    std::sort(keys.begin(), keys.begin() + need);
  }
  int64_t col(int64_t t) const { return col_of(keys[static_cast<size_t>(t)], desc); }
};

// K slots over a list (contract "Objective 3"): the first K entries, a used slot takes the next.
struct Window {
  std::vector<int64_t> slot;  // column, -1 = empty
  int64_t next = 0;
  void init(const KeyList& L, int64_t K) {
    slot.assign(static_cast<size_t>(K), -1);
    for (int64_t s = 0; s < K && s < L.n(); ++s) slot[static_cast<size_t>(s)] = L.col(s);
    next = std::min(K, L.n());
  }
  int64_t refill(const KeyList& L, int64_t s) {
    const int64_t c = next < L.n() ? L.col(next) : -1;
    if (next < L.n()) ++next;
    slot[static_cast<size_t>(s)] = c;
    return c;
  }
};

// Row stride of the unstructured cross-term cache and length of B: K rounded up to the vector
// width of best_pair (the padding has B = +inf, so it never wins).
constexpr int64_t kVec = 4;
inline int64_t padded(int64_t K) { return (K + kVec - 1) / kVec * kVec; }

// The first minimum, in row-major (q slot, r slot) order, of d = (A[qs] - C[qs * Kp + rs]) + B[rs]
// over the q slots with a finite A; +inf (flat = -1) if none. Pass 1 takes the minimum value with
// independent accumulators (no dependency chain through one running minimum: the kernel measured
// 1.6x faster at window 100 than with a scalar scan); pass 2 recomputes d in order up to the first
// one equal to it. That is the pair a scalar row-major scan with `<` picks, with the same operations per
// pair (no FMA). Compiled for AVX-512, AVX2 and the baseline ISA (GCC function multiversioning).

DSNOT_CPU_CLONES double best_pair(const double* A, const double* B, const double* C, int64_t K, int64_t Kp,
                                  int64_t* flat) {
  // Pass 1: the minimum value, with four independent accumulators.
  const v4d inf = {kInf, kInf, kInf, kInf};
  v4d m0 = inf, m1 = inf, m2 = inf, m3 = inf;
  auto vmin = [](v4d x, v4d y) { const v4l lt = x < y; return (v4d)(((v4l)x & lt) | ((v4l)y & ~lt)); };
  for (int64_t qs = 0; qs < K; ++qs) {
    if (!(A[qs] < kInf)) continue;  // empty q slot: no pair
    const v4d a = {A[qs], A[qs], A[qs], A[qs]};
    const double* crow = C + qs * Kp;
    int64_t rs = 0;
    for (; rs + 4 * kVec <= Kp; rs += 4 * kVec) {
      v4d c[4], b[4];
      std::memcpy(c, crow + rs, sizeof(c));
      std::memcpy(b, B + rs, sizeof(b));
      m0 = vmin((a - c[0]) + b[0], m0);
      m1 = vmin((a - c[1]) + b[1], m1);
      m2 = vmin((a - c[2]) + b[2], m2);
      m3 = vmin((a - c[3]) + b[3], m3);
    }
    for (; rs < Kp; rs += kVec) {
      v4d c, b;
      std::memcpy(&c, crow + rs, sizeof(c));
      std::memcpy(&b, B + rs, sizeof(b));
      m0 = vmin((a - c) + b, m0);
    }
  }
  const v4d mm = vmin(vmin(m0, m1), vmin(m2, m3));
  double v = kInf;
  for (int l = 0; l < kVec; ++l) v = mm[l] < v ? mm[l] : v;
  *flat = -1;
  if (!(v < kInf)) return v;
  // Pass 2: the first pair (row-major) whose d, recomputed with the same operations, equals the
  // minimum (-0.0 == +0.0, as a scan with < would see it).
  for (int64_t qs = 0; qs < K; ++qs) {
    if (!(A[qs] < kInf)) continue;
    const double a = A[qs];
    const double* crow = C + qs * Kp;
    for (int64_t rs = 0; rs < Kp; ++rs)
      if ((a - crow[rs]) + B[rs] == v) { *flat = qs * Kp + rs; return v; }
  }
  return v;
}

struct CovScratch {
  std::vector<double> w, g, A, B, cross[2];
  std::vector<float> dm;
  std::vector<uint8_t> chosen;  // N:M "cov": columns already chosen as q
  KeyList lists[4];
  Window win[4];
  explicit CovScratch(const CovProblem& P) {
    w.resize(P.cols); g.resize(P.cols); dm.resize(P.cols);
    if (P.prune_m > 0) chosen.resize(P.cols);
    const int64_t K = std::min(P.window, P.cols);
    if (K > 0) {
      const int64_t width = P.prune_m > 0 ? P.prune_m : padded(K);
      A.resize(K * width); B.resize(padded(K), kInf);
      cross[0].resize(K * width); cross[1].resize(K * width);
    }
  }
};

// (2 w_q) w_r M_qr, each op rounded.
inline double cross_term(const CovProblem& P, const double* w, int64_t q, int64_t r) {
  return ((2.0 * w[q]) * w[r]) * P.M[q * P.cols + r];
}

// g <- g + (w_q M[q, :] - w_r M[r, :])
inline void update_g(const CovProblem& P, double* g, double wq, double wr, int64_t q, int64_t r) {
  const double* mq = P.M + q * P.cols;
  const double* mr = P.M + r * P.cols;
  for (int64_t j = 0; j < P.cols; ++j) g[j] = g[j] + (wq * mq[j] - wr * mr[j]);
}

// Objective 2: the reference's cursors; a rejected pair consumes both, the row goes on.
int32_t cycles_linear(const CovProblem& P, int64_t i, CovScratch& S, uint8_t* out, const uint8_t* init, float err) {
  const int64_t cols = P.cols;
  const double* w = S.w.data();
  double* g = S.g.data();
  const float* dm = S.dm.data();
  const double* M = P.M;
  const bool nm = P.prune_m > 0;
  int64_t cur[4] = {0, 0, 0, 0};
  int32_t swaps = 0;
  if (nm) std::fill(S.chosen.begin(), S.chosen.end(), uint8_t{0});
  for (int64_t cycle = 0; cycle < P.max_cycles; ++cycle) {
    if (!(std::fabs(err) > P.thr)) break;
    const int gl = err > 0.0f ? kHi : kLo;
    if (cur[gl] >= S.lists[gl].n()) break;  // growth cursor out of candidates: the row stops
    const int64_t r = S.lists[gl].col(cur[gl]++);
    int64_t q = -1;
    if (nm) {  // smallest (initial metric, column) among initially kept, not yet chosen columns
      const int64_t start = r - r % P.prune_m;
      uint64_t best = ~0ull;
      const uint32_t inf_ord = ord_key(INFINITY);
      for (int64_t c = start; c < start + P.prune_m; ++c) {
        const float m = P.metric != nullptr ? P.metric[i * cols + c]
                                            : std::fabs(static_cast<float>(w[c])) * P.sqrt_scaler[c];
        const uint32_t o = ord_key(m);
        if (init[c] == 0 && S.chosen[c] == 0 && o < inf_ord) best = std::min(best, composite_key(m, c));
      }
      if (best == ~0ull) continue;  // no q in r's group: rejected, r consumed
      q = key_column(best);
    } else {
      const int pl = err < 0.0f ? kPhi : kPlo;
      if (cur[pl] >= S.lists[pl].n()) break;
      q = S.lists[pl].col(cur[pl]++);
    }
    const double wq = w[q], wr = w[r];
    const double delta = (((((2.0 * wq) * g[q] - (2.0 * wr) * g[r]) + (wq * wq) * M[q * cols + q]) +
                           (wr * wr) * M[r * cols + r]) - ((2.0 * wq) * wr) * M[q * cols + r]);
    if (!(delta < 0.0)) continue;
    update_g(P, g, wq, wr, q, r);
    out[q] = 1;
    out[r] = 0;
    if (nm) S.chosen[q] = 1;
    err = error_after(err, dm[q], dm[r]);
    ++swaps;
  }
  return swaps;
}

// Objective 3: the best pair of the two windows the sign of err picks (contract "Objective 3").
int32_t cycles_window(const CovProblem& P, CovScratch& S, uint8_t* out, const uint8_t* init, float err) {
  const int64_t cols = P.cols;
  const int64_t K = std::min(P.window, cols);
  const int64_t Kp = padded(K);  // unstructured cache stride (the padding is never read as a pair)
  const double* w = S.w.data();
  double* g = S.g.data();
  const float* dm = S.dm.data();
  const double* M = P.M;
  const bool nm = P.prune_m > 0;
  const int64_t m = P.prune_m;
  for (int l = 0; l < (nm ? 2 : 4); ++l) S.win[l].init(S.lists[l], K);
  // cross[1]: the err > 0 pair (plo x hi), cross[0]: err < 0 (phi x lo); N:M: (r slot, group pos).
  // Filled when a direction is first used (many rows never change the sign of err).
  bool filled[2] = {false, false};
  auto fill = [&](int dir) {
    const Window& gw = S.win[dir ? kHi : kLo];
    double* cx = S.cross[dir].data();
    if (nm) {
      for (int64_t rs = 0; rs < K; ++rs) {
        const int64_t r = gw.slot[rs];
        for (int64_t t = 0; t < m; ++t) cx[rs * m + t] = r < 0 ? 0.0 : cross_term(P, w, r - r % m + t, r);
      }
    } else {
      const Window& pw = S.win[dir ? kPlo : kPhi];
      for (int64_t qs = 0; qs < K; ++qs) {
        const int64_t q = pw.slot[qs];
        for (int64_t rs = 0; rs < K; ++rs) {
          const int64_t r = gw.slot[rs];
          cx[qs * Kp + rs] = (q < 0 || r < 0) ? 0.0 : cross_term(P, w, q, r);
        }
      }
    }
    filled[dir] = true;
  };
  double* A = S.A.data();
  double* B = S.B.data();
  int32_t swaps = 0;
  for (int64_t cycle = 0; cycle < P.max_cycles; ++cycle) {
    if (!(std::fabs(err) > P.thr)) break;
    const int dir = err > 0.0f ? 1 : 0;
    if (!filled[dir]) fill(dir);
    Window& gw = S.win[dir ? kHi : kLo];
    double* cx = S.cross[dir].data();
    for (int64_t rs = 0; rs < K; ++rs) {
      const int64_t r = gw.slot[rs];
      B[rs] = r < 0 ? kInf : (w[r] * w[r]) * M[r * cols + r] - (2.0 * w[r]) * g[r];
    }
    double best = kInf;
    int64_t bq = -1, br = -1, bqs = -1, brs = -1;
    if (nm) {
      for (int64_t rs = 0; rs < K; ++rs) {
        const int64_t r = gw.slot[rs];
        if (r < 0) continue;
        const int64_t start = r - r % m;
        for (int64_t t = 0; t < m; ++t) {
          const int64_t q = start + t;
          if (init[q] != 0 || out[q] != 0) continue;
          const double a = (2.0 * w[q]) * g[q] + (w[q] * w[q]) * M[q * cols + q];
          const double d = (a - cx[rs * m + t]) + B[rs];
          if (d < best) { best = d; bq = q; br = r; brs = rs; }
        }
      }
    } else {
      Window& pw = S.win[dir ? kPlo : kPhi];
      for (int64_t qs = 0; qs < K; ++qs) {
        const int64_t q = pw.slot[qs];
        A[qs] = q < 0 ? kInf : (2.0 * w[q]) * g[q] + (w[q] * w[q]) * M[q * cols + q];
      }
      int64_t flat = -1;
      best = best_pair(A, B, cx, K, Kp, &flat);
      if (flat >= 0) {
        bqs = flat / Kp;
        brs = flat % Kp;
        bq = pw.slot[bqs];
        br = gw.slot[brs];
      }
    }
    if (!(best < 0.0)) break;  // no pair lowers L: the row stops
    const double wq = w[bq], wr = w[br];
    update_g(P, g, wq, wr, bq, br);
    out[bq] = 1;
    out[br] = 0;
    err = error_after(err, dm[bq], dm[br]);
    ++swaps;
    const int64_t nr = gw.refill(S.lists[dir ? kHi : kLo], brs);
    if (nm) {
      for (int64_t t = 0; t < m; ++t) cx[brs * m + t] = nr < 0 ? 0.0 : cross_term(P, w, nr - nr % m + t, nr);
    } else {
      Window& pw = S.win[dir ? kPlo : kPhi];
      const int64_t nq = pw.refill(S.lists[dir ? kPlo : kPhi], bqs);
      for (int64_t qs = 0; qs < K; ++qs) {
        const int64_t q = pw.slot[qs];
        cx[qs * Kp + brs] = (q < 0 || nr < 0) ? 0.0 : cross_term(P, w, q, nr);
      }
      for (int64_t rs = 0; rs < K; ++rs) {
        const int64_t r = gw.slot[rs];
        cx[bqs * Kp + rs] = (nq < 0 || r < 0) ? 0.0 : cross_term(P, w, nq, r);
      }
    }
  }
  return swaps;
}

template <typename scalar_t>
void cov_row(const CovProblem& P, int64_t i, CovScratch& S) {
  const int64_t cols = P.cols;
  const scalar_t* wrow = static_cast<const scalar_t*>(P.weight) + i * cols;
  const uint8_t* init = P.init_mask + i * cols;
  uint8_t* out = P.mask_out + i * cols;
  std::memcpy(out, init, static_cast<size_t>(cols));
  std::memcpy(S.g.data(), P.g0 + i * cols, sizeof(double) * static_cast<size_t>(cols));
  const bool nm = P.prune_m > 0;
  for (auto& L : S.lists) L.keys.clear();
  S.lists[kHi].desc = true;
  alignas(64) float part[kSumLanes];
  for (int l = 0; l < kSumLanes; ++l) part[l] = 0.0f;
  for (int64_t j = 0; j < cols; ++j) {
    const float wf = static_cast<float>(wrow[j]);
    const float d = wf * P.dmul[j];
    S.w[j] = static_cast<double>(wf);
    S.dm[j] = d;
    part[j % kSumLanes] += keep_if(d, init[j]);
    if (init[j]) {  // growth candidates by key (spec §3); NaN keys are in neither list
      const float key = d / P.divisor[j];
      if (key > 0.0f) S.lists[kHi].keys.push_back(desc_key(key, j));
      else if (key < 0.0f) S.lists[kLo].keys.push_back(asc_key(key, j));
    } else if (!nm) {  // prune candidates by wanda
      const float wanda = std::fabs(wf) * P.sqrt_scaler[j];
      if (d < 0.0f) S.lists[kPlo].keys.push_back(asc_key(wanda, j));
      else if (d > 0.0f) S.lists[kPhi].keys.push_back(asc_key(wanda, j));
    }
  }
  const float err = lane_tree(part);
  const int64_t need = std::min(P.window, cols) + P.max_cycles;
  for (auto& L : S.lists) L.order_prefix(need);
  P.swaps_out[i] = P.window > 0 ? cycles_window(P, S, out, init, err) : cycles_linear(P, i, S, out, init, err);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> refine_mask_cov_cpu(
    const at::Tensor& weight, const at::Tensor& sum_metric_row, const at::Tensor& var,
    const at::Tensor& scaler_row, const std::optional<at::Tensor>& initial_metric,
    const at::Tensor& initial_mask, const at::Tensor& second_moment, const at::Tensor& g0,
    int64_t prune_m, int64_t max_cycle_time, double update_threshold, double pow_of_var_regrowing,
    int64_t window) {
  TORCH_CHECK(weight.dim() == 2 && weight.device().is_cpu() && weight.is_contiguous(),
              "refine_mask_cov (cpu): weight must be a contiguous 2-D CPU tensor, got ", weight.sizes());
  const auto wt = weight.scalar_type();
  TORCH_CHECK(wt == at::kFloat || wt == at::kHalf || wt == at::kBFloat16,
              "refine_mask_cov (cpu): weight must be float32, float16 or bfloat16, got ", wt);
  const int64_t rows = weight.size(0), cols = weight.size(1);
  auto check = [&](const at::Tensor& t, const char* name, at::ScalarType dt, at::IntArrayRef shape) {
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == dt && t.sizes() == shape,
                "refine_mask_cov (cpu): ", name, " must be a contiguous CPU ", dt, " tensor of shape ", shape,
                ", got ", t.scalar_type(), " ", t.sizes());
  };
  check(sum_metric_row, "sum_metric_row", at::kFloat, {cols});
  check(var, "var", at::kFloat, {cols});
  check(scaler_row, "scaler_row", at::kFloat, {cols});
  if (initial_metric.has_value()) check(*initial_metric, "initial_metric", at::kFloat, {rows, cols});
  check(initial_mask, "initial_mask", at::kBool, {rows, cols});
  check(second_moment, "second_moment", at::kDouble, {cols, cols});
  check(g0, "g0", at::kDouble, {rows, cols});
  TORCH_CHECK(prune_m >= 0 && (prune_m == 0 || cols % prune_m == 0),
              "refine_mask_cov (cpu): cols must be divisible by prune_m, got ", cols, " and ", prune_m);
  TORCH_CHECK(max_cycle_time >= 0 && max_cycle_time < (int64_t{1} << 31),
              "refine_mask_cov (cpu): max_cycle_time must be in [0, 2**31), got ", max_cycle_time);
  TORCH_CHECK(window >= 0, "refine_mask_cov (cpu): window must be >= 0, got ", window);
  TORCH_CHECK(std::isfinite(update_threshold) && update_threshold >= 0,
              "refine_mask_cov (cpu): update_threshold must be finite and >= 0, got ", update_threshold);

  at::Tensor mask = at::empty({rows, cols}, weight.options().dtype(at::kBool));
  at::Tensor swaps = at::zeros({rows}, weight.options().dtype(at::kInt));
  if (rows == 0 || cols == 0) return {mask, swaps};
  at::Tensor sqrt_scaler = at::empty({cols}, scaler_row.options());
  at::Tensor divisor = at::empty({cols}, var.options());
  {
    const float* sc = scaler_row.data_ptr<float>();
    const float* v = var.data_ptr<float>();
    float* sq = sqrt_scaler.data_ptr<float>();
    float* dv = divisor.data_ptr<float>();
    const double p = pow_of_var_regrowing;
    for (int64_t j = 0; j < cols; ++j) {
      sq[j] = std::sqrt(sc[j]);
      dv[j] = p == 0.0 ? 1.0f : p == 1.0 ? v[j] : var_pow(v[j], p);  // contract "growth key"
    }
  }
  CovProblem P;
  P.rows = rows; P.cols = cols;
  P.weight = weight.data_ptr();
  P.dmul = sum_metric_row.data_ptr<float>();
  P.divisor = divisor.data_ptr<float>();
  P.sqrt_scaler = sqrt_scaler.data_ptr<float>();
  P.metric = initial_metric.has_value() ? initial_metric->data_ptr<float>() : nullptr;
  P.init_mask = reinterpret_cast<const uint8_t*>(initial_mask.data_ptr<bool>());
  P.M = second_moment.data_ptr<double>();
  P.g0 = g0.data_ptr<double>();
  P.prune_m = static_cast<int>(prune_m);
  P.max_cycles = max_cycle_time;
  P.window = window;
  P.thr = static_cast<float>(update_threshold);
  P.mask_out = reinterpret_cast<uint8_t*>(mask.data_ptr<bool>());
  P.swaps_out = swaps.data_ptr<int32_t>();
  at::parallel_for(0, rows, 1, [&](int64_t b, int64_t e) {
    CovScratch S(P);
    for (int64_t i = b; i < e; ++i) {
      if (wt == at::kFloat) cov_row<float>(P, i, S);
      else if (wt == at::kHalf) cov_row<at::Half>(P, i, S);
      else cov_row<at::BFloat16>(P, i, S);
    }
  });
  return {mask, swaps};
}

}  // namespace cpu
}  // namespace dsnot

TORCH_LIBRARY_IMPL(dsnot_kernels, CPU, m) {
  m.impl("refine_mask_cov", &dsnot::cpu::refine_mask_cov_cpu);
}
