"""Demo: prune the embedded SmolLM2-135M-Instruct with Wanda + DSnoT, offline, on CPU.

Prints dense, Wanda-only and Wanda + DSnoT perplexity and times (a few minutes on 2 cores).
Calibration: 16 windows x 256 tokens of the first half of the standard library's
pydoc_data.topics; evaluation: 8 windows x 256 tokens of its second half. Extra arguments go to
``dsnot-prune`` (e.g. ``--sparsity 0.6``, ``--objective mse``, ``--skip none``).
"""
import sys

from dsnot_kernels.cli import main

DEMO = ["--nsamples", "16", "--seqlen", "256", "--eval-windows", "8", "--sparsity", "0.5"]

if __name__ == "__main__":
    sys.exit(main(DEMO + sys.argv[1:]))
