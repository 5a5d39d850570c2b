#!/bin/bash
# The end-to-end sequence, one process at a time, 1 thread (see RESULTS_objective_variants.md).
# Python: $PYTHON, default the repository's .venv (make install), else python3 on PATH.
set -e
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
export OMP_NUM_THREADS=1 PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
"$PY" run_ppl.py --methods wanda,mse,C --patterns 70%,60%
"$PY" run_ppl.py --methods wanda,mse,C --patterns 50%,2:4
"$PY" run_ppl.py --methods BC50 --patterns 70%
"$PY" run_ppl.py --methods BC50 --patterns 60%
