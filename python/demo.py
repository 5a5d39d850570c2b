"""Demo: prune the embedded SmolLM2-135M-Instruct with Wanda, Wanda + DSnoT, and DSnoT with this
project's best objective, offline, on CPU; prints their perplexities (lower is better) and times.

Calibration: 16 windows x 256 tokens of the first half of the standard library's
pydoc_data.topics; evaluation: 8 windows x 256 tokens of its second half; 50 % unstructured.
Rows: dense, Wanda alone, Wanda + DSnoT with the authors' rule (attention sub-layers, their
default), and Wanda + DSnoT with ``BEST_OBJECTIVE`` on every sub-layer.

The pruned figures moved by up to 3 % between setups (docs/RESULTS.md, "make demo"); the dense one did not.
The demo fixes 2 threads so that the thread count is not one of the causes.
Extra arguments go to ``dsnot-prune`` (e.g. ``--sparsity 0.6``, ``--objective mse``, ``--skip none``).
"""
import sys

from dsnot_kernels.cli import main

# The best refinement measured on this model (README, "Which method"; docs/RESULTS.md); its row is
# the last of the table; --paper keeps the authors' rule as the row before it. One constant, so a better objective replaces it in one place.
BEST_OBJECTIVE = "swap"
THREADS = 2

DEMO = ["--paper", "--nsamples", "16", "--seqlen", "256", "--eval-windows", "8", "--sparsity", "0.5",
        "--threads", str(THREADS), "--also-objective", BEST_OBJECTIVE, "--also-skip", "none"]

if __name__ == "__main__":
    sys.exit(main(DEMO + sys.argv[1:]))
