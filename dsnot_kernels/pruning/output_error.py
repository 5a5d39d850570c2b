"""Output error of a masked linear layer on its calibration inputs (``record_error``).

For a row r with pruned weights D_r = W_r ∘ mask_r, the output error on input x is
e_r = -(D_r · x). Over the calibration tokens, with per-token mean μ and second moment
M = E[x xᵀ] (from ``CalibrationStats(hessian=True)``: M = H · S / (2 · tokens)):
mean part = (D_r · μ)², total = E[e_r²] = D_r M D_rᵀ; both averaged over rows.
The DSnoT objective only steers the mean part; "mse" steers mean² + (diagonal) variance.
"""
from __future__ import annotations

import torch


def second_moment(stats) -> torch.Tensor:
    if stats.hessian is None:
        raise ValueError("the output error needs CalibrationStats(..., hessian=True)")
    return stats.hessian.double() * (stats.nsamples / (2.0 * stats.ntokens))


def output_error(weight: torch.Tensor, mask: torch.Tensor, stats, moment=None) -> dict:
    """``{"mean_sq": ..., "mse": ...}`` of ``(W masked) x - W x``, averaged over rows and tokens."""
    D = torch.where(mask, weight.double(), torch.zeros((), dtype=torch.float64, device=weight.device))
    M = second_moment(stats) if moment is None else moment
    mean_part = D @ stats.mean.double()
    total = ((D @ M) * D).sum(1)
    return {"mean_sq": float((mean_part ** 2).mean()), "mse": float(total.mean())}
