"""Initial pruning metrics (spec §2): wanda, magnitude, sparsegpt_metric. All (rows, cols) float32.

"sparsegpt_metric" is the authors' DSnoT flag ``--initial_method sparsegpt``: SparseGPT's saliency for
the mask only, no weight update. SparseGPT as published (mask and weight updates) is
``dsnot_kernels.weights.sparsegpt``.
"""
from __future__ import annotations

import torch

from dsnot_kernels.objectives.reference import sqrt_rn, wanda_metric

__all__ = ["wanda_metric", "magnitude_metric", "sparsegpt_metric", "initial_metric", "authors_sqrt_scaler",
           "SQRT_MODES"]

SQRT_MODES = ("exact", "torch")


def authors_sqrt_scaler(scaler_row: torch.Tensor) -> torch.Tensor:
    """A (cols,) float32 ``s`` whose correctly rounded square root is, bit for bit, ATen's float32
    ``torch.sqrt(scaler_row)`` on ``scaler_row``'s device (what the authors' code multiplies into
    the wanda metric).

    Every backend takes the wanda metric's square root correctly rounded (docs/KERNEL_CONTRACT.md);
    ATen's float32 ``torch.sqrt`` is not on CPU (one ulp off on about a fifth of inputs with torch
    2.13, AVX-512), and a one-ulp change of ``sqrt(scaler_row[j])`` can reorder a near-tie of the
    wanda metric and so flip a mask row. Passing this ``s`` as ``scaler_row`` to ``refine_mask`` gives
    the masks of ``|W| * torch.sqrt(scaler_row)``: ``s = t * t`` with ``t = torch.sqrt(scaler_row)``,
    and in binary floating point the correctly rounded square root of ``fl(t * t)`` is ``t``
    (checked here; ValueError where it does not hold). On CUDA ATen's square root is correctly
    rounded and ``sqrt_rn(s) == sqrt_rn(scaler_row)``.
    """
    if not isinstance(scaler_row, torch.Tensor) or scaler_row.dim() != 1 or not scaler_row.is_floating_point():
        raise TypeError("scaler_row must be a (cols,) floating tensor")
    t = torch.sqrt(scaler_row.float())
    s = t * t
    if not torch.equal(sqrt_rn(s), t):
        bad = (sqrt_rn(s) != t).nonzero().flatten()[:5].tolist()
        raise ValueError(f"authors_sqrt_scaler: torch.sqrt(scaler_row) cannot be reproduced through a correctly "
                         f"rounded square root at columns {bad} (non-finite or out-of-range values); use the "
                         "exact square root")
    return s


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
                         'dsnot_kernels.weights.sparsegpt), not a metric; the saliency alone is "sparsegpt_metric"')
    raise ValueError(f"unknown initial method {method!r}; expected wanda, magnitude or sparsegpt_metric")
