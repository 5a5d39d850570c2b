#!/usr/bin/env bash
# THE entry point of the one-call GPU check: `bash benchmarks/gpu_check.sh [--quick|--dry-run|...]`
# (the team's notes and README call it by this path, so it stays here). Everything it runs lives
# in benchmarks/gpu/ (gpu_check.sh: the stages and their options, `--help`; bench_*.py, report.py,
# sanitize_case.py, NOTES.md); the parity tests it runs are tests/test_cuda_gpu.py and tests/test_triton.py.
exec bash "$(dirname "$0")/gpu/gpu_check.sh" "$@"
