"""Demo: DSnoT on one random layer with every available backend (placeholder until the model demo)."""
import time

import torch

import dsnot_kernels as dk


def main():
    torch.manual_seed(0)
    rows, cols = 1024, 4096
    weight = torch.randn(rows, cols)
    stats = dk.CalibrationStats(cols)
    stats.add_batch(torch.randn(8, 256, cols) + 0.2 * torch.randn(cols))
    ref = None
    for backend in dk.available_backends("cpu"):
        t0 = time.perf_counter()
        mask, swaps = dk.refine_mask(weight, stats.sum_metric_row, stats.var, stats.scaler_row,
                                     sparsity=0.6, backend=backend, return_swaps=True)
        dt = time.perf_counter() - t0
        same = "" if ref is None else f", equal to torch: {bool(torch.equal(mask, ref))}"
        ref = mask if ref is None else ref
        print(f"{backend:>6}: {dt * 1e3:8.1f} ms, {int(swaps.sum())} swaps, "
              f"sparsity {mask.float().mean():.4f}{same}")


if __name__ == "__main__":
    main()
