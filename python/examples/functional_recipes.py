"""Any pruning library that has its own metric or mask: refine it with one call to refine_mask.

Three worked recipes on random layers (CPU, seconds):
  1. RIA (relative importance and activations): its metric as ``initial_metric=``.
  2. OWL (outlier-weighted layerwise sparsity): its per-layer ratios as ``sparsity=``.
  3. SparseGPT: its mask as ``initial_mask=`` (unstructured, any per-row count) or its 2:4 mask.
Each prints the layer's output error on the calibration data before and after the refinement and
checks the mask against the PyTorch reference backend.

    python python/examples/functional_recipes.py
"""
import torch

import dsnot_kernels as dk


def layer(rows, cols, seed):
    """A weight and the CalibrationStats of its inputs, plus the inputs themselves."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=g) / cols ** 0.5
    x = torch.randn(4, 64, cols, generator=g) + 2 * torch.randn(cols, generator=g)  # channel means matter (LLM-like)
    stats = dk.CalibrationStats(cols, hessian=True)
    stats.add_batch(x)
    return weight, stats, x


def output_error(weight, mask, x):
    dense = x @ weight.t()
    return float((x @ weight.masked_fill(mask, 0).t() - dense).norm() / dense.norm())


def refine(weight, stats, **kw):
    """The one call: weight, the three statistics, and the library's metric / mask / ratio."""
    mask = dk.refine_mask(weight, stats.sum_metric_row, stats.var, stats.scaler_row, **kw)
    assert torch.equal(mask, dk.refine_mask(weight, stats.sum_metric_row, stats.var, stats.scaler_row,
                                            backend="torch", **kw)), "backend differs from the reference"
    return mask


def report(name, weight, x, before, after):
    print(f"  {name}: sparsity {after.float().mean():.3f}, output error {output_error(weight, before, x):.4f} "
          f"-> {output_error(weight, after, x):.4f}")


def ria_metric(weight, scaler_row, a=0.5):
    """RIA: |W| relative to its row and column sums, times the input norm to the power a."""
    w = weight.abs()
    relative = w / w.sum(dim=1, keepdim=True) + w / w.sum(dim=0, keepdim=True)
    return relative * scaler_row.sqrt().pow(a).unsqueeze(0)


def owl_ratios(metrics, target, lam=0.08, m=5.0):
    """OWL: layers with more outliers (metric > m x layer mean) get lower sparsity, mean = target."""
    outliers = torch.tensor([float((t > m * t.mean()).float().mean()) for t in metrics])
    spread = (outliers - outliers.min()) / (outliers.max() - outliers.min()).clamp_min(1e-12) * 2 * lam
    density = spread - spread.mean() + (1 - target)
    return (1 - density).tolist()


def sparsegpt_style_mask(weight, hessian, sparsity, block=128):
    """A SparseGPT-style adaptive mask: per 128-column block, the smallest W²/d² over the whole block,
    so rows get different counts. (SparseGPT also updates the kept weights; pass that weight.)"""
    metric = dk.sparsegpt_metric(weight, hessian)
    mask = torch.zeros_like(weight, dtype=torch.bool)
    for c in range(0, weight.shape[1], block):
        part = metric[:, c:c + block]
        k = int(part.numel() * sparsity)
        flat = torch.zeros(part.numel(), dtype=torch.bool)
        flat[part.flatten().argsort(stable=True)[:k]] = True
        mask[:, c:c + block] = flat.view_as(part)
    return mask


def main():
    print("1. RIA metric as initial_metric (60% unstructured)")
    w, s, x = layer(128, 256, seed=0)
    ria = ria_metric(w, s.scaler_row)
    report("RIA + DSnoT", w, x, refine(w, s, initial_metric=ria, sparsity=0.6, max_cycle_time=0),
           refine(w, s, initial_metric=ria, sparsity=0.6))

    print("2. OWL per-layer ratios as sparsity (target 70%)")
    layers = [layer(128, 256, seed=i) for i in range(1, 4)]
    ratios = owl_ratios([dk.wanda_metric(w, s.scaler_row) for w, s, _ in layers], target=0.7)
    for (w, s, x), r in zip(layers, ratios):
        report(f"ratio {r:.3f}", w, x, refine(w, s, sparsity=r, max_cycle_time=0), refine(w, s, sparsity=r))

    print("3. SparseGPT mask as initial_mask")
    w, s, x = layer(128, 256, seed=5)
    initial = sparsegpt_style_mask(w, s.hessian, 0.6)
    refined = refine(w, s, initial_mask=initial)
    assert torch.equal(refined.sum(1), initial.sum(1)), "DSnoT keeps each row's pruned count"
    report("SparseGPT mask + DSnoT", w, x, initial, refined)
    metric = dk.sparsegpt_metric(w, s.hessian)
    two_four = refine(w, s, initial_metric=metric, prune_n=2, prune_m=4, max_cycle_time=0)  # a 2:4 mask
    refined = refine(w, s, initial_mask=two_four, initial_metric=metric, prune_n=2, prune_m=4)
    assert dk.nm_violations(refined) == []
    report("SparseGPT 2:4 mask + DSnoT", w, x, two_four, refined)
    print("done")


if __name__ == "__main__":
    main()
