"""Objective "swap": the CPU kernel against the reference, pairs read per swap, growth with width,
and a whole-model prune against cov_window, one run.

Parts (``--parts``):

* ``kernels``: per shape, one layer with LLM-like correlated inputs (``llm_moment``: a common
  component, a low-rank part and per-channel scales, so most channel pairs are strongly
  correlated); the cpu backend is timed on every row and the reference on ``--ref-rows`` rows
  (0 = all rows; its time is scaled to the layer's rows: its pair matrix is O(cols²) per row),
  and the masks and swap counts of the rows both ran are checked equal. The cpu figure includes
  its Python side (initial mask, ``g0 = D0 @ M``). Pairs: the deltas the bounded search computed
  per accepted swap (op ``refine_mask_swap``'s third output; it counts the first cycle's scans and
  the one new (q, q*) column per swap) against the full search's |kept| x |pruned|.
  ``--captured FILE`` adds real sub-layers (``benchmarks/experiments/capture_layer.py``).
* ``scaling``: 32 rows, 1k to 16k columns: kernel time per weight and pairs per swap.
* ``model``: ``prune_model`` of the embedded SmolLM2-135M (README setup: 32 x 512 calibration
  tokens, or ``--nsamples`` x ``--seqlen``; every sub-layer refined) with cov_window (defaults) and with swap (its default cap), cpu
  backend, wall clock of each, in the same run.

Writes ``benchmarks/results/kernels_swap.csv`` and the "Objective swap" section of RESULTS.md.

    python benchmarks/bench_swap.py --parts kernels scaling
    python benchmarks/bench_swap.py --parts model --sparsity 0.6
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import command_line, header, median, write_csv, write_section  # noqa: E402

import dsnot_kernels as dk  # noqa: E402
from dsnot_kernels import ops  # noqa: E402
from dsnot_kernels.objectives.cov_window import cov_g0  # noqa: E402

SHAPES = {"576x576": (576, 576), "192x576": (192, 576), "1536x576": (1536, 576), "576x1536": (576, 1536),
          "4096x4096": (4096, 4096)}
WIDTHS = (1024, 2048, 4096, 8192, 16384)


def llm_moment(cols, seed=0, common=1.0, rank=32):
    """A (cols, cols) float64 second moment S (common 11ᵀ + FᵀF / rank + I) S: per-channel scales S
    (log-normal, a few outliers), a shared component and a rank-``rank`` part; median channel
    correlation about 0.5. Exactly symmetric, PSD up to rounding."""
    g = torch.Generator().manual_seed(seed)
    s = torch.exp(0.5 * torch.randn(cols, generator=g, dtype=torch.float64))
    s[torch.randperm(cols, generator=g)[: max(1, cols // 200)]] *= 5.0
    F = torch.randn(rank, cols, generator=g, dtype=torch.float64)
    M = F.t() @ F
    M /= rank
    M += common
    M.diagonal().add_(1.0)
    M *= s.unsqueeze(0)
    M *= s.unsqueeze(1)
    return M


def layer(rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    W = 0.02 * torch.randn(rows, cols, generator=g)
    M = llm_moment(cols, seed)
    d = torch.diagonal(M).float()
    stats = (torch.randn(cols, generator=g) * d.sqrt(), d, d)  # sum_metric_row, var, scaler_row
    return W, stats, M


def op_run(W, mask0, M, cap):
    """The kernel alone on given inputs: (mask, swaps, pairs, seconds incl. g0)."""
    t0 = time.perf_counter()
    g0 = cov_g0(W, mask0, M)
    out = torch.ops.dsnot_kernels.refine_mask_swap.default(W, mask0, M, g0, 0, cap, 0)
    return (*out, time.perf_counter() - t0)


def kernels(args, table, csv_rows):
    layers = [(name, *layer(*SHAPES[name])) for name in args.shapes]
    if args.captured:
        cap = torch.load(args.captured, weights_only=False)
        for name, e in cap.items():
            layers.append((f"{name.split('.', 2)[-1]} {tuple(e['W'].shape)[0]}x{tuple(e['W'].shape)[1]}",
                           e["W"].float(), (e["smr"], e["var"], e["scaler"]), e["H"]))
    for name, W, (smr, var, scaler), H in layers:
        if W.shape[1] >= 4096 and args.rows_wide:
            W = W[:args.rows_wide].contiguous()  # the kernel's time is per row: rows are independent
        rows, cols = W.shape
        M = ops.validate_second_moment(H, "swap", cols, W.device)
        kw = dict(sparsity=args.sparsity, objective="swap", second_moment=M, return_swaps=True)
        cap = ops.default_max_cycle_time("swap", cols)

        def call(backend, w=W):
            return dk.refine_mask(w, smr, var, scaler, backend=backend, max_cycle_time=cap, **kw)

        call("cpu", W[:4])  # warm-up
        walls = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            cm, cs = call("cpu")
            walls.append(time.perf_counter() - t0)
        c_wall = median(walls)
        n_ref = args.ref_rows if cols < 4096 else args.ref_rows_wide
        n_ref = rows if n_ref == 0 else min(rows, n_ref)
        sub = W[:n_ref].contiguous()
        t0 = time.perf_counter()
        rm, rs = call("torch", sub)
        r_wall = time.perf_counter() - t0
        sm, ss = call("cpu", sub) if n_ref < rows else (cm, cs)
        if not (torch.equal(sm, rm) and torch.equal(ss, rs)):
            sys.exit(f"MISMATCH {name}: cpu and torch differ")
        mask0 = dk.refine_mask(W, smr, var, scaler, sparsity=args.sparsity, max_cycle_time=0)
        _, swaps, pairs, _ = op_run(W, mask0, M, cap)
        n_p = int(cols * args.sparsity)
        full = (cols - n_p) * n_p
        per_swap = float(pairs.double().sum() / swaps.double().sum().clamp(min=1))
        t0 = time.perf_counter()
        dk.refine_mask(W, smr, var, scaler, sparsity=args.sparsity, objective="cov_window", second_moment=M,
                       backend="cpu")
        cw_wall = time.perf_counter() - t0
        r_row, c_row = r_wall / n_ref, c_wall / rows
        table.append((name, rows, cols, n_ref, r_row * rows, c_wall, r_row / c_row, float(cs.float().mean()),
                      int(cs.max()), per_swap, full, cw_wall))
        csv_rows.append(dict(part="kernels", shape=name, rows=rows, cols=cols, ref_rows=n_ref,
                             torch_s=f"{r_row * rows:.4f}", cpu_s=f"{c_wall:.4f}",
                             mean_swaps=f"{float(cs.float().mean()):.2f}", max_swaps=int(cs.max()),
                             pairs_per_swap=f"{per_swap:.0f}", full_pairs=full, cov_window_s=f"{cw_wall:.4f}",
                             threads=torch.get_num_threads()))
        print(f"{name:>24} cov_window {cw_wall:7.3f} s  torch {r_row * rows:9.2f} s{'*' if n_ref < rows else ' '} cpu {c_wall:7.3f} s "
              f"x{r_row / c_row:7.1f}  swaps/row {float(cs.float().mean()):6.1f} (max {int(cs.max())})  "
              f"pairs/swap {per_swap:8.0f} of {full} ({100 * per_swap / full:.1f} %)", flush=True)


def scaling(args, table, csv_rows):
    for cols in args.widths:
        W, (smr, var, scaler), M = layer(32, cols, seed=cols)
        mask0 = dk.refine_mask(W, smr, var, scaler, sparsity=args.sparsity, max_cycle_time=0)
        cap = ops.default_max_cycle_time("swap", cols)
        _, swaps, pairs, wall = op_run(W, mask0, M, cap)
        n_p = int(cols * args.sparsity)
        full = (cols - n_p) * n_p
        per_swap = float(pairs.double().sum() / swaps.double().sum().clamp(min=1))
        ns = wall / W.numel() * 1e9
        table.append((cols, wall, ns, float(swaps.float().mean()), int(swaps.max()), per_swap, full))
        csv_rows.append(dict(part="scaling", shape=f"32x{cols}", rows=32, cols=cols, ref_rows=0, torch_s="",
                             cpu_s=f"{wall:.4f}", mean_swaps=f"{float(swaps.float().mean()):.2f}",
                             max_swaps=int(swaps.max()), pairs_per_swap=f"{per_swap:.0f}", full_pairs=full,
                             cov_window_s="", threads=torch.get_num_threads()))
        print(f"32x{cols:<6} {wall:8.3f} s  {ns:9.1f} ns/weight  swaps/row {float(swaps.float().mean()):7.1f} "
              f"(max {int(swaps.max())})  pairs/swap {per_swap:9.0f} of {full} ({100 * per_swap / full:.2f} %)",
              flush=True)
        del M


def model(args, table):
    from dsnot_kernels.data import calibration_windows, default_texts, tokenize
    from dsnot_kernels.models import load_model
    for objective in ("cov_window", "swap"):
        mdl, tok, _ = load_model()
        cal_text, _ = default_texts()
        calib = calibration_windows(tokenize(tok, cal_text), args.nsamples, args.seqlen, seed=0)
        cfg = dk.PruneConfig(sparsity=args.sparsity, skip="none", objective=objective, backend="cpu",
                             max_cycle_time=None if objective == "swap" else 50)
        t0 = time.perf_counter()
        rep = dk.prune_model(mdl, calib, cfg)
        wall = time.perf_counter() - t0
        mask_s = sum(e["mask_time_s"] for e in rep["sublayers"])
        swaps = [e["swaps"] / e["shape"][0] for e in rep["sublayers"]]
        table.append((objective, wall, mask_s, sum(swaps) / len(swaps)))
        print(f"whole model {objective:>10}: {wall:7.1f} s (masks {mask_s:6.1f} s, "
              f"mean swaps/row {sum(swaps) / len(swaps):.1f})", flush=True)
        del mdl


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", default=["kernels", "scaling"], choices=["kernels", "scaling", "model"])
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--widths", nargs="+", type=int, default=list(WIDTHS))
    ap.add_argument("--captured", default=None, help="torch.save'd sub-layers of capture_layer.py")
    ap.add_argument("--sparsity", type=float, default=0.6)
    ap.add_argument("--nsamples", type=int, default=32,
                    help="model part: calibration windows of --seqlen tokens (fewer = a harsher ratio: "
                         "the forward passes shrink, the mask time does not)")
    ap.add_argument("--seqlen", type=int, default=512,
                    help="model part: tokens per calibration window (the demo setting: --nsamples 16 --seqlen 256)")
    ap.add_argument("--ref-rows", type=int, default=64, help="rows the reference runs per layer (0 = all)")
    ap.add_argument("--ref-rows-wide", type=int, default=2, help="the same at >= 4096 columns")
    ap.add_argument("--rows-wide", type=int, default=256, help="rows of the >= 4096-column layers (0 = all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if ops._serve_swap_cpu(torch.device("cpu")) is not None:
        sys.exit(f"cpu backend unavailable: {ops._serve_swap_cpu(torch.device('cpu'))}")
    ktab, stab, mtab, csv_rows = [], [], [], []
    if "kernels" in args.parts:
        kernels(args, ktab, csv_rows)
    if "scaling" in args.parts:
        scaling(args, stab, csv_rows)
    if "model" in args.parts:
        model(args, mtab)
    if args.no_write:
        return
    body = header(command_line("benchmarks/bench_swap.py", argv))
    body += (f"\nSparsity {args.sparsity:.0%} (unstructured), the swap default cap "
             "(`ops.default_max_cycle_time`), `llm_moment` inputs (common component + rank 32 + "
             "channel scales) unless a captured layer.\n")
    if ktab:
        body += ("\nCPU kernel vs reference. Masks and swap counts checked equal on the rows both ran; "
                 "reference times marked * ran on the first `--ref-rows` (`--ref-rows-wide` at >= 4096 columns) rows and are scaled to the "
                 "layer. pairs/swap: deltas the bounded search computed per accepted swap "
                 "(all its scans, first cycle included, and the (q, q*) column per swap) against "
                 "the |kept| x |pruned| a full scan computes per swap.\n\n"
                 "cov_window: the same layer with `objective=\"cov_window\"` (defaults) on the cpu backend.\n\n"
                 "| layer | torch (s) | cpu (s) | speedup | cov_window cpu (s) | swap / cov_window | swaps/row (max) | pairs/swap | full pairs/swap | read |\n"
                 "|---|---|---|---|---|---|---|---|---|---|\n")
        for name, rows, cols, n_ref, rw, cw, sp, sw, smax, ps, full, cww in ktab:
            star = "*" if n_ref < rows else ""
            body += (f"| {name} | {rw:.2f}{star} | {cw:.3f} | {sp:.0f}x | {cww:.3f} | {cw / cww:.1f}x | {sw:.1f} ({smax}) | "
                     f"{ps:.0f} | {full} | {100 * ps / full:.1f} % |\n")
    if stab:
        body += ("\nGrowth with width: 32 rows, kernel alone (op `refine_mask_swap` plus `g0`).\n\n"
                 "| cols | wall (s) | ns / weight | swaps/row (max) | pairs/swap | full pairs/swap | read |\n"
                 "|---|---|---|---|---|---|---|\n")
        for cols, wall, ns, sw, smax, ps, full in stab:
            body += f"| {cols} | {wall:.3f} | {ns:.0f} | {sw:.1f} ({smax}) | {ps:.0f} | {full} | {100 * ps / full:.2f} % |\n"
    mbody = header(command_line("benchmarks/bench_swap.py", argv))
    if mtab:
        mbody += (f"\nWhole-model `prune_model` of the embedded SmolLM2-135M ({args.nsamples} x {args.seqlen} calibration tokens, "
                 "every sub-layer refined, cpu backend), same run; masks = the refine_mask calls alone:\n\n"
                 "| objective | wall (s) | masks (s) | swaps/row (mean over sub-layers) |\n|---|---|---|---|\n")
        for obj, wall, mask_s, sw in mtab:
            mbody += f"| {obj} | {wall:.1f} | {mask_s:.1f} | {sw:.1f} |\n"
        if len(mtab) == 2:
            mbody += f"\nswap / cov_window wall: {mtab[1][1] / mtab[0][1]:.2f}x (target <= 2x).\n"
    if csv_rows:
        write_csv("kernels_swap.csv", csv_rows)
    if ktab or stab:
        write_section("kernels-swap", "Objective swap: CPU kernel vs reference, pairs read, growth (bench_swap.py)", body)
    if mtab:
        write_section("model-swap", "Objective swap: whole-model prune vs cov_window (bench_swap.py)", mbody)
    print("wrote benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
