"""Shared helpers of the benchmark scripts: synthetic layers with realistic statistics, timing,
machine description and the RESULTS.md section writer."""
from __future__ import annotations

import csv
import datetime
import os
import platform
import re
import shlex
import statistics
import sys
import time

import torch

import dsnot_kernels as dk

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_MD = os.path.join(HERE, "RESULTS.md")
RESULTS_DIR = os.path.join(HERE, "results")

# LLaMA-7B/13B and LLaMA-3-8B linear-layer shapes (out_features, in_features).
LLAMA_SHAPES = {
    "4096x4096": (4096, 4096),      # 7B q/k/v/o
    "11008x4096": (11008, 4096),    # 7B gate/up
    "4096x11008": (4096, 11008),    # 7B down
    "14336x4096": (14336, 4096),    # 8B gate/up
    "4096x14336": (4096, 14336),    # 8B down
}


def synthetic_layer(rows: int, cols: int, seed: int = 0, samples: int = 4, tokens: int = 64,
                    dtype=torch.float32):
    """A weight (rows, cols) and its ``CalibrationStats`` from synthetic LLM-like inputs.

    Inputs: per-channel nonzero means, log-normal channel scales and a few outlier channels, so that
    ``sum_metric_row`` has a real mean and the reconstruction error is far above the threshold
    (rows actually swap). Deterministic for a seed.
    """
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(0.5 * torch.randn(cols, generator=g))
    scale[torch.randperm(cols, generator=g)[: max(1, cols // 200)]] *= 20.0   # outlier channels
    mu = 0.3 * torch.randn(cols, generator=g) * scale
    stats = dk.CalibrationStats(cols)
    x = mu + scale * torch.randn(samples, tokens, cols, generator=g)
    stats.add_batch(x)
    weight = (0.02 * torch.randn(rows, cols, generator=g)).to(dtype)
    return weight, stats


def warm_up(fn, min_calls: int = 3, min_seconds: float = 0.3):
    """Call ``fn`` at least ``min_calls`` times and for at least ``min_seconds``. The first calls of
    a shape are slower (thread pool start, page faults of fresh output buffers until the allocator
    keeps them): measured 27 ms against 19 ms at 4096x4096 2:4 with a single warm-up call."""
    t_end, n = time.perf_counter() + min_seconds, 0
    while n < min_calls or time.perf_counter() < t_end:
        fn()
        n += 1


def median(xs):
    return statistics.median(xs)


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} logical CPUs (nproc), {model}, torch threads {torch.get_num_threads()}"


def header(command: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"- date: {now}\n- machine: {machine()}\n- torch {torch.__version__}, "
            f"python {platform.python_version()}\n- command: `{command}`\n")


def command_line(script: str, argv=None) -> str:
    """How the script was run, for the RESULTS.md header: ``python <script> <args>``."""
    args = sys.argv[1:] if argv is None else argv
    return f"python {script}" + (" " + shlex.join(args) if args else "")


def write_section(key: str, title: str, body: str, path: str = RESULTS_MD) -> None:
    """Replace (or append) the section between ``<!-- key:begin -->`` and ``<!-- key:end -->``."""
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    block = f"<!-- {key}:begin -->\n## {title}\n\n{body.rstrip()}\n<!-- {key}:end -->\n"
    pattern = re.compile(rf"<!-- {re.escape(key)}:begin -->.*?<!-- {re.escape(key)}:end -->\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    with open(path, "w") as f:
        f.write(text)


def write_csv(filename: str, rows: list) -> str:
    """Write ``rows`` (dicts with the same keys) to ``benchmarks/results/filename``; returns the path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, filename)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
