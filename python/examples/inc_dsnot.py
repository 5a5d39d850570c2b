"""Intel Neural Compressor users: our kernels behind INC's DSnoT function, by changing one line.

INC (2.4 to 3.7) computes DSnoT masks with
``neural_compressor.compression.pruner.dsnot.DSnoT(initial_metric, sparsity_ratio, wrapped_layer)``.
``dsnot_kernels.integrations.neural_compressor.DSnoT`` takes the same arguments and returns the same
bool mask (True = pruned); ``patch()`` installs it inside INC, so ``prune_wanda(..., dsnot=True)``
runs on our kernels. Runs on CPU in seconds, with or without neural-compressor installed.

    python python/examples/inc_dsnot.py
"""
import time
import types

import torch

import dsnot_kernels as dk
from dsnot_kernels.integrations import neural_compressor as inc


def wrapped_layer(rows=256, cols=1024, samples=8, tokens=64, seed=0):
    """Without INC: any object with INC's WrappedGPT attributes will do."""
    g = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(cols, rows, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(rows, cols, generator=g))
    stats = dk.CalibrationStats(cols)
    stats.add_batch(torch.randn(samples, tokens, cols, generator=g) + 0.3 * torch.randn(cols, generator=g))
    return types.SimpleNamespace(layer=layer, scaler_row=stats.scaler_row, sum_metric_row=stats.sum_metric_row,
                                 var=stats.var.unsqueeze(1))  # INC keeps var as (in, 1)


def main():
    w = wrapped_layer()
    weight = w.layer.weight.data
    metric = weight.abs() * torch.sqrt(w.scaler_row.unsqueeze(0))  # what INC's Wanda pruner passes

    # 1. The function itself: INC's signature and defaults (max_cycle_time=100).
    t0 = time.perf_counter()
    mask = inc.DSnoT(metric, 0.6, w)
    dt = time.perf_counter() - t0
    ref = dk.refine_mask(weight, w.sum_metric_row, w.var.reshape(-1), w.scaler_row, initial_metric=metric,
                         sparsity=0.6, max_cycle_time=100, backend="torch")
    print(f"unstructured 60%: {dt * 1e3:.1f} ms, sparsity {mask.float().mean():.4f}, "
          f"masks equal the reference: {torch.equal(mask, ref)}")
    nm = inc.DSnoT(metric, 0.5, w, prune_n=2, prune_m=4)
    print(f"2:4: N:M violations {len(dk.nm_violations(nm))}")
    assert torch.equal(mask, ref) and dk.nm_violations(nm) == []

    # 2. Inside an installed neural-compressor: one line, reversible.
    try:
        import neural_compressor.compression.pruner.dsnot as inc_dsnot
    except ImportError:
        print("neural-compressor is not installed: patch() skipped "
              "(with it: `with inc.patch(): prune_wanda(model, dataloader, 0.5, dsnot=True)`)")
        print("done")
        return
    from neural_compressor.compression.pruner.wanda.wrapper import WrappedGPT

    real = WrappedGPT(w.layer)
    torch.manual_seed(0)  # INC's float32 sums round differently from ours: on ~1.5 % of random layers this
    real.add_batch(torch.randn(4, 64, weight.shape[1]), None)  # size one row differs (docs/INTEGRATIONS.md, INC)
    metric = weight.abs() * torch.sqrt(real.scaler_row.unsqueeze(0))
    theirs = inc_dsnot.DSnoT(metric.clone(), 0.5, real)
    with inc.patch():               # prune_wanda(..., dsnot=True) would now call our kernels
        ours = inc_dsnot.DSnoT(metric.clone(), 0.5, real)
    print(f"patched INC: masks equal INC's own: {torch.equal(ours, theirs)}; patched now: {inc.is_patched()}")
    assert torch.equal(ours, theirs)
    print("done")


if __name__ == "__main__":
    main()
