#!/bin/bash
# The end-to-end sequence, one process at a time, 1 thread (see RESULTS_objective_variants.md).
set -e
source /work/main/.venv/bin/activate
cd "$(dirname "$0")"
export OMP_NUM_THREADS=1
python run_ppl.py --methods wanda,mse,C --patterns 70%,60%
python run_ppl.py --methods wanda,mse,C --patterns 50%,2:4
python run_ppl.py --methods BC50 --patterns 70%
python run_ppl.py --methods BC50 --patterns 60%
