// CPU kernel of dsnot_kernels::refine_mask_swap: objective 4 ("swap") of docs/KERNEL_CONTRACT.md.
// Each cycle a row takes the pair (q kept, r pruned) with the smallest
//     delta = (A_q - ((2 w_q) w_r) M_qr) + B_r,   A_q = (2 w_q) g_q + (w_q w_q) M_qq,
//                                                 B_r = (w_r w_r) M_rr - (2 w_r) g_r
// (float64, each op rounded, no FMA: -ffp-contract=off), ties to the lowest q then the lowest r,
// and applies it while delta < 0, updating g = g + (w_q M[q, :] - w_r M[r, :]) eagerly. g0 and the
// initial mask come from the caller (the reference's shared matmul and the main op).
//
// The exact search (unstructured). A brute-force cycle reads every (kept, pruned) pair. Here each
// kept q carries L_q, a lower bound of min_r (B_r - C_qr) over the pruned r (C_qr the cross term),
// so lb_q = A_q + L_q bounds every delta of row q of the pair matrix. A cycle scans exactly (one
// contiguous row of M, vectorised) only the q whose lb_q can still reach the best delta found, in
// increasing lb_q order, and stops at the first lb_q above it. After an accepted swap the bounds
// stay valid by exact bookkeeping: B moves by ΔB_r (computed), so L_q += min_r ΔB_r; the newly
// pruned q* adds one pair per kept q (one row of M, O(cols)); the newly kept r* gets L = -inf and is
// scanned when next needed. A second bound, Cauchy-Schwarz on M (|M_qr| <= rho s_q s_r,
// s = sqrt(diag M), rho measured once per call), gives min_r (B_r - 2 rho a_q b_r) for every q in
// O(cols) per cycle through the lower envelope of lines in a_q = |w_q| s_q; a row takes the larger
// of the two. Every bound is lowered by a relative slack far above the rounding of the float64
// operations, so it bounds the COMPUTED delta: the search returns the pair the full scan returns
// (tests/test_swap_cpu_kernel.py compares it with search=1, the full scan, and the reference).
// N:M compares only pairs within a group: O(cols * M) per cycle, scanned in full.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "dsnot_common.h"

namespace dsnot {
namespace cpu {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// Slack of every bound, relative to the row's scale (largest |A|, |B|, |cross term|): the float64
// rounding of a delta or a bound update is below 4 * 2^-53 of that scale; 1e-10 is 2e5 times more.
constexpr double kSlack = 1e-10;

struct SwapProblem {
  int64_t rows = 0, cols = 0;
  const void* weight = nullptr;        // (rows, cols) scalar_t
  const uint8_t* init_mask = nullptr;  // (rows, cols), 1 = pruned
  const double* M = nullptr;           // (cols, cols), exactly symmetric
  const double* diag = nullptr;        // (cols,) M_jj
  const double* sd = nullptr;          // (cols,) sqrt(max(M_jj, 0)) (Cauchy-Schwarz)
  const double* g0 = nullptr;          // (rows, cols)
  double m_abs_max = 0.0;              // max |M_qr|
  double rho = kInf;                   // max |M_qr| / (s_q s_r); inf = no Cauchy-Schwarz bound
  int prune_m = 0;                     // 0 = unstructured
  int64_t max_cycles = 0;
  int search = 0;                      // 0 = bounded (fast), 1 = full scan of every pair
  uint8_t* mask_out = nullptr;
  int32_t* swaps_out = nullptr;
  int64_t* pairs_out = nullptr;        // pairs whose delta was computed, per row
};

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(DSNOT_CPU_NO_CLONES)
#define DSNOT_SWAP_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define DSNOT_SWAP_CLONES
#endif
typedef double v4d __attribute__((vector_size(32)));
typedef int64_t v4l __attribute__((vector_size(32)));

// Row q of the pair matrix: the first minimum over j of d_j = (a - (tq w_j) M_qj) + B_j, where
// B_j = +inf on kept columns (never a pair). Pass 1: the minimum with independent accumulators;
// pass 2: the first j whose d, recomputed with the same operations, equals it (-0.0 == +0.0, as a
// scan with `<`). *arg = -1 if no finite d.
DSNOT_SWAP_CLONES double row_min(double a, double tq, const double* w, const double* B, const double* Mq,
                                 int64_t n, int64_t* arg) {
  const v4d inf = {kInf, kInf, kInf, kInf};
  const v4d av = {a, a, a, a};
  const v4d tv = {tq, tq, tq, tq};
  v4d m0 = inf, m1 = inf;
  auto vmin = [](v4d x, v4d y) { const v4l lt = x < y; return (v4d)(((v4l)x & lt) | ((v4l)y & ~lt)); };
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    v4d w0, w1, b0, b1, c0, c1;
    std::memcpy(&w0, w + j, sizeof(w0)); std::memcpy(&w1, w + j + 4, sizeof(w1));
    std::memcpy(&b0, B + j, sizeof(b0)); std::memcpy(&b1, B + j + 4, sizeof(b1));
    std::memcpy(&c0, Mq + j, sizeof(c0)); std::memcpy(&c1, Mq + j + 4, sizeof(c1));
    m0 = vmin((av - (tv * w0) * c0) + b0, m0);
    m1 = vmin((av - (tv * w1) * c1) + b1, m1);
  }
  const v4d mm = vmin(m0, m1);
  double v = kInf;
  for (int l = 0; l < 4; ++l) v = mm[l] < v ? mm[l] : v;
  for (; j < n; ++j) {
    const double d = (a - (tq * w[j]) * Mq[j]) + B[j];
    v = d < v ? d : v;
  }
  *arg = -1;
  if (!(v < kInf)) return v;
  for (int64_t k = 0; k < n; ++k)
    if ((a - (tq * w[k]) * Mq[k]) + B[k] == v) { *arg = k; return v; }
  return v;
}

struct SwapScratch {
  std::vector<double> w, g, A, B, Bold, L, cs, key, hm, hb;
  std::vector<uint8_t> pruned;
  std::vector<int32_t> ps, ks;                  // pruned / kept columns by (a_j, j) ascending
  std::vector<std::pair<double, int64_t>> cand; // (lb, q) to visit this cycle
  explicit SwapScratch(const SwapProblem& P) {
    const size_t c = static_cast<size_t>(P.cols);
    w.resize(c); g.resize(c); A.resize(c); B.resize(c); Bold.resize(c); L.resize(c); cs.resize(c);
    key.resize(c); hm.resize(c); hb.resize(c); pruned.resize(c);
  }
};

// g <- g + (w_q M[q, :] - w_r M[r, :]), each op rounded (contract "Objective 2").
inline void update_g(const SwapProblem& P, double* g, double wq, double wr, int64_t q, int64_t r) {
  const double* mq = P.M + q * P.cols;
  const double* mr = P.M + r * P.cols;
  for (int64_t j = 0; j < P.cols; ++j) g[j] = g[j] + (wq * mq[j] - wr * mr[j]);
}

inline double a_term(double w, double g, double md) { return (2.0 * w) * g + (w * w) * md; }
inline double b_term(double w, double g, double md) { return (w * w) * md - (2.0 * w) * g; }

// A on kept columns (+inf on pruned), B on pruned columns (+inf on kept); returns max |A|, |B|.
// Branch-free: the kept/pruned pattern of a row is random.
double side_terms(const SwapProblem& P, SwapScratch& S) {
  double mx = 0.0;
  const double* w = S.w.data();
  const double* g = S.g.data();
  const uint8_t* pr = S.pruned.data();
  double* A = S.A.data();
  double* B = S.B.data();
  for (int64_t j = 0; j < P.cols; ++j) {
    const double a = a_term(w[j], g[j], P.diag[j]), b = b_term(w[j], g[j], P.diag[j]);
    const bool p = pr[j] != 0;
    A[j] = p ? kInf : a;
    B[j] = p ? b : kInf;
    const double v = std::fabs(p ? b : a);
    mx = v > mx ? v : mx;
  }
  return mx;
}

// (a_j, j) order of the row's columns.
struct KeyLess {
  const double* key;
  bool operator()(int32_t x, int32_t y) const { return key[x] < key[y] || (key[x] == key[y] && x < y); }
};

inline void move_between(std::vector<int32_t>& from, std::vector<int32_t>& to, int32_t c, KeyLess less) {
  from.erase(std::lower_bound(from.begin(), from.end(), c, less));
  to.insert(std::lower_bound(to.begin(), to.end(), c, less), c);
}

// Cauchy-Schwarz bound of every kept q: cs_q <= min_{r pruned} (B_r - C_qr) up to rounding, from
// |C_qr| <= 2 rho a_q a_r (a_j = |w_j| s_j): the lower envelope of the lines y = B_r - 2 rho a_r x
// (r pruned, slopes decreasing in the a order) evaluated at x = a_q (kept, x increasing).
void cs_bounds(const SwapProblem& P, SwapScratch& S) {
  const double tr = 2.0 * P.rho;
  double* hm = S.hm.data();
  double* hb = S.hb.data();
  size_t n = 0;
  for (const int32_t r : S.ps) {
    const double m = -tr * S.key[r], b = S.B[r];
    if (n > 0 && hm[n - 1] == m) {  // equal slopes: the lower intercept
      if (hb[n - 1] <= b) continue;
      --n;
    }
    // drop the last line if the new one meets the one before it no later than the last does
    while (n >= 2 && (b - hb[n - 2]) * (hm[n - 2] - hm[n - 1]) <= (hb[n - 1] - hb[n - 2]) * (hm[n - 2] - m)) --n;
    hm[n] = m;
    hb[n] = b;
    ++n;
  }
  size_t h = 0;
  for (const int32_t q : S.ks) {
    if (n == 0) { S.cs[q] = kInf; continue; }
    const double x = S.key[q];
    while (h + 1 < n && hb[h + 1] + hm[h + 1] * x <= hb[h] + hm[h] * x) ++h;
    S.cs[q] = hb[h] + hm[h] * x;
  }
}

// Unstructured cycles; returns the swap count.
int32_t cycles_unstructured(const SwapProblem& P, SwapScratch& S, uint8_t* out, int64_t* pairs) {
  const int64_t cols = P.cols;
  const double* M = P.M;
  double* w = S.w.data();
  double* A = S.A.data();
  double* B = S.B.data();
  double* L = S.L.data();
  const uint8_t* pr = S.pruned.data();
  int64_t n_pruned = 0;
  double w_max = 0.0;
  for (int64_t j = 0; j < cols; ++j) {
    n_pruned += S.pruned[j];
    w_max = std::max(w_max, std::fabs(w[j]));
  }
  const int64_t n_kept = cols - n_pruned;
  if (n_pruned == 0 || n_kept == 0) return 0;
  const double c_max = ((2.0 * w_max) * w_max) * P.m_abs_max;  // every |cross term|
  const bool brute = P.search == 1;
  double scale = side_terms(P, S) + c_max;
  // Far from overflow only (the bounds multiply two such magnitudes).
  const bool use_cs = !brute && std::isfinite(P.rho) && scale < 1e100;
  const KeyLess less{S.key.data()};
  if (use_cs) {
    S.ps.clear();
    S.ks.clear();
    for (int64_t j = 0; j < cols; ++j) {
      S.key[j] = std::fabs(w[j]) * P.sd[j];
      (S.pruned[j] ? S.ps : S.ks).push_back(static_cast<int32_t>(j));
    }
    std::sort(S.ps.begin(), S.ps.end(), less);
    std::sort(S.ks.begin(), S.ks.end(), less);
  }
  for (int64_t j = 0; j < cols; ++j) L[j] = -kInf;
  int32_t swaps = 0;
  for (int64_t cycle = 0; cycle < P.max_cycles; ++cycle) {
    double best = 0.0;  // only pairs with delta < 0 matter: a row stops when none is
    int64_t bq = -1, br = -1;
    auto scan = [&](int64_t q) {
      int64_t r = -1;
      const double e = row_min(A[q], 2.0 * w[q], w, B, M + q * cols, cols, &r);
      *pairs += n_pruned;
      if (!brute) L[q] = (e - A[q]) - kSlack * (scale + std::fabs(e));
      if (r >= 0 && (e < best || (e == best && bq >= 0 && q < bq))) { best = e; bq = q; br = r; }
    };
    if (brute) {
      for (int64_t q = 0; q < cols; ++q)
        if (!pr[q]) scan(q);
    } else {
      if (use_cs) {
        cs_bounds(P, S);
        for (const int32_t q : S.ks) {
          const double c = S.cs[q] - kSlack * 2.0 * (scale + std::fabs(S.cs[q]));
          L[q] = c > L[q] ? c : L[q];
        }
      }
      S.cand.clear();
      for (int64_t q = 0; q < cols; ++q) {  // A = +inf on pruned columns
        const double lb = (A[q] + L[q]) - kSlack * (scale + std::fabs(L[q]));
        if (lb < 0.0) S.cand.emplace_back(lb, q);
      }
      std::sort(S.cand.begin(), S.cand.end());
      for (const auto& c : S.cand) {
        if (c.first > best) break;
        scan(c.second);
      }
    }
    if (bq < 0) break;  // no pair lowers L = D M Dᵀ: a local optimum
    const double wq = w[bq], wr = w[br];
    update_g(P, S.g.data(), wq, wr, bq, br);
    out[bq] = 1;
    out[br] = 0;
    S.pruned[bq] = 1;
    S.pruned[br] = 0;
    ++swaps;
    if (brute) {
      scale = side_terms(P, S) + c_max;
      continue;
    }
    if (use_cs) {
      move_between(S.ps, S.ks, static_cast<int32_t>(br), less);
      move_between(S.ks, S.ps, static_cast<int32_t>(bq), less);
    }
    std::memcpy(S.Bold.data(), B, sizeof(double) * static_cast<size_t>(cols));
    scale = std::max(scale, side_terms(P, S) + c_max);
    // B moved by ΔB_r on the columns pruned before and after: every L_q moves by at least its min.
    double dmin = kInf, dmax_abs = 0.0;
    const double* bold = S.Bold.data();
    for (int64_t j = 0; j < cols; ++j) {
      const bool both = pr[j] != 0 && j != bq;
      const double d = both ? B[j] - bold[j] : kInf;
      dmin = d < dmin ? d : dmin;
      const double ad = both ? std::fabs(d) : 0.0;
      dmax_abs = ad > dmax_abs ? ad : dmax_abs;
    }
    if (!(dmin < kInf)) dmin = 0.0;  // q* is the only pruned column now
    const double eps = kSlack * (scale + dmax_abs);
    const double* mrow = M + bq * cols;  // M[:, q*] = M[q*, :] (symmetric)
    const double bnew = B[bq];
    for (int64_t q = 0; q < cols; ++q) {  // kept q: the bound moved, and the new pair (q, q*)
      const double pair = bnew - ((2.0 * w[q]) * wq) * mrow[q];
      const double moved = (L[q] + dmin) - (eps + kSlack * std::fabs(L[q]));
      const double lo = pair - kSlack * (scale + std::fabs(pair));
      const double nl = moved < lo ? moved : lo;
      L[q] = pr[q] ? L[q] : nl;
    }
    *pairs += n_kept;  // the (q, q*) pairs just read
    L[br] = -kInf;    // r* is kept now: scanned when next needed (or bounded by Cauchy-Schwarz)
  }
  return swaps;
}

// N:M cycles: pairs within a group only, all of them each cycle (O(cols * M)).
int32_t cycles_nm(const SwapProblem& P, SwapScratch& S, uint8_t* out, int64_t* pairs) {
  const int64_t cols = P.cols, m = P.prune_m;
  const double* M = P.M;
  const double* w = S.w.data();
  const double* A = S.A.data();
  const double* B = S.B.data();
  int32_t swaps = 0;
  side_terms(P, S);
  for (int64_t cycle = 0; cycle < P.max_cycles; ++cycle) {
    double best = kInf;
    int64_t bq = -1, br = -1;
    for (int64_t q = 0; q < cols; ++q) {
      if (S.pruned[q]) continue;
      const double a = A[q], tq = 2.0 * w[q];
      const int64_t start = q - q % m;
      for (int64_t r = start; r < start + m; ++r) {
        if (!S.pruned[r]) continue;
        const double d = (a - (tq * w[r]) * M[q * cols + r]) + B[r];
        ++*pairs;
        if (d < best) { best = d; bq = q; br = r; }
      }
    }
    if (!(best < 0.0)) break;
    update_g(P, S.g.data(), w[bq], w[br], bq, br);
    out[bq] = 1;
    out[br] = 0;
    S.pruned[bq] = 1;
    S.pruned[br] = 0;
    ++swaps;
    side_terms(P, S);
  }
  return swaps;
}

template <typename scalar_t>
void swap_row(const SwapProblem& P, int64_t i, SwapScratch& S) {
  const int64_t cols = P.cols;
  const scalar_t* wrow = static_cast<const scalar_t*>(P.weight) + i * cols;
  const uint8_t* init = P.init_mask + i * cols;
  uint8_t* out = P.mask_out + i * cols;
  std::memcpy(out, init, static_cast<size_t>(cols));
  std::memcpy(S.g.data(), P.g0 + i * cols, sizeof(double) * static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) {
    S.w[j] = static_cast<double>(static_cast<float>(wrow[j]));
    S.pruned[j] = init[j] != 0;
  }
  int64_t pairs = 0;
  P.swaps_out[i] = P.prune_m > 0 ? cycles_nm(P, S, out, &pairs) : cycles_unstructured(P, S, out, &pairs);
  P.pairs_out[i] = pairs;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> refine_mask_swap_cpu(
    const at::Tensor& weight, const at::Tensor& initial_mask, const at::Tensor& second_moment,
    const at::Tensor& g0, int64_t prune_m, int64_t max_cycle_time, int64_t search) {
  TORCH_CHECK(weight.dim() == 2 && weight.device().is_cpu() && weight.is_contiguous(),
              "refine_mask_swap (cpu): weight must be a contiguous 2-D CPU tensor, got ", weight.sizes());
  const auto wt = weight.scalar_type();
  TORCH_CHECK(wt == at::kFloat || wt == at::kHalf || wt == at::kBFloat16,
              "refine_mask_swap (cpu): weight must be float32, float16 or bfloat16, got ", wt);
  const int64_t rows = weight.size(0), cols = weight.size(1);
  TORCH_CHECK(cols < (int64_t{1} << 31), "refine_mask_swap (cpu): at most 2**31 - 1 columns, got ", cols);
  auto check = [&](const at::Tensor& t, const char* name, at::ScalarType dt, at::IntArrayRef shape) {
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == dt && t.sizes() == shape,
                "refine_mask_swap (cpu): ", name, " must be a contiguous CPU ", dt, " tensor of shape ", shape,
                ", got ", t.scalar_type(), " ", t.sizes());
  };
  check(initial_mask, "initial_mask", at::kBool, {rows, cols});
  check(second_moment, "second_moment", at::kDouble, {cols, cols});
  check(g0, "g0", at::kDouble, {rows, cols});
  TORCH_CHECK(prune_m >= 0 && (prune_m == 0 || cols % prune_m == 0),
              "refine_mask_swap (cpu): cols must be divisible by prune_m, got ", cols, " and ", prune_m);
  TORCH_CHECK(max_cycle_time >= 0 && max_cycle_time < (int64_t{1} << 31),
              "refine_mask_swap (cpu): max_cycle_time must be in [0, 2**31), got ", max_cycle_time);
  TORCH_CHECK(search == 0 || search == 1,
              "refine_mask_swap (cpu): search must be 0 (bounded) or 1 (full scan), got ", search);

  at::Tensor mask = at::empty({rows, cols}, weight.options().dtype(at::kBool));
  at::Tensor swaps = at::zeros({rows}, weight.options().dtype(at::kInt));
  at::Tensor pairs = at::zeros({rows}, weight.options().dtype(at::kLong));
  if (rows == 0 || cols == 0) return {mask, swaps, pairs};
  const double* M = second_moment.data_ptr<double>();
  std::vector<double> diag(cols), sd(cols);
  double m_abs_max = 0.0;
  bool cs_ok = true;
  for (int64_t j = 0; j < cols; ++j) {
    diag[j] = M[j * cols + j];
    if (!(diag[j] >= 0.0)) cs_ok = false;  // not PSD on its diagonal: no Cauchy-Schwarz bound
    sd[j] = std::sqrt(std::max(diag[j], 0.0));
  }
  // rho = max |M_qr| / (s_q s_r) over q != r (M from float sums need not be exactly PSD); a
  // nonzero entry next to a zero s makes it infinite (the bound is then not used). Rounded up.
  double rho = 0.0;
  for (int64_t q = 0; q < cols; ++q) {
    const double* mq = M + q * cols;
    for (int64_t r = 0; r < cols; ++r) {
      const double a = std::fabs(mq[r]);
      m_abs_max = std::max(m_abs_max, a);
      if (r == q || a == 0.0) continue;
      const double den = sd[q] * sd[r];
      const double t = den > 0.0 ? a / den : kInf;
      rho = std::max(rho, t);
    }
  }
  if (!std::isfinite(m_abs_max)) cs_ok = false;
  rho = rho * (1.0 + 1e-12);
  SwapProblem P;
  P.rows = rows; P.cols = cols;
  P.weight = weight.data_ptr();
  P.init_mask = reinterpret_cast<const uint8_t*>(initial_mask.data_ptr<bool>());
  P.M = M;
  P.diag = diag.data();
  P.sd = sd.data();
  P.g0 = g0.data_ptr<double>();
  P.m_abs_max = m_abs_max;
  P.rho = cs_ok && std::isfinite(rho) ? rho : kInf;
  P.prune_m = static_cast<int>(prune_m);
  P.max_cycles = max_cycle_time;
  P.search = static_cast<int>(search);
  P.mask_out = reinterpret_cast<uint8_t*>(mask.data_ptr<bool>());
  P.swaps_out = swaps.data_ptr<int32_t>();
  P.pairs_out = pairs.data_ptr<int64_t>();
  at::parallel_for(0, rows, 1, [&](int64_t b, int64_t e) {
    SwapScratch S(P);
    for (int64_t i = b; i < e; ++i) {
      if (wt == at::kFloat) swap_row<float>(P, i, S);
      else if (wt == at::kHalf) swap_row<at::Half>(P, i, S);
      else swap_row<at::BFloat16>(P, i, S);
    }
  });
  return {mask, swaps, pairs};
}

}  // namespace cpu
}  // namespace dsnot

TORCH_LIBRARY_IMPL(dsnot_kernels, CPU, m) {
  m.impl("refine_mask_swap", &dsnot::cpu::refine_mask_swap_cpu);
}
