"""Objectives "cov" and "cov_window": the reference ("torch") vs the CPU kernel ("cpu"), one run.

For each shape and pattern: one synthetic layer whose inputs have correlated channels (so the
second moment M is not diagonal), M = ``CalibrationStats(hessian=True).hessian``; masks and swap
counts of both backends are checked equal, then both are timed on the same validated arguments.
The cpu time includes what its Python side does (the initial mask and ``g0 = D0 @ M``, one float64
matmul that the reference does too); ``g0`` is also timed alone, since it bounds what a faster
kernel could gain.

Writes ``benchmarks/results/kernels_cov.csv`` and the "Objectives cov / cov_window" section of
``benchmarks/RESULTS.md``.

    python benchmarks/bench_cov.py                      # SmolLM2-135M shapes + 2048x2048
    python benchmarks/bench_cov.py --shapes 576x1536 --repeats 3 --no-write
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import command_line, header, median, warm_up, write_csv, write_section  # noqa: E402

import dsnot_kernels as dk  # noqa: E402
from dsnot_kernels import ops  # noqa: E402
from dsnot_kernels.objectives.cov_window import cov_g0  # noqa: E402

SHAPES = {"576x576": (576, 576), "1536x576": (1536, 576), "576x1536": (576, 1536), "2048x2048": (2048, 2048)}
PATTERNS = {"60%": dict(sparsity=0.6), "70%": dict(sparsity=0.7), "2:4": dict(prune_n=2, prune_m=4)}


def correlated_layer(rows, cols, seed=0, samples=4, tokens=128):
    """Weight and statistics (with the second moment) of LLM-like inputs with mixed channels."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(cols) + 0.1 * torch.randn(cols, cols, generator=g)
    scale = torch.exp(0.5 * torch.randn(cols, generator=g))
    x = (torch.randn(samples, tokens, cols, generator=g) @ mix) * scale + 0.3 * torch.randn(cols, generator=g) * scale
    st = dk.CalibrationStats(cols, hessian=True)
    st.add_batch(x)
    return 0.02 * torch.randn(rows, cols, generator=g), st


def timed(fn, repeats):
    walls, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
    return median(walls), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=list(PATTERNS))
    ap.add_argument("--window", type=int, default=ops.DEFAULT_WINDOW)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if ops._serve_cov_cpu(torch.device("cpu")) is not None:
        sys.exit(f"cpu backend unavailable: {ops._serve_cov_cpu(torch.device('cpu'))}")
    rows_out, table = [], []
    for name in args.shapes:
        r, c = SHAPES[name]
        W, st = correlated_layer(r, c)
        for pattern in args.patterns:
            kw = dict(PATTERNS[pattern])
            for objective in ("cov", "cov_window"):
                def call(backend):
                    return dk.refine_mask(W, st.sum_metric_row, st.var, st.scaler_row, objective=objective,
                                          second_moment=st.hessian, window=args.window, backend=backend,
                                          return_swaps=True, **kw)
                warm_up(lambda: call("cpu"), min_calls=1)
                c_wall, (cm, cs) = timed(lambda: call("cpu"), args.repeats)
                r_wall, (rm, rs) = timed(lambda: call("torch"), 1)
                if not (torch.equal(cm, rm) and torch.equal(cs, rs)):
                    sys.exit(f"MISMATCH {name} {pattern} {objective}: cpu and torch differ")
                M = ops.validate_second_moment(st.hessian, "cov", c, W.device)
                mask0 = dk.refine_mask(W, st.sum_metric_row, st.var, st.scaler_row, max_cycle_time=0, **kw)
                g_wall, _ = timed(lambda: cov_g0(W, mask0, M), args.repeats)
                swaps = float(cs.float().mean())
                table.append((name, pattern, objective, r_wall, c_wall, g_wall, swaps))
                rows_out.append(dict(shape=name, rows=r, cols=c, pattern=pattern, objective=objective,
                                     window=args.window if objective == "cov_window" else 0,
                                     torch_s=f"{r_wall:.6f}", cpu_s=f"{c_wall:.6f}", g0_s=f"{g_wall:.6f}",
                                     mean_swaps=f"{swaps:.2f}", threads=torch.get_num_threads()))
                print(f"{name:>9} {pattern:>4} {objective:>10}  torch {r_wall * 1e3:8.1f} ms  cpu {c_wall * 1e3:7.1f} ms "
                      f"(g0 {g_wall * 1e3:6.1f} ms)  x{r_wall / c_wall:5.1f}  swaps/row {swaps:5.1f}", flush=True)
    if args.no_write:
        return
    path = write_csv("kernels_cov.csv", rows_out)
    cmd = command_line("benchmarks/bench_cov.py", argv)
    body = header(cmd) + (
        f"\nMasks and swap counts of both backends checked equal before timing. Times: median wall clock "
        f"of `refine_mask(..., backend=...)`; the cpu figure includes its Python side (initial mask, "
        f"`g0 = D0 @ M`), and `g0` is the float64 matmul alone (both backends pay it). Window "
        f"{args.window} for cov_window; max_cycle_time 50, threshold 0.1; synthetic inputs with mixed "
        "channels (`correlated_layer`). CSV: `benchmarks/results/kernels_cov.csv`.\n\n"
        "| shape | pattern | objective | torch (ms) | cpu (ms) | of which g0 (ms) | speedup | swaps/row |\n"
        "|---|---|---|---|---|---|---|---|\n")
    for name, pattern, obj, rw, cw, gw, sw in table:
        body += f"| {name} | {pattern} | {obj} | {rw * 1e3:.1f} | {cw * 1e3:.1f} | {gw * 1e3:.1f} | {rw / cw:.1f}x | {sw:.1f} |\n"
    write_section("kernels-cov", "Objectives cov / cov_window: CPU kernel vs reference (bench_cov.py)", body)
    print(f"wrote {path} and benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
