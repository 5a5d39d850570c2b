// The lower envelope of lines y = b + m x (the convex-hull trick), shared by the two bounds of the
// "swap" CPU kernel: the Cauchy-Schwarz bound (swap_passes.h, build_envelope) and the
// low-rank-plus-residual bound (swap_split.h, Row::bound). Lines are added in decreasing slope
// order; the envelope is then evaluated at non-decreasing x. All arithmetic is float64 and only
// decides which line is lowest: the value returned is that line's own b + m x.
#pragma once

#include <cstddef>
#include <limits>

namespace dsnot {
namespace cpu {

// Appends the line (m, b) to the envelope (hm, hb) of n lines whose slopes are all >= m; returns
// the new size. Of two equal slopes the lower intercept stays; a line the new one makes redundant
// (the new one meets the line before it no later than it does) is dropped.
inline size_t push_lower_line(double* hm, double* hb, size_t n, double m, double b) {
  if (n > 0 && hm[n - 1] == m) {
    if (hb[n - 1] <= b) return n;
    --n;
  }
  while (n >= 2 && (b - hb[n - 2]) * (hm[n - 2] - hm[n - 1]) <= (hb[n - 1] - hb[n - 2]) * (hm[n - 2] - m)) --n;
  hm[n] = m;
  hb[n] = b;
  return n + 1;
}

// Walks an envelope of n lines (from push_lower_line) at non-decreasing x: at(x) is the envelope's
// value there (+inf if it has no line).
struct Envelope {
  const double* hm;
  const double* hb;
  size_t n, h = 0;
  double at(double x) {  // x never decreases between calls
    if (n == 0) return std::numeric_limits<double>::infinity();
    while (h + 1 < n && hb[h + 1] + hm[h + 1] * x <= hb[h] + hm[h] * x) ++h;
    return hb[h] + hm[h] * x;
  }
};

}  // namespace cpu
}  // namespace dsnot
