#!/bin/bash
# continuation used in the recorded session (the first line of run_all.sh was already running)
while kill -0 15000 2>/dev/null; do sleep 5; done
source /work/main/.venv/bin/activate
cd "$(dirname "$0")"
export OMP_NUM_THREADS=1
python run_ppl.py --methods wanda,mse,C --patterns 50%,2:4
python run_ppl.py --methods BC50 --patterns 70%
python run_ppl.py --methods BC50 --patterns 60%
