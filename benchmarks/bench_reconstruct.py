"""The exact reconstruction (``dk.reconstruct``) on real sub-layers: its cost against SparseGPT's,
and how close its stopping rule gets to the exact minimum, against the former residual rule.

Per captured sub-layer (``benchmarks/experiments/capture_layer.py BLOCK`` writes the file: W and the
calibration Hessian of every sub-layer of that block, 32 x 512 tokens of the README setup), at
each ``--sparsity`` with the Wanda mask:

* ``sparsegpt s``: ``dk.sparsegpt`` on the same layer (the algorithm alone);
* ``reconstruct s`` and its iterations with the default stopping rule (a row stops once its last
  two conjugate-gradient steps lowered its loss by at most 1e-6 of it);
* ``gap``: the largest relative gap ``(L - L*) / L*`` of the damped row loss over the rows, L* from
  a run to ``tol=1e-14`` (itself checked against a per-row ``torch.linalg.solve`` on
  ``--check-rows`` rows).

    python benchmarks/experiments/capture_layer.py 3
    python benchmarks/bench_reconstruct.py --captured /tmp/i15b/layer3.pt --threads 1

Writes the "Reconstruction: cost and the stopping rule" section of RESULTS.md (``--no-write``: print only).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import command_line, header, write_section  # noqa: E402

import dsnot_kernels as dk  # noqa: E402
from dsnot_kernels.weights.sparsegpt import damped_hessian  # noqa: E402


def damped_losses(W, x, Md):
    D = W.double() - x.double()
    return ((D @ Md) * D).sum(1)


def timed(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(args):
    layers = torch.load(args.captured)
    rows_out = []
    for sparsity in args.sparsity:
        for name, e in layers.items():
            W, H = e["W"], e["H"]
            mask = dk.refine_mask(W, e["smr"], e["var"], e["scaler"], sparsity=sparsity, max_cycle_time=0)
            Md, _ = damped_hessian(H.double(), 0.01, dtype=torch.float64)
            t_sg, _ = timed(lambda: dk.sparsegpt(W, H, sparsity=sparsity), args.repeats)
            exact, info_x = dk.reconstruct(W, mask, H, tol=1e-14, max_iter=5000, return_info=True, warn=False)
            # the "exact" reference against a dense per-row solve on a few rows
            check = 0.0
            for r in range(min(args.check_rows, W.shape[0])):
                K = ~mask[r]
                sol = torch.linalg.solve(Md[K][:, K], Md[K] @ W[r].double())
                check = max(check, float((exact[r, K].double() - sol).norm() / sol.norm().clamp(min=1e-300)))
            L_opt = damped_losses(W, exact, Md)
            t_rec, (out, info) = timed(lambda: dk.reconstruct(W, mask, H, return_info=True, warn=False), args.repeats)
            gap = float(((damped_losses(W, out, Md) - L_opt) / L_opt.clamp(min=1e-300)).max())
            rows_out.append(dict(layer=name, shape=tuple(W.shape), sparsity=sparsity, sg=t_sg, rec=t_rec,
                                 it=info["iterations"], gap=gap, conv=info["converged"], check=check,
                                 exact_it=info_x["iterations"]))
            print(f"{name:>24} {tuple(W.shape)} {sparsity:.0%}: sparsegpt {t_sg:.3f} s, reconstruct {t_rec:.3f} s "
                  f"({t_rec / t_sg:.1f}x), {info['iterations']} iterations, gap {gap:.1e}, exact check {check:.1e}",
                  flush=True)
    return rows_out


def section(args, rows_out):
    lines = [header(command_line("benchmarks/bench_reconstruct.py")),
             "Per sub-layer of the captured block (Wanda mask), 1 % dampening. sparsegpt: `dk.sparsegpt`, the "
             "algorithm alone; reconstruct: `dk.reconstruct` with its defaults (best of "
             f"{args.repeats}); gap: the largest `(L - L*) / L*` over the rows, L the damped row loss, L* "
             "a run to tol 1e-14 (checked against a per-row `torch.linalg.solve` on "
             f"{args.check_rows} rows: `check`, the largest relative weight difference).", "",
             "| sub-layer | shape | sparsity | sparsegpt (s) | reconstruct (s) | ratio | iterations | gap | check |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows_out:
        lines.append(f"| {r['layer']} | {r['shape'][0]}x{r['shape'][1]} | {r['sparsity']:.0%} | {r['sg']:.3f} | "
                     f"{r['rec']:.3f} | {r['rec'] / r['sg']:.1f}x | {r['it']} | {r['gap']:.1e} | {r['check']:.0e} |")
    tot_sg = sum(r["sg"] for r in rows_out)
    tot_rec = sum(r["rec"] for r in rows_out)
    lines += ["", f"Total: sparsegpt {tot_sg:.2f} s, reconstruct {tot_rec:.2f} s ({tot_rec / tot_sg:.1f}x)."]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--captured", required=True, help="torch.save'd sub-layers of capture_layer.py")
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.6])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--check-rows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows_out = run(args)
    text = section(args, rows_out)
    print(text)
    if not args.no_write:
        write_section("reconstruct", "Reconstruction: cost and the stopping rule (bench_reconstruct.py)", text)


if __name__ == "__main__":
    main()
