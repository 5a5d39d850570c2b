// The CPU kernels' vector types (GCC vector extensions) and DSNOT_CPU_CLONES: a function compiled
// for x86-64-v4 (AVX-512), AVX2 and the baseline ISA, one picked at load time (GCC function
// multiversioning). Vector width changes no result: -ffp-contract=off keeps FMA out of every clone.
// Build with -DDSNOT_CPU_NO_CLONES for the baseline ISA only (how the tests check that clones agree).
#pragma once

#include <cstdint>

namespace dsnot {
namespace cpu {
namespace {

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(DSNOT_CPU_NO_CLONES)
#define DSNOT_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define DSNOT_CPU_CLONES
#endif
typedef double v4d __attribute__((vector_size(32)));
typedef int64_t v4l __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));
typedef int64_t v8l __attribute__((vector_size(64)));
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

}  // namespace
}  // namespace cpu
}  // namespace dsnot
