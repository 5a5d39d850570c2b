"""Objective "swap" on real sub-layers of the embedded model: swaps per row to the local optimum,
and the per-layer output error against Wanda and cov_window (defaults).

The calibration of docs/RESULTS.md (32 x 512 windows of pydoc text, seed 0) with dense inputs (no block is
pruned on the way: every setting sees the same inputs). For each target sub-layer the second
moment M = E[x xᵀ] per token; the error is ``sum over rows of D M Dᵀ`` (D = the pruned weights),
reported relative to Wanda's. Swap runs with an unbounded cap (``--cap``, default 10 x cols), so
the counts are what a row needs to reach its local optimum.

Run: OMP_NUM_THREADS=1 nice -n 10 python benchmarks/experiments/swap_layers.py [--blocks 2 15]
     [--row-step 4] [--cache /tmp/layers.pt]
Writes benchmarks/experiments/swap_layers.json (one entry per block, sub-layer and setting).
"""
import argparse, json, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

import dsnot_kernels as dk
from dsnot_kernels.pruning import PruningError
from dsnot_kernels.pruning.adapters import weight_view
import _harness as H
from _harness import second_moment_of

SUBS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj")
SETTINGS = {"50%": (0.5, 0, 0), "60%": (0.6, 0, 0), "70%": (0.7, 0, 0), "2:4": (0.5, 2, 4)}
OUT = Path(__file__).resolve().parent / "swap_layers.json"


class _Stop(Exception):
    pass


def capture(blocks, cache=None):
    """{(block, name): dict(W, smr, var, scaler, H, M)} of the target sub-layers, dense inputs
    (``cache``: a .pt file that keeps them between runs)."""
    if cache and Path(cache).exists():
        got = torch.load(cache)
        if all((b, n) in got for b in blocks for n in SUBS):
            return got
    model, calib, _, _ = H.setup()
    seen, out = {}, {}

    def per_sublayer(name, module, stats, config):
        blk = seen.get(name, -1) + 1
        seen[name] = blk
        if blk > max(blocks):
            raise _Stop
        W = weight_view(module)
        if blk in blocks and name in SUBS:
            out[(blk, name)] = dict(W=W.detach().clone(), smr=stats.sum_metric_row.clone(), var=stats.var.clone(),
                                    scaler=stats.scaler_row.clone(), H=stats.hessian.clone(), M=second_moment_of(stats))
        return torch.zeros(W.shape, dtype=torch.bool), {"name": name, "kind": "", "shape": list(W.shape),
                                                         "refined": False, "sparsity": 0.0, "swaps": 0,
                                                         "rows_swapped": 0, "mask_time_s": 0.0}

    H.install(None, hessian=True, per_sublayer=per_sublayer)
    try:
        dk.prune_model(model, calib, dk.PruneConfig(sparsity=0.6, refine=False, batch_size=H.BATCH, progress=False))
    except PruningError as exc:
        if not isinstance(exc.__cause__, _Stop):
            raise
    H.install(None)
    if cache:
        torch.save(out, cache)
    return out


def loss(W, mask, M):
    D = torch.where(mask, W.double(), torch.zeros((), dtype=torch.float64))
    return float(((D @ M) * D).sum())


def markdown(rows) -> str:
    """The RESULTS.md table of ``rows`` (swap_layers.json entries)."""
    out = ["| block | sub-layer | shape | setting | cov_window (defaults) | swap | swaps per row: mean / p50 / p90 / p99 / max | max / cols |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["swap"]
        out.append(f"| {r['block']} | {r['name'].split('.')[-1]} | {r['shape'][0]}x{r['shape'][1]} | {r['setting']} "
                   f"| {r['cov_window']['ratio']:.3f} | **{s['ratio']:.3f}** | {s['swaps_mean']:.1f} / {s['swaps_p50']:.0f} / "
                   f"{s['swaps_p90']:.0f} / {s['swaps_p99']:.0f} / {s['swaps_max']} | {s['max_over_cols']:.3f} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, nargs="+", default=[2, 15])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS))
    ap.add_argument("--subs", nargs="+", default=list(SUBS))
    ap.add_argument("--cap", type=float, default=10.0, help="swap cap as a multiple of cols")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--cache", default=None, help="a .pt file keeping the captured sub-layers")
    ap.add_argument("--row-step", type=int, default=1, help="every k-th row only (the rows are independent)")
    ap.add_argument("--table-only", nargs="*", default=None, metavar="JSON",
                    help="print the markdown table of these JSON files and stop")
    args = ap.parse_args()
    if args.table_only is not None:
        print(markdown([r for f in (args.table_only or [args.out]) for r in json.loads(Path(f).read_text())["rows"]]))
        return
    torch.set_num_threads(1)
    layers = capture(tuple(args.blocks), args.cache)
    results = []
    for (blk, name), d in sorted(layers.items()):
        if name not in args.subs or blk not in args.blocks:
            continue
        W, M = d["W"][::args.row_step].contiguous(), d["M"]
        cols = W.shape[1]
        for label in args.settings:
            sp, n, m = SETTINGS[label]
            common = dict(sparsity=sp, prune_n=n, prune_m=m, return_swaps=True)
            stats = (W, d["smr"], d["var"], d["scaler"])
            row = {"block": blk, "name": name, "setting": label, "shape": list(d["W"].shape),
                   "rows_used": W.shape[0]}
            wmask, _ = dk.refine_mask(*stats, max_cycle_time=0, **common)
            L0 = loss(W, wmask, M)
            row["wanda_loss"] = L0
            t = time.perf_counter()
            cmask, csw = dk.refine_mask(*stats, objective="cov_window", second_moment=d["H"], **common)
            row["cov_window"] = {"ratio": loss(W, cmask, M) / L0, "time_s": time.perf_counter() - t,
                                 "swaps_mean": float(csw.float().mean())}
            t = time.perf_counter()
            smask, ssw = dk.refine_mask(*stats, objective="swap", second_moment=d["H"],
                                        max_cycle_time=int(args.cap * cols), **common)
            sw = ssw.double()
            q = torch.quantile(sw, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
            row["swap"] = {"ratio": loss(W, smask, M) / L0, "time_s": time.perf_counter() - t,
                           "backend": dk.available_backends("cpu", "swap")[0],
                           "swaps_mean": float(sw.mean()), "swaps_p50": q[0], "swaps_p90": q[1],
                           "swaps_p99": q[2], "swaps_max": int(sw.max()), "max_over_cols": float(sw.max()) / cols,
                           "hist": torch.bincount(ssw.long()).tolist()}
            results.append(row)
            s = row["swap"]
            print(f"blk {blk:2d} {name:17s} {label:4s} cov_window {row['cov_window']['ratio']:.3f}  swap {s['ratio']:.3f}"
                  f"  swaps/row mean {s['swaps_mean']:.1f} p50 {s['swaps_p50']:.0f} p90 {s['swaps_p90']:.0f}"
                  f" p99 {s['swaps_p99']:.0f} max {s['swaps_max']} ({s['max_over_cols']:.3f} cols)"
                  f"  {s['time_s']:.0f} s ({s['backend']})", flush=True)
            Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "rows": results}, indent=1))


if __name__ == "__main__":
    main()
