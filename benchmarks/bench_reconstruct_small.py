"""``dk.reconstruct`` at a small calibration (M rank-deficient): ``method="auto"`` (direct solves)
against ``method="pcg"``, per sub-layer, at 1 and 2 torch threads, in one run.

    CAPTURE_NSAMPLES=4 CAPTURE_SEQLEN=64 CAPTURE_DIR=/tmp/small \\
        python benchmarks/experiments/capture_layer.py 0
    python benchmarks/bench_reconstruct_small.py --captured /tmp/small/layer0.pt --sparsity 0.5

Per sub-layer (Wanda mask of the captured statistics): best-of-``--repeats`` wall time of each
method at each thread count, their ratio, and the largest ``(L_auto - L_pcg) / L_pcg`` of the
damped row loss (<= 0 up to rounding: auto is never worse). Prints a markdown table (no file
written); the machine's load average is printed before and after.
"""
from __future__ import annotations

import argparse
import os

import torch

import dsnot_kernels as dk
from bench_reconstruct import timed
from dsnot_kernels.weights.reconstruct import row_losses
from dsnot_kernels.weights.sparsegpt import damped_hessian


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--captured", required=True, help="torch.save'd sub-layers of capture_layer.py")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--layers", nargs="*", default=None, help="name suffixes to run (default: all)")
    args = ap.parse_args(argv)
    print("load before:", os.getloadavg())
    layers = torch.load(args.captured)
    print("| sub-layer | shape | threads | pcg (s) | auto (s) | pcg / auto | auto form | max loss gap |")
    print("|---|---|---|---|---|---|---|---|")
    totals = {t: [0.0, 0.0] for t in args.threads}
    for name, e in layers.items():
        if args.layers and not any(name.endswith(s) for s in args.layers):
            continue
        W, H = e["W"], e["H"]
        mask = dk.refine_mask(W, e["smr"], e["var"], e["scaler"], sparsity=args.sparsity, max_cycle_time=0)
        Md, _ = damped_hessian(H.double(), 0.01, dtype=torch.float64)
        for t in args.threads:
            torch.set_num_threads(t)
            t_p, pcg = timed(lambda: dk.reconstruct(W, mask, H, method="pcg", warn=False), args.repeats)
            t_a, (auto, info) = timed(lambda: dk.reconstruct(W, mask, H, return_info=True, warn=False),
                                      args.repeats)
            l_p, l_a = row_losses(W, pcg, Md), row_losses(W, auto, Md)
            gap = float(((l_a - l_p) / l_p.clamp(min=1e-300)).max())
            form = "low rank" if "low rank" in info["method"] else ("kept block" if info["rows_direct"] else "pcg")
            totals[t][0] += t_p
            totals[t][1] += t_a
            print(f"| {name} | {W.shape[0]}x{W.shape[1]} | {t} | {t_p:.2f} | {t_a:.2f} | {t_p / t_a:.1f}x | "
                  f"{form} | {gap:.1e} |", flush=True)
    for t, (p, a) in totals.items():
        print(f"threads {t}: pcg {p:.1f} s, auto {a:.1f} s ({p / max(a, 1e-9):.1f}x)")
    print("load after:", os.getloadavg())


if __name__ == "__main__":
    main()
