"""Reference ("torch" backend) vs the C++ CPU kernel ("cpu") on LLaMA layer shapes.

For each shape and pattern: one synthetic layer with realistic statistics (fixed seed), the masks
and swap counts of both backends are checked equal, then both are timed in the same run. Times are
of the backend call on already validated arguments (the op itself; ``refine_mask`` validation is
common to both and reported separately as ``validate``). Wall-clock medians and process CPU time
(which the load of a shared machine inflates less) are both recorded.

Writes ``benchmarks/results/kernels_cpu.csv`` (long format: one row per shape x pattern x
provider) and the "CPU kernel vs reference" section of ``benchmarks/RESULTS.md``.

Quick run:  python benchmarks/bench_kernels.py --shapes 4096x4096 --patterns 2:4 --repeats 3
Full run:   python benchmarks/bench_kernels.py
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import LLAMA_SHAPES, command_line, header, median, synthetic_layer, warm_up, write_csv, write_section  # noqa: E402

from dsnot_kernels import ops  # noqa: E402

PATTERNS = {"50%": dict(sparsity=0.5), "60%": dict(sparsity=0.6), "70%": dict(sparsity=0.7),
            "2:4": dict(prune_n=2, prune_m=4)}


def op_args(weight, stats, pattern):
    """The op's positional arguments after ``refine_mask``'s validation (as the backends get them)."""
    kw = PATTERNS[pattern]
    w, s, v, sc, im, imask, mean = ops.validate_arguments(
        weight, stats.sum_metric_row, stats.var, stats.scaler_row, None, None, kw.get("sparsity", 0.5),
        kw.get("prune_n", 0), kw.get("prune_m", 0), 50, 0.1, 1.0, "dsnot", None)
    nm = kw.get("prune_n", 0) > 0
    return (w, s, v, sc, im, imask, mean, 0.0 if nm else kw["sparsity"], kw.get("prune_n", 0),
            kw.get("prune_m", 0), 50, 0.1, 1.0, nm, 0)


def timed(fn, repeats):
    """(median wall s, median process-CPU s, last result) over ``repeats`` calls."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return median(walls), median(cpus), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(LLAMA_SHAPES), choices=list(LLAMA_SHAPES))
    ap.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=list(PATTERNS))
    ap.add_argument("--repeats", type=int, default=5, help="timed calls of the cpu kernel (median)")
    ap.add_argument("--ref-repeats", type=int, default=1, help="timed calls of the reference (median)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave CSV and RESULTS.md alone")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu_fn, ref_fn = ops.BACKENDS["cpu"].fn, ops.BACKENDS["torch"].fn
    if ops.BACKENDS["cpu"].can_serve(torch.device("cpu")) is not None:
        sys.exit(f"cpu backend unavailable: {ops.BACKENDS['cpu'].can_serve(torch.device('cpu'))}")

    rows_out, table = [], []
    for name in args.shapes:
        r, c = LLAMA_SHAPES[name]
        weight, stats = synthetic_layer(r, c, seed=0)
        for pattern in args.patterns:
            a = op_args(weight, stats, pattern)
            t_val, _, _ = timed(lambda: op_args(weight, stats, pattern), 1)
            warm_up(lambda: cpu_fn(*a))
            c_wall, c_cpu, (c_mask, c_swaps) = timed(lambda: cpu_fn(*a), args.repeats)
            r_wall, r_cpu, (r_mask, r_swaps) = timed(lambda: ref_fn(*a), args.ref_repeats)
            if not (torch.equal(c_mask, r_mask) and torch.equal(c_swaps, r_swaps)):
                sys.exit(f"MISMATCH {name} {pattern}: masks or swaps differ between cpu and torch")
            swaps = float(c_swaps.float().mean())
            for prov, wall, cpu in (("torch", r_wall, r_cpu), ("cpu", c_wall, c_cpu)):
                rows_out.append(dict(shape=name, rows=r, cols=c, pattern=pattern, provider=prov,
                                     wall_s=f"{wall:.6f}", cpu_s=f"{cpu:.6f}",
                                     ns_per_weight=f"{wall / (r * c) * 1e9:.3f}", validate_s=f"{t_val:.6f}",
                                     mean_swaps=f"{swaps:.2f}", threads=torch.get_num_threads()))
            table.append((name, pattern, r_wall, c_wall, r_wall / c_wall, r_cpu / max(c_cpu, 1e-9), swaps, t_val))
            print(f"{name:>11} {pattern:>4}  torch {r_wall * 1e3:9.1f} ms  cpu {c_wall * 1e3:7.1f} ms  "
                  f"x{r_wall / c_wall:6.1f} (cpu-time x{r_cpu / max(c_cpu, 1e-9):6.1f})  swaps/row {swaps:5.1f}  "
                  f"validate {t_val * 1e3:6.1f} ms", flush=True)
    if args.no_write:
        return
    path = write_csv("kernels_cpu.csv", rows_out)
    cmd = command_line("benchmarks/bench_kernels.py", argv)
    body = header(cmd) + (
        "\nMasks and swap counts of both backends checked equal before timing. Times: median wall clock of "
        "the backend call on validated arguments (`validate` = `refine_mask`'s argument checks, paid by "
        "both); speedup = torch / cpu wall; cpu-time speedup = ratio of process CPU seconds. "
        "max_cycle_time 50, threshold 0.1, wanda initial metric, synthetic LLM-like statistics "
        "(`benchmarks/_common.py`). CSV: `benchmarks/results/kernels_cpu.csv`.\n\n"
        "| shape | pattern | torch (ms) | cpu (ms) | speedup | cpu-time speedup | swaps/row | validate (ms) |\n"
        "|---|---|---|---|---|---|---|---|\n")
    for name, pattern, rw, cw, sp, spc, sw, tv in table:
        body += f"| {name} | {pattern} | {rw * 1e3:.1f} | {cw * 1e3:.1f} | {sp:.1f}x | {spc:.1f}x | {sw:.1f} | {tv * 1e3:.1f} |\n"
    write_section("kernels-cpu", "CPU kernel vs reference (bench_kernels.py)", body)
    print(f"wrote {path} and benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
