"""Initial pruning metrics (spec §2): wanda, magnitude, sparsegpt_metric. All (rows, cols) float32.

"sparsegpt_metric" is the authors' DSnoT flag ``--initial_method sparsegpt``: SparseGPT's saliency for
the mask only, no weight update. SparseGPT as published (mask and weight updates) is
``dsnot_kernels.sparsegpt``.
"""
from __future__ import annotations

import torch

from dsnot_kernels.reference import wanda_metric

__all__ = ["wanda_metric", "magnitude_metric", "sparsegpt_metric", "initial_metric"]


def magnitude_metric(weight: torch.Tensor) -> torch.Tensor:
    """``|W|`` in float32."""
    return weight.float().abs()


def sparsegpt_metric(weight: torch.Tensor, hessian: torch.Tensor, percdamp: float = 0.01):
    """SparseGPT's saliency ``W² / d²``, d = diag of the upper Cholesky factor of inv(H + damp·I).

    Dead input channels (``diag H == 0``) get ``H[j, j] = 1`` and ``W[:, j] = 0`` first, as in the
    authors' code. ``hessian`` (cols, cols) is not modified.
    """
    W = weight.float().clone()
    H = hessian.float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(H.shape[0], device=H.device)
    H[idx, idx] += damp
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    return W ** 2 / (torch.diag(Hinv).reshape((1, -1))) ** 2


def initial_metric(method: str, weight: torch.Tensor, stats) -> torch.Tensor:
    """The initial metric named ``method`` ("wanda", "magnitude", "sparsegpt_metric") from ``stats``."""
    if method == "wanda":
        return wanda_metric(weight, stats.scaler_row)
    if method == "magnitude":
        return magnitude_metric(weight)
    if method == "sparsegpt_metric":
        if getattr(stats, "hessian", None) is None:
            raise ValueError("the sparsegpt_metric metric needs CalibrationStats(..., hessian=True)")
        return sparsegpt_metric(weight, stats.hessian)
    if method == "sparsegpt":
        raise ValueError('"sparsegpt" is SparseGPT as published (mask and weight updates, '
                         'dsnot_kernels.sparsegpt), not a metric; the saliency alone is "sparsegpt_metric"')
    raise ValueError(f"unknown initial method {method!r}; expected wanda, magnitude or sparsegpt_metric")
