"""Every objective on Llama-7B- and 70B-shaped sub-layers, and a projected whole-model mask time.

Inputs (seeded; ``wide_layer``): the layer's inputs are modelled as
``x = s * (sqrt(common) * mu + F f / sqrt(rank) + e)`` with ``f ~ N(0, I_rank)``, ``e ~ N(0, I)``:

* per-channel scales ``s``: log-normal (sigma 0.5), and ``--outliers`` channels (default 8) scaled
  ``--outlier-scale`` times (default 20x: their second moment is 400x the rest), as real LLM
  activations have;
* a strong common component: the mean ``sqrt(common) * s * mu``, ``mu_j = 1 + 0.3 N(0, 1)``,
  ``--common`` 4 (two thirds of a typical channel's second moment; every pair of channels
  correlates at 0.6-0.9);
* a low-rank part, ``F`` (rank x cols) standard normal, ``--rank`` 16, plus unit noise ``e``.

So ``M = E[x xᵀ] = S (common mu muᵀ + FᵀF / rank + I) S`` exactly (float64; no sampling noise),
the statistics the initial mask and the cursor objectives use follow from it (512 tokens per sample:
``scaler_row = 512 M_jj``, ``sum_metric_row = 512 mean_j``, ``var = M_jj - mean_j²``), and the
weights are Student-t (3 degrees of freedom) times 0.02, float32.

Per shape, ``--rows`` rows of the layer (rows are independent: a kernel's time is per row), 60 %
unstructured by default, every objective on the cpu backend (``--backend triton``: on the GPU), one run: mask time per weight,
swaps per row, pairs read by "swap" (the op's third output), peak resident memory (VmHWM reset
before each objective; it includes the layer's M), and "swap" checked mask- and swap-equal to the
reference on ``--ref-rows`` rows. Then a projection of the whole model's mask time (labelled as
such; formula in the table).

    python benchmarks/bench_wide.py                           # small shapes, a quick run
    python benchmarks/bench_wide.py --shapes 7b --rows 32     # the Llama-7B shapes
    python benchmarks/bench_wide.py --shapes 4096x11008 --objectives cov_window swap
    python benchmarks/bench_wide.py --shapes 7b --rows 64 --objectives cov_window swap --compare-alone
    python benchmarks/bench_wide.py --shapes 7b --rows 16 --objectives cov_window swap --compare-blocks  # search 5
    python benchmarks/bench_wide.py --shapes 7b --rows 64 --objectives cov_window swap --compare-f32  # search 6
    python benchmarks/bench_wide.py --backend triton --shapes 7b --rows 8 --no-write   # a lent GPU
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import command_line, header, write_csv, write_section  # noqa: E402
from wide_projection import MODELS, project_table  # noqa: E402

import dsnot_kernels as dk  # noqa: E402
from dsnot_kernels import ops  # noqa: E402
from dsnot_kernels.objectives.cov_window import cov_g0  # noqa: E402

SHAPES = {  # name: (rows, cols) = (out_features, in_features)
    "1024x1024": (1024, 1024), "2816x1024": (2816, 1024), "1024x2816": (1024, 2816),  # 7B / 4
    "2048x2048": (2048, 2048),
    "4096x4096": (4096, 4096),      # 7B q/k/v/o
    "11008x4096": (11008, 4096),    # 7B gate/up
    "4096x11008": (4096, 11008),    # 7B down
    "8192x8192": (8192, 8192),      # 70B q/o (k/v: 1024x8192)
    "16384x16384": (16384, 16384),  # the growth fit's widest point
    "28672x8192": (28672, 8192),    # 70B gate/up
    "8192x28672": (8192, 28672),    # 70B down
}
# A shape of a width already measured adds nothing (the per-weight time depends on the width, not
# on the row count: rows are independent), so the groups hold one shape per width.
GROUPS = {"small": ["1024x1024", "2048x2048", "1024x2816"],
          "7b": ["4096x4096", "4096x11008"],
          "70b": ["8192x8192", "8192x28672"],
          "growth": ["2048x2048", "4096x4096", "8192x8192", "16384x16384"]}
OBJECTIVES = ("dsnot", "mse", "cov", "cov_window", "swap")
TOKENS = 512


def wide_layer(rows, cols, seed=0, common=4.0, rank=16, outliers=8, outlier_scale=20.0):
    """(W, stats, M): W (rows, cols) float32 Student-t; stats (sum_metric_row, var, scaler_row,
    mean) (cols,) float32; M (cols, cols) float64, exactly symmetric (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.exp(0.5 * torch.randn(cols, generator=g, dtype=torch.float64))
    s[torch.randperm(cols, generator=g)[:outliers]] *= outlier_scale
    mu = (1.0 + 0.3 * torch.randn(cols, generator=g, dtype=torch.float64)) * math.sqrt(common)
    F = torch.randn(rank, cols, generator=g, dtype=torch.float64) / math.sqrt(rank)
    M = F.t() @ F
    del F
    M.addr_(mu, mu)
    M.diagonal().add_(1.0)
    M *= s.unsqueeze(0)
    M *= s.unsqueeze(1)
    symmetrize_(M)
    mean = (s * mu).float()
    d = torch.diagonal(M).float()
    stats = (TOKENS * mean, (d - mean * mean).clamp(min=1e-12), TOKENS * d, mean)
    t = torch.distributions.StudentT(torch.tensor(3.0))
    torch.manual_seed(seed + 1)
    W = (0.02 * t.sample((rows, cols))).float().contiguous()
    return W, stats, M


def symmetrize_(M, block=1024):
    """Copy the upper triangle onto the lower one in place (M exactly symmetric; no second M)."""
    for i in range(0, M.shape[0], block):
        M[i:i + block, :i] = M[:i, i:i + block].t()
        d = M[i:i + block, i:i + block]
        d.copy_(torch.triu(d) + torch.triu(d, 1).t())


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run_objective(obj, W, stats, M, args):
    """(mask, swaps, wall, peak MB) of refine_mask on all rows of W, ``--backend`` (default cpu;
    on a GPU backend the wall time is synchronized and the peak is torch's peak allocated memory)."""
    smr, var, scaler, mean = stats
    kw = dict(sparsity=args.sparsity, objective=obj, backend=args.backend, return_swaps=True)
    if obj in ("cov", "cov_window", "swap"):
        kw["second_moment"] = M
    if obj == "mse":
        kw["mean"] = mean
    gpu = W.is_cuda
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    reset_peak()
    t0 = time.perf_counter()
    mask, swaps = dk.refine_mask(W, smr, var, scaler, **kw)
    if gpu:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return mask, swaps, wall, (torch.cuda.max_memory_allocated() / 2**20 if gpu else peak_mb())


def swap_pairs(W, stats, M, args):
    """Pairs read per accepted swap by the op, and the share of |kept| x |pruned| per swap."""
    smr, var, scaler, _ = stats
    mask0 = dk.refine_mask(W, smr, var, scaler, sparsity=args.sparsity, max_cycle_time=0)
    cap = ops.default_max_cycle_time("swap", W.shape[1])
    _, swaps, pairs = torch.ops.dsnot_kernels.refine_mask_swap.default(W, mask0, M, cov_g0(W, mask0, M), 0,
                                                                       cap, 0)
    n_p = int(W.shape[1] * args.sparsity)
    per_swap = float(pairs.double().sum() / swaps.double().sum().clamp(min=1))
    return per_swap, per_swap / max(1, (W.shape[1] - n_p) * n_p)


# The op alone (g0 given) with two searches on the same rows, alternated `repeats` times, masks and
# swap counts checked equal: (flag, (search a, search b), repeats, key, what a / b are, the text).
COMPARISONS = [
    ("compare_plain", (0, 2), 2, "plain", ("split", "plain"),
     "The split bound against the plain one: search 0 (the default, the split bound from 2048 columns) and 2 "
     "(the plain Cauchy-Schwarz bound only: the kernel before the split), the fastest of two each."),
    ("compare_alone", (0, 4), 1, "alone", ("blocks", "one row"),
     "Rows sharing tiles of M: search 0 (the default: rows in blocks of up to 64 per thread sweeping M in "
     "512 KiB tiles, from 2048 columns) and 4 (the same search, one row at a time: the kernel before the "
     "blocks), once each."),
    ("compare_blocks", (0, 5), 1, "blockscan", ("default", "block scans"),
     "Block scans (search 5, csrc/cpu/swap_block_scan.h: rows scanned by blocks of 16 columns, one row at a "
     "time, a block read only when its bounds cannot rule it out) against search 0 (the default), once each."),
    ("compare_f32", (0, 6), 2, "f32", ("float32 scans", "float64 scans"),
     "Float32 row scans (search 0, the default from 8192 columns: csrc/cpu/swap_scan32.h, each row of the pair "
     "matrix scanned in float32 and its candidates rechecked in float64) against search 6 (the same search "
     "with float64 scans), alternated, the fastest of two each."),
]


def compare_search(W, stats, M, args, searches, repeats):
    """({search: fastest wall}, {search: pairs read}) of the op with each of ``searches`` on the same
    rows, alternated ``repeats`` times; exits on a mask or swap-count difference."""
    smr, var, scaler, _ = stats
    mask0 = dk.refine_mask(W, smr, var, scaler, sparsity=args.sparsity, max_cycle_time=0)
    g0 = cov_g0(W, mask0, M)
    cap = ops.default_max_cycle_time("swap", W.shape[1])
    walls, pairs, outs = {s: [] for s in searches}, {}, {}
    for _ in range(repeats):
        for search in searches[::-1]:
            t0 = time.perf_counter()
            outs[search] = torch.ops.dsnot_kernels.refine_mask_swap.default(W, mask0, M, g0, 0, cap, search)
            walls[search].append(time.perf_counter() - t0)
            pairs[search] = int(outs[search][2].sum())
    a, b = searches
    if not (torch.equal(outs[a][0], outs[b][0]) and torch.equal(outs[a][1], outs[b][1])):
        sys.exit(f"MISMATCH: swap search {a} and {b} differ")
    return {s: min(w) for s, w in walls.items()}, pairs


def check_reference(W, stats, M, args, mask, swaps):
    if args.ref_rows <= 0 or "swap" not in args.objectives:
        return "-"
    n = min(args.ref_rows, W.shape[0])
    smr, var, scaler, _ = stats
    rm, rs = dk.refine_mask(W[:n].contiguous(), smr, var, scaler, sparsity=args.sparsity, objective="swap",
                            second_moment=M, backend="torch", return_swaps=True)
    if not (torch.equal(rm.cpu(), mask[:n].cpu()) and torch.equal(rs.cpu(), swaps[:n].cpu())):
        sys.exit(f"MISMATCH: swap cpu and reference differ on the first {n} rows")
    return f"equal ({n} rows)"


def bench_shape(name, args):
    rows, cols = SHAPES[name]
    cheap_rows = min(rows, args.rows * args.cheap_factor)
    W_all, stats, M = wide_layer(max(min(rows, args.rows), cheap_rows), cols, seed=args.seed + cols, common=args.common, rank=args.rank,
                             outliers=args.outliers, outlier_scale=args.outlier_scale)
    if args.backend != "cpu":  # the layer on the GPU (M too: the Triton kernels read it there)
        W_all, stats, M = W_all.cuda(), tuple(t.cuda() for t in stats), M.cuda()
    dk.refine_mask(W_all[:2].contiguous(), *stats[:3], sparsity=args.sparsity, max_cycle_time=1)  # warm-up
    out = []
    for obj in args.objectives:
        # the objectives other than swap run more rows: their per-row time is small next to the per-call part
        rows_run = min(rows, args.rows) if obj == "swap" else cheap_rows
        W = W_all[:rows_run].contiguous()
        r1 = max(1, rows_run // 4)
        mask, swaps, wall, peak = run_objective(obj, W, stats, M, args)
        if obj == "swap":  # its per-call part (one pass over M) is small next to its rows: all of it per row
            per_row, fixed = wall / rows_run, 0.0
        else:  # the per-call part (M's validation...) from runs on a quarter of the rows; the fastest of two
            wall = min(wall, run_objective(obj, W, stats, M, args)[2])
            wall1 = min(run_objective(obj, W[:r1].contiguous(), stats, M, args)[2] for _ in range(2))
            per_row = max(0.0, (wall - wall1) / (rows_run - r1)) if r1 < rows_run else wall / rows_run
            fixed = max(0.0, wall - per_row * rows_run)
        e = dict(shape=name, rows=rows, cols=cols, rows_run=rows_run, objective=obj, wall_s=wall,
                 fixed_s=fixed, ns_per_weight=per_row / cols * 1e9, swaps_mean=float(swaps.float().mean()),
                 swaps_max=int(swaps.max()), peak_mb=peak, pairs_per_swap="", read="", reference="")
        if obj == "swap" and args.backend == "cpu":  # the pairs come from the CPU op
            e["pairs_per_swap"], e["read"] = swap_pairs(W, stats, M, args)
        if obj == "swap":
            e["reference"] = check_reference(W, stats, M, args, mask, swaps)
        if obj == "swap" and args.backend == "cpu":
            for flag, searches, repeats, key, names, _ in COMPARISONS:
                if getattr(args, flag):
                    walls, pairs = compare_search(W, stats, M, args, searches, repeats)
                    for srch in searches:
                        e[f"{key}_s{srch}_wall_s"], e[f"{key}_s{srch}_pairs"] = walls[srch], pairs[srch]
                    print(f"{name:>12} swap op: " + ", ".join(
                        f"{n} (search {s}) {walls[s]:.2f} s, {pairs[s]} pairs" for n, s in zip(names, searches)),
                        flush=True)
        out.append(e)
        print(f"{name:>12} {obj:>10}: {wall:8.2f} s for {rows_run} rows (layer part {fixed:.2f} s), "
              f"{e['ns_per_weight']:10.0f} ns/weight, "
              f"swaps/row {e['swaps_mean']:7.1f} (max {e['swaps_max']}), peak {peak:7.0f} MB"
              + (f", read {100 * e['read']:.1f} % of pairs" if e["read"] != "" else "")
              + (f", reference {e['reference']}" if obj == "swap" else ""),
              flush=True)
    del M
    return out


def growth(entries, obj):
    """Exponent e of ns/weight ~ cols^e between the narrowest and widest shape measured (or None)."""
    pts = sorted({e["cols"]: e["ns_per_weight"] for e in entries if e["objective"] == obj}.items())
    if len(pts) < 2 or pts[0][0] == pts[-1][0]:
        return None
    (c0, t0), (c1, t1) = pts[0], pts[-1]
    return math.log(t1 / t0) / math.log(c1 / c0) if t0 > 0 and t1 > 0 else None


def write(entries, args, argv, load):
    body = header(command_line("benchmarks/bench_wide.py", argv))
    body += (f"- load: `uptime` before the run: {load[0]}; after: {load[1]} (a 2-core machine shared with "
             "other jobs: compare ratios within this run)\n\n"
             f"Inputs: `wide_layer` (common {args.common}, rank {args.rank}, {args.outliers} outlier channels "
             f"{args.outlier_scale:g}x, Student-t(3) weights), {args.sparsity:.0%} unstructured, {args.backend} backend, "
             "each objective's default cap, the first `--rows` rows of each layer (`--cheap-factor` times more "
             "for the objectives other than swap). ns/weight = mask time "
             "per row / cols. swap: per-row time = its mask time / rows (its per-call part, one pass over M, is "
             "counted in). The others: per-row time = (t(rows) - t(rows / 4)) / (3 rows / 4), each t the fastest of "
             "two runs, and layer part = t(rows) - rows x per-row time (M's validation and other per-call work). Peak: process VmHWM during the objective "
             "(includes the layer's M and the benchmark's own tensors).\n\n"
             "| layer | objective | rows run | mask time (s) | layer part (s) | ns / weight | x cov_window | swaps/row (max) | "
             "swap pairs read / swap | share of pairs | peak MB | swap = reference |\n"
             "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    cw = {e["shape"]: e["wall_s"] for e in entries if e["objective"] == "cov_window"}
    for e in entries:
        ratio = f"{e['wall_s'] / cw[e['shape']]:.2f}" if e["shape"] in cw else "-"
        pairs = f"{e['pairs_per_swap']:.0f}" if e["pairs_per_swap"] != "" else "-"
        share = f"{100 * e['read']:.1f} %" if e["read"] != "" else "-"
        body += (f"| {e['shape']} | {e['objective']} | {e['rows_run']} | {e['wall_s']:.2f} | {e['fixed_s']:.2f} | {e['ns_per_weight']:.0f} | "
                 f"{ratio} | {e['swaps_mean']:.1f} ({e['swaps_max']}) | {pairs} | {share} | {e['peak_mb']:.0f} | "
                 f"{e['reference'] or '-'} |\n")
    for obj in args.objectives:
        ex = growth(entries, obj)
        if ex is not None:
            body += f"\n{obj}: ns/weight grows like cols^{ex:.2f} between the narrowest and widest shape of this run."
    for _, (sa, sb), _, key, (na, nb), text in COMPARISONS:
        cmp = [e for e in entries if f"{key}_s{sa}_wall_s" in e]
        if not cmp:
            continue
        body += (f"\n\n{text} Op `refine_mask_swap` alone (g0 given), the same rows; masks and swaps checked "
                 f"equal.\n\n| layer | rows | {nb} (s) | {na} (s) | {nb} / {na} | pairs {nb} / {na} |\n"
                 "|---|---|---|---|---|---|\n")
        for e in cmp:
            walls = {x: e[f"{key}_s{x}_wall_s"] for x in (sa, sb)}
            pairs = {x: e[f"{key}_s{x}_pairs"] for x in (sa, sb)}
            body += (f"| {e['shape']} | {e['rows_run']} | {walls[sb]:.2f} | {walls[sa]:.2f} | "
                     f"{walls[sb] / walls[sa]:.2f} | {pairs[sb] / max(1, pairs[sa]):.3f} |\n")
    body += "\n\n" + project_table(entries, args.objectives, torch.get_num_threads())
    write_section(args.section, "Every objective at Llama-7B/70B widths, and a projected whole-model time (bench_wide.py)",
                  body)
    keys = list(dict.fromkeys(k for e in entries for k in e))
    write_csv(f"{args.section}.csv", [{k: e.get(k, "") for k in keys} for e in entries])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["small"],
                    help=f"shape names or groups: {', '.join(GROUPS)}; {', '.join(SHAPES)}")
    ap.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    ap.add_argument("--rows", type=int, default=32, help="rows of each layer that run (rows are independent)")
    ap.add_argument("--cheap-factor", type=int, default=4,
                    help="the objectives other than swap run this many times --rows rows")
    ap.add_argument("--ref-rows", type=int, default=2, help="rows of swap checked against the reference (0 = none)")
    ap.add_argument("--sparsity", type=float, default=0.6)
    ap.add_argument("--common", type=float, default=4.0)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--outliers", type=int, default=8)
    ap.add_argument("--outlier-scale", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="cpu", choices=["cpu", "triton", "cuda"],
                    help="refine_mask's backend (triton / cuda: the layer on the GPU; swap has no cuda backend)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compare-plain", action="store_true",
                    help="also time swap's op with the split bound (search 0) against without it (search 2)")
    ap.add_argument("--compare-blocks", action="store_true",
                    help="also time the swap op with search 5 (block scans) against 0 on the same rows")
    ap.add_argument("--compare-alone", action="store_true",
                    help="also time swap's op with rows in blocks (search 0) against one row at a time (search 4)")
    ap.add_argument("--compare-f32", action="store_true",
                    help="also time swap's op with float32 row scans (search 0) against float64 ones (search 6)")
    ap.add_argument("--section", default="wide", help="the RESULTS.md section this run refreshes")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = []
    for s in args.shapes:
        for n in GROUPS.get(s, [s]):
            if n not in SHAPES:
                sys.exit(f"unknown shape {n!r}; known: {', '.join(SHAPES)} and groups {', '.join(GROUPS)}")
            names.append(n)
    load = [os.popen("uptime").read().strip().split("load average:")[-1].strip()]
    entries = []
    for n in names:
        entries += bench_shape(n, args)
    load.append(os.popen("uptime").read().strip().split("load average:")[-1].strip())
    print(project_table(entries, args.objectives, torch.get_num_threads()))
    if not args.no_write:
        write(entries, args, argv, load)
        print(f"wrote benchmarks/RESULTS.md (section {args.section!r}) and benchmarks/results/{args.section}.csv")


if __name__ == "__main__":
    main()
