"""How the CPU kernel's time per weight scales: with cols (rows fixed), with rows (cols fixed) and
with max_cycle_time. The kernel is linear in the weights (no sort of a row), so time per weight
should stay flat as cols grows.

Each point: one synthetic layer with realistic statistics (``_common.synthetic_layer``), the op
called on validated arguments, median wall clock over ``--repeats`` calls (min also recorded).
Writes ``benchmarks/results/scaling_cpu.csv``, ``benchmarks/results/scaling_cpu.png`` and the
"CPU kernel scaling" section of ``benchmarks/RESULTS.md``.

Quick run:  python benchmarks/scaling.py --repeats 3
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS_DIR, command_line, header, median, synthetic_layer, warm_up, write_csv, write_section  # noqa: E402

from dsnot_kernels import ops  # noqa: E402

PATTERNS = {"60%": dict(sparsity=0.6), "2:4": dict(prune_n=2, prune_m=4)}


def run_point(rows, cols, pattern, max_cycle_time, repeats, seed=0):
    """(median ns/weight, min ns/weight, mean swaps/row) of the cpu backend at one point."""
    weight, st = synthetic_layer(rows, cols, seed=seed, samples=2, tokens=32)
    kw = PATTERNS[pattern]
    nm = kw.get("prune_n", 0) > 0
    w, s, v, sc, _, _, _ = ops.validate_arguments(weight, st.sum_metric_row, st.var, st.scaler_row, None, None,
                                                  kw.get("sparsity", 0.5), kw.get("prune_n", 0), kw.get("prune_m", 0),
                                                  max_cycle_time, 0.1, 1.0, "dsnot", None)
    args = (w, s, v, sc, None, None, None, 0.0 if nm else kw["sparsity"], kw.get("prune_n", 0),
            kw.get("prune_m", 0), max_cycle_time, 0.1, 1.0, nm, 0)
    fn = ops.BACKENDS["cpu"].fn
    warm_up(lambda: fn(*args))
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t0)
    n = rows * cols
    return median(times) / n * 1e9, min(times) / n * 1e9, float(out[1].float().mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rows", type=int, default=256, help="rows of the cols sweep")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: per-thread cost, free of the scheduling noise of a "
                         "shared machine and of the kernel's own 1-vs-2-thread switch on small calls)")
    ap.add_argument("--cols", type=int, default=4096, help="cols of the rows and cycles sweeps")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if ops.BACKENDS["cpu"].can_serve(torch.device("cpu")) is not None:
        sys.exit("cpu backend unavailable")
    sweeps = []
    for pattern in PATTERNS:
        for c in (1024, 2048, 4096, 8192, 16384, 32768, 65536):
            sweeps.append(("cols", c, args.rows, c, pattern, 50))
        for r in (16, 64, 256, 1024, 4096):
            sweeps.append(("rows", r, r, args.cols, pattern, 50))
        for mc in (0, 1, 10, 50, 200, 1000):
            sweeps.append(("max_cycle_time", mc, args.rows, args.cols, pattern, mc))
    records = []
    for sweep, x, rows, cols, pattern, mc in sweeps:
        med, mn, sw = run_point(rows, cols, pattern, mc, args.repeats)
        records.append(dict(sweep=sweep, x=x, rows=rows, cols=cols, pattern=pattern, max_cycle_time=mc,
                            ns_per_weight_median=f"{med:.3f}", ns_per_weight_min=f"{mn:.3f}",
                            mean_swaps=f"{sw:.2f}", threads=torch.get_num_threads()))
        print(f"{sweep:>14} {x:>6} {pattern:>4} ({rows}x{cols}, cycles {mc}): {med:6.2f} ns/weight "
              f"(min {mn:6.2f}), swaps/row {sw:5.1f}", flush=True)
    if args.no_write:
        return
    csv_path = write_csv("scaling_cpu.csv", records)
    png = os.path.join(RESULTS_DIR, "scaling_cpu.png")
    plot(records, png)
    cmd = command_line("benchmarks/scaling.py", argv)
    body = header(cmd) + (f"\nMedian ns per weight of the cpu backend (op on validated arguments, "
                          f"{args.threads} thread(s)), "
                          f"synthetic LLM-like statistics. Plot: `benchmarks/results/scaling_cpu.png`, "
                          f"CSV: `benchmarks/results/scaling_cpu.csv`.\n\n")
    for sweep in ("cols", "rows", "max_cycle_time"):
        sub = [r for r in records if r["sweep"] == sweep]
        xs = sorted({r["x"] for r in sub})
        body += f"\n**{sweep}** ({'rows %d' % args.rows if sweep == 'cols' else 'cols %d' % args.cols})\n\n"
        body += "| pattern | " + " | ".join(str(x) for x in xs) + " | max/min |\n|---|" + "---|" * (len(xs) + 1) + "\n"
        for pattern in PATTERNS:
            vals = [float(next(r["ns_per_weight_median"] for r in sub if r["x"] == x and r["pattern"] == pattern))
                    for x in xs]
            body += f"| {pattern} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {max(vals) / min(vals):.2f} |\n"
    write_section("scaling-cpu", "CPU kernel scaling (scaling.py)", body)
    print(f"wrote {csv_path}, {png} and benchmarks/RESULTS.md")


def plot(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, sweep, label in zip(axes, ("cols", "rows", "max_cycle_time"), ("cols", "rows", "max_cycle_time")):
        for pattern in PATTERNS:
            sub = sorted((r for r in records if r["sweep"] == sweep and r["pattern"] == pattern), key=lambda r: r["x"])
            xs = [max(r["x"], 0.5) for r in sub]
            ax.plot(xs, [float(r["ns_per_weight_median"]) for r in sub], marker="o", label=pattern)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel("ns per weight (median)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    axes[0].set_title("time per weight vs cols")
    axes[1].set_title("vs rows")
    axes[2].set_title("vs max_cycle_time (0 plotted at 0.5)")
    fig.suptitle(f"dsnot_kernels CPU kernel, {torch.get_num_threads()} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
