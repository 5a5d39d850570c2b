// Per-element rules shared by the CPU and CUDA kernels (docs/KERNEL_CONTRACT.md).
// Everything here is selection-method independent: key encodings, the growth key, the
// sign and acceptance rules. Functions are host+device so both kernels use one definition.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DSNOT_HD __host__ __device__ __forceinline__
#else
#define DSNOT_HD inline
#endif

namespace dsnot {

// Lanes of the fixed-order reconstruction-error sum (contract: "a fixed summation order").
constexpr int kSumLanes = 256;

DSNOT_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
#endif
}

// Order-preserving map float32 -> uint32 (ascending), with -0.0 == +0.0. x must not be NaN.
DSNOT_HD uint32_t ord_key(float x) {
  uint32_t u = float_bits(x + 0.0f);
  return u ^ ((u >> 31) ? 0xFFFFFFFFu : 0x80000000u);
}

// Composite (value, column) key: ascending value, ties by lower column.
DSNOT_HD uint64_t composite_key(float x, int64_t col) {
  return (static_cast<uint64_t>(ord_key(x)) << 32) | static_cast<uint64_t>(static_cast<uint32_t>(col));
}

DSNOT_HD int64_t key_column(uint64_t key) { return static_cast<int64_t>(key & 0xFFFFFFFFull); }

DSNOT_HD int sign_of(float x) { return (x > 0.0f) - (x < 0.0f); }

// varp as in the contract: pow in double, one rounding. Call only when p is not 0 or 1.
DSNOT_HD float var_pow(float var, double p) {
  return static_cast<float>(pow(static_cast<double>(var), p));
}

// Growth key of one initially pruned column. mode: 0 = p == 0 (no division), 1 = p == 1,
// 2 = general p (varp precomputed with var_pow).
DSNOT_HD float growth_key(float dm, float var, float varp, int mode) {
  if (mode == 0) return dm;
  const float d = (mode == 1) ? var : varp;
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(dm, d);
#else
  return dm / d;
#endif
}

DSNOT_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// after = (err + dm_q) - dm_r, two float32 roundings.
DSNOT_HD float error_after(float err, float dm_q, float dm_r) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(__fadd_rn(err, dm_q), dm_r);
#else
  volatile float s = err + dm_q;  // keep the two roundings even under aggressive flags
  return s - dm_r;
#endif
}

// dsnot acceptance after the |err| > thr test: same-sign rule where it applies.
DSNOT_HD bool dsnot_accept(float after, int sign0, bool same_sign) {
  return !same_sign || sign_of(after) == sign0;
}

// mse objective in float64 (contract, objective 1). Returns delta; accept iff delta < 0.
DSNOT_HD double mse_delta(double e, double a_q, double a_r, double b_q, double b_r, double* t_out) {
#if defined(__CUDA_ARCH__)
  const double t = __dsub_rn(__dadd_rn(e, a_q), a_r);
  const double d = __dsub_rn(__dadd_rn(__dsub_rn(__dmul_rn(t, t), __dmul_rn(e, e)), b_q), b_r);
#else
  volatile double t_v = (e + a_q) - a_r;
  const double t = t_v;
  volatile double tt = t * t;
  volatile double ee = e * e;
  volatile double d1 = tt - ee;
  volatile double d2 = d1 + b_q;
  const double d = d2 - b_r;
#endif
  *t_out = t;
  return d;
}

DSNOT_HD double mse_a(float w, float mu) { return static_cast<double>(w) * static_cast<double>(mu); }
DSNOT_HD double mse_b(float w, float var) {
  const double wd = static_cast<double>(w);
#if defined(__CUDA_ARCH__)
  return __dmul_rn(__dmul_rn(wd, wd), static_cast<double>(var));
#else
  volatile double w2 = wd * wd;
  return w2 * static_cast<double>(var);
#endif
}

}  // namespace dsnot
