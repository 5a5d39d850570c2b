#!/usr/bin/env bash
# One-call GPU check of dsnot_kernels, for a lent GPU machine. Call it through its entry point
# benchmarks/gpu_check.sh (kept at that path), from the repo root:
#
#   bash benchmarks/gpu_check.sh              # everything, within GPU_CHECK_BUDGET seconds (default 480)
#   bash benchmarks/gpu_check.sh --quick      # three LLaMA shapes, no Triton sanitizer run
#   bash benchmarks/gpu_check.sh --dry-run    # on a machine without a GPU: test the script itself
#   bash benchmarks/gpu_check.sh --only=build,tests_cuda   # a subset of the stages named below
#
# Stages, each logged and timed, each surviving the failure of earlier ones, each given
# min(its own limit, what is left of the budget):
#   env -> build (setup.py build_ext --inplace, sm_90 by default) -> tests_cuda (parity tests) ->
#   bench_refine (reference vs triton vs cuda on LLaMA shapes at 50/60/70% and 2:4, the copy-
#   bandwidth floor, a layout sweep, scaling in columns) -> memcheck_cuda, racecheck_cuda
#   (compute-sanitizer on the CUDA kernel) -> tests_triton, tests_triton_cov -> sparse24 (2:4 sparse
#   vs dense linear) -> bench_cov (objectives cov/cov_window/swap, triton vs the reference, the
#   LLaMA-7B layer set) -> bench_wide (swap and cov_window on triton at 4096x4096 and 4096x11008,
#   parity on 2 rows) -> memcheck_triton, memcheck_triton_cov -> report. If the budget runs out
#   before the cov stages, a second call: --only=bench_cov,bench_wide,tests_triton_cov,memcheck_triton_cov
# Outputs in $OUT (default /tmp/gpu_check_out), at most 8 files, flat:
#   gpu_check.log  results.json  bench.csv  sparse24.csv  sanitizer.txt  tests.txt  RESULTS_fragment.md
# The last lines printed are the stage table and the benchmark table.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
DRY=0
QUICK=0
ONLY=""   # --only=build,tests_cuda,...: run just these stages (the report always runs)
BUDGET=${GPU_CHECK_BUDGET:-480}
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    --quick) QUICK=1 ;;
    --budget=*) BUDGET=${a#--budget=} ;;
    --only=*) ONLY=",${a#--only=}," ;;
    -h|--help) sed -n 2,24p "$0"; exit 0 ;;
    *) echo "unknown argument $a" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
PY=${PYTHON:-python3}
LOG=$OUT/gpu_check.log
TESTS=$OUT/tests.txt
SAN=$OUT/sanitizer.txt
: > "$LOG"; : > "$TESTS"; : > "$SAN"; : > "$WORK/stages.tsv"
START=$(date +%s)
RESERVE=20   # seconds kept for the report
export PYTHONUNBUFFERED=1 PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONDONTWRITEBYTECODE=1
[ "$DRY" = 1 ] || export TRITON_INTERPRET=0

left() { echo $(( BUDGET - ($(date +%s) - START) - RESERVE )); }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >> "$WORK/stages.tsv"; }

# stage NAME MAX_SECONDS LOGFILE CMD...: run CMD with a time limit, append its output to LOGFILE.
stage() {
  local name=$1 max=$2 out=$3; shift 3
  local l t s rc status
  if [ -n "$ONLY" ] && [ "$name" != report ] && [[ "$ONLY" != *",$name,"* ]]; then
    record "$name" skipped 0 "not in --only"
    return 0
  fi
  l=$(left)
  if [ "$l" -lt 15 ]; then
    record "$name" skipped 0 "time budget spent"
    echo "--- [$name] skipped: time budget spent" | tee -a "$LOG"
    return 0
  fi
  t=$(( max < l ? max : l ))
  echo "--- [$name] start (limit ${t}s): $*" | tee -a "$LOG"
  [ "$out" = "$LOG" ] || echo "=== [$name] $*" >> "$out"
  s=$(date +%s)
  # Shell functions run in a child bash (timeout cannot run a function itself; they are exported).
  STAGE_DEADLINE=$(( s + t - 10 )) timeout --kill-after=10 "$t" bash -c '"$@"' _ "$@" >> "$out" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status="failed rc=$rc" ;;
  esac
  record "$name" "$status" "$(( $(date +%s) - s ))" "${STAGE_NOTE:-}"
  echo "--- [$name] $status after $(( $(date +%s) - s ))s" | tee -a "$LOG"
  if [ "$status" != ok ] && [ "$out" != "$LOG" ]; then tail -n 15 "$out" | sed "s/^/    [$name] /"; fi
  STAGE_NOTE=
  return 0
}

# ---- env -----------------------------------------------------------------------------------------
env_json() {
  "$PY" - "$WORK/env.json" <<'EOF'
import json, subprocess, sys
env = {}
try:
    import torch
    env["torch"] = torch.__version__
    env["cuda_runtime"] = torch.version.cuda
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["gpu"] = f"{p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB, cc {p.major}.{p.minor}"
except Exception as e:
    env["torch_error"] = str(e)
try:
    import triton
    env["triton"] = triton.__version__
except Exception as e:
    env["triton"] = f"not importable ({e})"
try:
    out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    env["nvcc"] = next((l.split("release", 1)[1].strip() for l in out.splitlines() if "release" in l), "absent")
except OSError:
    env["nvcc"] = "absent"
env["python"] = sys.version.split()[0]
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(json.dumps(env, indent=1))
EOF
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used,memory.total --format=csv 2>&1 || true
}
export -f env_json
export PY WORK DRY QUICK
stage env 30 "$LOG" env_json

# ---- build ---------------------------------------------------------------------------------------
build_ext() {
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
  local nvcc site d
  nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$nvcc")")}
  export PATH=$CUDA_HOME/bin:$PATH
  # Library headers that torch's CUDA headers include (cublas, cusparse, ...) from the pip CUDA
  # packages, as a fallback after the toolkit's own include folder.
  site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  for d in "$site"/nvidia/cu13/include "$site"/nvidia/*/include; do
    [ -d "$d" ] && export CPATH=${CPATH:+$CPATH:}$d
  done
  echo "CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
  "$PY" setup.py build_ext --inplace || return $?
  "$PY" -c "
from dsnot_kernels import _extension as e
assert e.has_kernel('CUDA'), f'no CUDA kernel registered: {e.EXTENSION_ERROR}'
print('CUDA kernel registered; CPU kernel:', e.has_kernel('CPU'))"
}
export -f build_ext
if [ "$DRY" = 1 ]; then
  record build skipped 0 "dry run"
  echo "--- [build] skipped (dry run)" | tee -a "$LOG"
else
  stage build 300 "$LOG" build_ext
fi

# ---- CUDA parity tests ---------------------------------------------------------------------------
stage tests_cuda 120 "$TESTS" "$PY" -m pytest -q -p no:cacheprovider -rfE tests/test_cuda_gpu.py

# ---- refine benchmark ----------------------------------------------------------------------------
bench_refine() {
  local extra=()
  [ "$DRY" = 1 ] && extra+=(--dry-run)
  [ "$QUICK" = 1 ] && extra+=(--quick)
  BENCH_DEADLINE=$STAGE_DEADLINE "$PY" benchmarks/gpu/bench_refine.py --out "$WORK/refine.json" "${extra[@]}"
}
export -f bench_refine
stage bench_refine 170 "$LOG" bench_refine

# ---- compute-sanitizer on the CUDA kernel --------------------------------------------------------
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
KFILTER=""   # instrument only our kernel where the sanitizer can filter by name
if [ -n "$SANITIZER" ]; then
  SHELP=$("$SANITIZER" --help 2>&1 || true)
  if grep -q -- "--kernel-name" <<<"$SHELP" && grep -q "kns" <<<"$SHELP"; then KFILTER="--kernel-name kns=refine_mask"
  elif grep -q -- "--filter" <<<"$SHELP" && grep -q "kns" <<<"$SHELP"; then KFILTER="--filter kns=refine_mask"; fi
  echo "compute-sanitizer: $SANITIZER, kernel filter: ${KFILTER:-none}" | tee -a "$LOG"
fi
sanitize() {  # sanitize TOOL BACKEND [--small]
  local tool=$1 backend=$2 size=${3:-} filt=""
  [ "$backend" = cuda ] && filt=$KFILTER
  # shellcheck disable=SC2086
  "$SANITIZER" --tool "$tool" --error-exitcode 3 --print-limit 20 $filt \
    "$PY" benchmarks/gpu/sanitize_case.py --backend "$backend" $size
}
export -f sanitize
export SANITIZER KFILTER
if [ -z "$SANITIZER" ] || [ "$DRY" = 1 ]; then
  for n in memcheck_cuda racecheck_cuda memcheck_triton memcheck_triton_cov; do
    record "$n" skipped 0 "$([ "$DRY" = 1 ] && echo 'dry run' || echo 'compute-sanitizer not found')"
  done
  echo "--- [sanitizer] skipped (dry run or no compute-sanitizer)" | tee -a "$LOG"
else
  stage memcheck_cuda 60 "$SAN" sanitize memcheck cuda ""
  stage racecheck_cuda 60 "$SAN" sanitize racecheck cuda --small
fi

# ---- Triton parity tests -------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
  record tests_triton skipped 0 "dry run (the interpreter suite runs in CI)"
  record tests_triton_cov skipped 0 "dry run (the interpreter suite runs in CI)"
else
  stage tests_triton 120 "$TESTS" "$PY" -m pytest -q -p no:cacheprovider -rfE -m "not slow" tests/test_triton.py
  stage tests_triton_cov 90 "$TESTS" "$PY" -m pytest -q -p no:cacheprovider -rfE tests/test_triton_cov.py
fi

# ---- 2:4 sparse vs dense linear ------------------------------------------------------------------
bench_sparse() {
  local extra=()
  [ "$DRY" = 1 ] && extra+=(--dry-run)
  BENCH_DEADLINE=$STAGE_DEADLINE "$PY" benchmarks/gpu/bench_sparse24.py --out "$WORK/sparse24.json" "${extra[@]}"
}
export -f bench_sparse
stage sparse24 60 "$LOG" bench_sparse
if [ "$DRY" = 0 ]; then  # dk.to_sparse_24 on a real layer: outputs equal to the masked dense layer
  stage tests_sparse24 60 "$TESTS" "$PY" -m pytest -q -p no:cacheprovider -rfE -m gpu tests/test_sparse24.py
fi

# ---- objectives cov / cov_window / swap: triton vs the reference (benchmarks/gpu/bench_cov.py) ---------
bench_cov() {
  local extra=()
  [ "$DRY" = 1 ] && extra+=(--dry-run)
  [ "$QUICK" = 1 ] && extra+=(--quick)
  BENCH_DEADLINE=$STAGE_DEADLINE "$PY" benchmarks/gpu/bench_cov.py --out "$WORK/cov.json" "${extra[@]}"
}
export -f bench_cov
stage bench_cov 150 "$LOG" bench_cov

# ---- objective swap at real widths: triton on 4096x4096 and 4096x11008 (benchmarks/bench_wide.py) --
# cov_window and swap, a few rows each, swap's masks and swap counts checked equal to the reference
# on 2 rows (the run exits non-zero on a mismatch); the figures go to gpu_check.log (--no-write).
bench_wide() {
  if [ "$DRY" = 1 ]; then  # the script's path on the CPU, at a small width
    "$PY" benchmarks/bench_wide.py --shapes 1024x1024 --rows 2 --cheap-factor 1 --objectives cov_window swap \
      --ref-rows 1 --no-write
  else
    "$PY" benchmarks/bench_wide.py --backend triton --shapes 4096x4096 4096x11008 --rows 8 --cheap-factor 4 \
      --objectives cov_window swap --ref-rows 2 --no-write
  fi
}
export -f bench_wide
stage bench_wide 150 "$LOG" bench_wide

if [ -n "$SANITIZER" ] && [ "$DRY" = 0 ] && [ "$QUICK" = 0 ]; then
  stage memcheck_triton 60 "$SAN" sanitize memcheck triton --small
  stage memcheck_triton_cov 60 "$SAN" sanitize memcheck triton --cov
fi

# ---- report --------------------------------------------------------------------------------------
RESERVE=0
stage report 20 "$LOG" "$PY" benchmarks/gpu/report.py --work "$WORK" --out "$OUT" \
  --command "bash benchmarks/gpu_check.sh $*"
echo
echo "=== gpu_check: $(( $(date +%s) - START ))s, outputs in $OUT: $(ls "$OUT" | tr '\n' ' ')"
column -t -s "$(printf '\t')" "$WORK/stages.tsv" 2>/dev/null || cat "$WORK/stages.tsv"
grep -E "passed|failed|error" "$TESTS" | tail -n 4
grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$SAN" | tail -n 4
if [ -f "$OUT/RESULTS_fragment.md" ]; then
  sed -n '/### refine_mask/,/### 2:4/p' "$OUT/RESULTS_fragment.md" | grep '^|' | head -n 40
fi
rm -rf "$WORK"
exit 0
