#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer check of the CPU C++ kernels (csrc/cpu/*.cpp:
# refine_mask, refine_mask_cov, refine_mask_swap), docs/FUZZING.md "Sanitizers".
#
#   bash benchmarks/sanitize_cpu.sh          # or: make sanitize-cpu
#
# Builds the CPU extension with -fsanitize=address,undefined into a copy of the tree in a temporary
# folder (the repo's own build is never touched), then runs the kernel, fuzz, validation, poison and
# regression tests against it with libasan / libubsan preloaded into Python. Exits non-zero on any
# sanitizer report or test failure.
#
# Environment:
#   PYTHON              the venv's python with torch, pytest, hypothesis (default .venv/bin/python)
#   MAX_JOBS            build jobs (default 1)
#   DSNOT_FUZZ_PROFILE  fast (default) or long (docs/FUZZING.md "Profiles"; hours under ASan)
#   SANITIZE_QUICK=1    the second pass (OMP_NUM_THREADS=2) runs only the five kernel test files
#   SANITIZE_NO_CLONES=1  build with -DDSNOT_CPU_NO_CLONES: the baseline-ISA body only (by default
#                       the loader picks the AVX-512 / AVX2 / baseline clone that the CPU supports, and
#                       only that one runs)
#   SANITIZE_KEEP=1     keep the temporary copy (its path is printed)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
case $PY in /*) ;; */*) PY=$PWD/$PY ;; *) PY=$(command -v "$PY") ;; esac  # the build runs elsewhere
export MAX_JOBS=${MAX_JOBS:-1}
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -g -O1"
[ "${SANITIZE_NO_CLONES:-0}" = 1 ] && SAN="$SAN -DDSNOT_CPU_NO_CLONES"
TESTS="tests/test_fuzz.py tests/test_fuzz_cov.py tests/test_fuzz_swap.py tests/test_swap_split.py tests/test_swap_rows.py tests/test_swap_block_scan.py tests/test_swap_scan32.py tests/test_cpu_kernel.py
  tests/test_cpu_cov_kernel.py tests/test_swap_cpu_kernel.py tests/test_validation.py tests/test_poison.py
  tests/test_regressions.py"
KERNEL_TESTS="tests/test_cpu_kernel.py tests/test_cpu_cov_kernel.py tests/test_swap_cpu_kernel.py tests/test_swap_split.py tests/test_swap_rows.py tests/test_swap_block_scan.py tests/test_swap_scan32.py"
ASAN_LIB=$(gcc -print-file-name=libasan.so) UBSAN_LIB=$(gcc -print-file-name=libubsan.so)
for lib in "$ASAN_LIB" "$UBSAN_LIB"; do  # gcc prints the bare name when it has no such library
  [ -f "$lib" ] || { echo "error: gcc has no $lib (install GCC's libasan / libubsan)" >&2; exit 1; }
done
t0=$(date +%s)
COPY=$(mktemp -d /tmp/dsnot_sanitize.XXXXXX)
if [ "${SANITIZE_KEEP:-0}" = 1 ]; then echo "copy kept: $COPY"; else trap 'rm -rf "$COPY"' EXIT; fi
(cd "$ROOT" && git ls-files -co --exclude-standard | grep -v '^\.venv' | tar -cf - -T -) | tar -xf - -C "$COPY"
cd "$COPY"
rm -rf build dsnot_kernels/_C*.so
DSNOT_KERNELS_NO_CUDA=1 DSNOT_KERNELS_EXTRA_CXXFLAGS="$SAN" DSNOT_KERNELS_EXTRA_LDFLAGS="-fsanitize=address,undefined" \
  "$PY" setup.py build_ext --inplace > build.log 2>&1 || { tail -n 40 build.log; exit 1; }
t1=$(date +%s)
SO=$(ls dsnot_kernels/_C*.so)
# The sanitizers really are in: instrumented loads/stores and UB handlers are called from our code.
SYMS=$(nm -D "$SO")  # (not piped into grep -q: with pipefail an early exit of grep fails the pipe)
grep -q ' U __asan_report_store' <<<"$SYMS" || { echo "error: $SO has no ASan instrumentation" >&2; exit 1; }
grep -q ' U __ubsan_handle_' <<<"$SYMS" || { echo "error: $SO has no UBSan instrumentation" >&2; exit 1; }
echo "$SO: $(grep -c ' U __asan_' <<<"$SYMS") ASan and $(grep -c ' U __ubsan_' <<<"$SYMS") UBSan entry points"

# ASan must be the first library loaded; Python and torch leak by design (detect_leaks=0). The
# reports go to stderr: pytest runs with --capture=sys, because --capture=fd would swallow them.
export LD_PRELOAD="$ASAN_LIB $UBSAN_LIB"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export PYTHONPATH=$COPY
"$PY" - "$COPY" <<'EOF'
import sys, dsnot_kernels._extension as e
assert e._C is not None and e._C.__file__.startswith(sys.argv[1]), (e._C, e.EXTENSION_ERROR)
assert any("libasan" in line for line in open("/proc/self/maps")), "libasan is not loaded"
for op in ("refine_mask", "refine_mask_cov", "refine_mask_swap"):
    assert e.has_kernel("CPU", op), op
print(f"sanitized extension: {e._C.__file__}")
EOF

status=0
run_pass() {  # run_pass THREADS LOG FILES...
  local threads=$1 log=$2; shift 2
  local s=$(date +%s) rc=0
  echo "== OMP_NUM_THREADS=$threads: pytest -m 'not slow' $*"
  OMP_NUM_THREADS=$threads "$PY" -m pytest -q -rfEs --capture=sys -p no:cacheprovider -m "not slow" "$@" \
    > "$log" 2>&1 || rc=$?
  tail -n 1 "$log"
  if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer' "$log"; then
    echo "SANITIZER REPORT (OMP_NUM_THREADS=$threads):" >&2
    grep -nE -A 30 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$log" | head -n 80 >&2
    status=1
  elif [ "$rc" != 0 ]; then
    echo "tests failed (rc=$rc, OMP_NUM_THREADS=$threads):" >&2
    tail -n 40 "$log" >&2
    status=1
  fi
  echo "   $(( $(date +%s) - s ))s"
}
# shellcheck disable=SC2086
run_pass 1 "$COPY/pass1.log" $TESTS
# Two threads: the OpenMP paths (cov / swap rows; refine_mask from 2**21 weights). Passive waiting:
# spinning pool threads made this pass 13x slower on a 2-core box with one core busy (287 s, not 22 s,
# for the kernel files); the parallel code that runs is the same.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
if [ "${SANITIZE_QUICK:-0}" = 1 ]; then
  # shellcheck disable=SC2086
  run_pass 2 "$COPY/pass2.log" $KERNEL_TESTS
else
  # shellcheck disable=SC2086
  run_pass 2 "$COPY/pass2.log" $TESTS
fi
echo "build $((t1 - t0))s, total $(( $(date +%s) - t0 ))s (MAX_JOBS=$MAX_JOBS, profile ${DSNOT_FUZZ_PROFILE:-fast})"
[ "$status" = 0 ] && echo "sanitize-cpu: no sanitizer report, all tests passed"
exit $status
