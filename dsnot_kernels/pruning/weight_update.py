"""Weight-updating steps of the driver: SparseGPT as published and the exact reconstruction.

One rule for every combination (docs/KERNEL_CONTRACT.md, "Weight updates"):

* ``initial="sparsegpt"``: SparseGPT gives the initial mask and its OBS-updated weights.
* refinement (any objective) after SparseGPT: the mask is refined against the *dense* weights,
  starting from SparseGPT's mask (``initial_mask=``; each row keeps its pruned count); SparseGPT's
  updated weights do not fit the new mask, so the kept weights are then reconstructed (warm start:
  SparseGPT's weights, zeroed on the new mask).
* ``reconstruct=True``: after the final mask, whatever the initial method and objective, each
  row's kept weights are re-solved (``dsnot_kernels.weights.reconstruct``) against the dense row.
"""
from __future__ import annotations

import time

import torch

from dsnot_kernels.weights.reconstruct import reconstruct
from dsnot_kernels.weights.sparsegpt import sparsegpt


def sparsegpt_initial(W: torch.Tensor, stats, config):
    """(mask, new_weight, seconds) of SparseGPT on the dense (rows, cols) ``W`` with the stats' Hessian."""
    if stats.hessian is None:
        raise ValueError('initial="sparsegpt" needs CalibrationStats(..., hessian=True)')
    t0 = time.perf_counter()
    mask, new_w = sparsegpt(W, stats.hessian, sparsity=float(config.sparsity), prune_n=config.prune_n,
                            prune_m=config.prune_m)
    return mask, new_w, time.perf_counter() - t0


def reconstruct_kept(W: torch.Tensor, mask: torch.Tensor, stats, init=None):
    """(new_weight, info) of the exact reconstruction of the kept weights for ``mask``.

    ``info`` (JSON-serialisable): iterations, max_rel_residual, max_rel_decrease, converged, rows_not_converged,
    rows_reverted, loss_before/loss_after (mean row loss in the Hessian's scale), time_s."""
    if stats.hessian is None:
        raise ValueError("reconstruct=True needs CalibrationStats(..., hessian=True)")
    new_w, info = reconstruct(W, mask, stats.hessian, init=init, return_info=True)
    return new_w, info


def updated_output_error(W: torch.Tensor, new_w: torch.Tensor, stats, moment) -> dict:
    """``{"mean_sq", "mse"}`` of ``new_w x - W x`` over the calibration inputs, averaged over rows
    (as ``output_error``, which covers the zeroing-only case)."""
    D = W.double() - new_w.double()
    mean_part = D @ stats.mean.double()
    total = ((D @ moment) * D).sum(1)
    return {"mean_sq": float((mean_part ** 2).mean()), "mse": float(total.mean())}
