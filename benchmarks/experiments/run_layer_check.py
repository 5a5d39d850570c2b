"""Layer-level check: true output MSE of each rule on a few sub-layers of the embedded model.

Inputs are the dense model's (no block is pruned during this pass, so 60 %, 70 % and 2:4 see the
same inputs). For each target sub-layer: M = E[x x^T] per token from CalibrationStats(hessian=True)
over the 32 x 512 calibration tokens; reported error = mean over rows of D M D^T
= ||(W - W_masked) X||_F^2 / (tokens * rows).
Run: OMP_NUM_THREADS=1 python benchmarks/experiments/run_layer_check.py
"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
torch.set_num_threads(1)
import dsnot_kernels as dk
from dsnot_kernels.pruning import PruningError
from dsnot_kernels.pruning.adapters import weight_view
import _harness as H
from objective_variants import VARIANTS, loss_cov, loss_diag, refine_variant, second_moment_of

BLOCKS = (2, 15, 28)
SUBS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj")
SETTINGS = [("60%", 0.6, 0, 0), ("70%", 0.7, 0, 0), ("2:4", 0.5, 2, 4)]
OUT = Path(__file__).resolve().parent / "layer_check.json"


class Stop(Exception):
    pass


def main():
    model, calib, _, load_s = H.setup()
    seen = {}
    results = []

    def per_sublayer(name, module, stats, config):
        blk = seen.get(name, -1) + 1
        seen[name] = blk
        if blk > max(BLOCKS):
            raise Stop
        W = weight_view(module)
        if blk in BLOCKS and name in SUBS:
            M = second_moment_of(stats)
            for label, sp, n, m in SETTINGS:
                row = {"block": blk, "name": name, "setting": label, "shape": list(W.shape)}
                common = dict(sparsity=sp, prune_n=n, prune_m=m, return_swaps=True, backend="torch")
                for meth in ("wanda", "dsnot", "mse"):
                    t = time.perf_counter()
                    if meth == "wanda":
                        mask, sw = dk.refine_mask(W, stats.sum_metric_row, stats.var, stats.scaler_row, max_cycle_time=0, **common)
                    else:
                        mask, sw = dk.refine_mask(W, stats.sum_metric_row, stats.var, stats.scaler_row, objective=meth,
                                                  mean=stats.mean if meth == "mse" else None, **common)
                    dt = time.perf_counter() - t
                    Ld = loss_diag(W, mask, stats.mean, stats.var)
                    row[meth] = {"mse": float(loss_cov(W, mask, M).mean()), "swaps": int(sw.sum()), "time_s": dt,
                                 "diag_L": float(Ld.sum())}
                    if meth == "wanda":
                        Ld0 = Ld
                    if meth == "mse":
                        row[meth]["rows_increased_diag"] = int((Ld > Ld0 * (1 + 1e-9) + 1e-15).sum())
                for v, (kind, win) in VARIANTS.items():
                    t = time.perf_counter()
                    Mv = second_moment_of(stats) if kind == "cov" else None
                    mask, sw, info = refine_variant(W, stats.sum_metric_row, stats.var, stats.scaler_row, stats.mean, Mv,
                                                    sparsity=sp, prune_n=n, prune_m=m, model=kind, window=win)
                    dt = time.perf_counter() - t
                    row[v] = {"mse": float(loss_cov(W, mask, M).mean()), "swaps": int(sw.sum()), "time_s": dt,
                              "own": info}
                row["proto_equals_pkg_mse"] = row["mse_proto"]["swaps"] == row["mse"]["swaps"] and \
                    abs(row["mse_proto"]["mse"] - row["mse"]["mse"]) <= 1e-12 * abs(row["mse"]["mse"])
                results.append(row)
                w = row["wanda"]["mse"]
                print(f"blk {blk:2d} {name:17s} {label}: " + "  ".join(
                    f"{k} {row[k]['mse']/w:.3f}" for k in ["dsnot", "mse", *VARIANTS]) + f"  (wanda {w:.4g})", flush=True)
                OUT.write_text(json.dumps({"load_s": load_s, "rows": results}, indent=1))
        return torch.zeros(W.shape, dtype=torch.bool), {"name": name, "kind": "", "shape": list(W.shape), "refined": False,
                                                         "sparsity": 0.0, "swaps": 0, "rows_swapped": 0, "mask_time_s": 0.0}

    H.install(None, hessian=True, per_sublayer=per_sublayer)
    t0 = time.perf_counter()
    try:
        dk.prune_model(model, calib, dk.PruneConfig(sparsity=0.6, refine=False, batch_size=H.BATCH, progress=False))
    except PruningError as exc:
        if not isinstance(exc.__cause__, Stop):
            raise
    print(f"done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
