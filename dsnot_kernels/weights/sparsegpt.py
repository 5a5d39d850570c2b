"""SparseGPT as published (Frantar and Alistarh, 2023): one-shot mask selection with OBS weight updates.

Written from the paper's Algorithm 1. For a linear layer W (rows, cols) with input Hessian
``H = 2 X Xᵀ / n`` (``CalibrationStats(hessian=True).hessian`` is exactly that recurrence):

1. Dead input channels (``H[j, j] == 0``: the input is always 0) get ``H[j, j] = 1`` and
   ``W[:, j] = 0``; then ``H += percdamp * mean(diag H) * I`` (dampening).
2. ``U`` = the upper Cholesky factor of ``H⁻¹`` (``H⁻¹ = Uᵀ U``); ``d_j = U[j, j]``.
3. Columns are visited in blocks of ``blocksize``. At the start of a block, the mask of the block
   is chosen from the *current* (already updated) weights: unstructured, the ``int(numel *
   sparsity)`` smallest saliencies ``w² / d²`` over the whole (rows, block) slab (so rows get
   different counts); N:M, at the first column of each M-group, the N smallest saliencies of the
   group in each row.
4. Column by column inside the block: ``q = w`` with the pruned entries set to 0, the error
   ``e = (w - q) / d_j``, and the sequential OBS update of the block's remaining columns
   ``W[:, j:] -= e ⊗ U[j, j:]``. After the block, the lazy batch update of every later column
   ``W[:, end:] -= E · U[block, end:]``.

Computed in float32 (as the authors' code). One deliberate difference from the authors' code:
the unstructured selection prunes exactly ``int(numel * sparsity)`` entries per block (their
``tmp <= sorted[int(numel * sparsity)]`` prunes one more, and more on ties).
"""
from __future__ import annotations

import math

import torch

__all__ = ["sparsegpt", "damped_hessian"]


def _check_args(weight, hessian, sparsity, prune_n, prune_m, blocksize, percdamp):
    if not isinstance(weight, torch.Tensor) or not isinstance(hessian, torch.Tensor):
        raise TypeError("sparsegpt: weight and hessian must be torch.Tensors")
    if weight.dim() != 2:
        raise ValueError(f"sparsegpt: weight must be 2-D (rows, cols), got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"sparsegpt: weight must be floating point, got {weight.dtype}")
    rows, cols = weight.shape
    if tuple(hessian.shape) != (cols, cols):
        raise ValueError(f"sparsegpt: hessian must be ({cols}, {cols}) to match weight's columns, "
                         f"got {tuple(hessian.shape)}")
    if not hessian.is_floating_point():
        raise ValueError(f"sparsegpt: hessian must be floating point, got {hessian.dtype}")
    if hessian.device != weight.device:
        raise ValueError(f"sparsegpt: hessian is on {hessian.device} but weight is on {weight.device}")
    for name, v in (("prune_n", prune_n), ("prune_m", prune_m), ("blocksize", blocksize)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"sparsegpt: {name} must be an int, got {type(v).__name__}")
    if blocksize < 1:
        raise ValueError(f"sparsegpt: blocksize must be >= 1, got {blocksize}")
    if prune_n or prune_m:
        if not 0 < prune_n < prune_m:
            raise ValueError(f"sparsegpt: N:M needs 0 < prune_n < prune_m, got {prune_n}:{prune_m}")
        if cols % prune_m:
            raise ValueError(f"sparsegpt: N:M needs cols divisible by prune_m, got cols={cols}, prune_m={prune_m}")
        if blocksize % prune_m:
            raise ValueError(f"sparsegpt: blocksize ({blocksize}) must be a multiple of prune_m ({prune_m}) "
                             "so that no M-group straddles two blocks")
    else:
        if isinstance(sparsity, (bool, str)) or not isinstance(sparsity, (int, float)):
            raise TypeError(f"sparsegpt: sparsity must be a real number, got {type(sparsity).__name__}")
        if not 0.0 <= float(sparsity) < 1.0:
            raise ValueError(f"sparsegpt: sparsity must be in [0, 1), got {sparsity}")
    if isinstance(percdamp, (bool, str)) or not isinstance(percdamp, (int, float)) \
            or not math.isfinite(percdamp) or percdamp < 0:
        raise ValueError(f"sparsegpt: percdamp must be a finite number >= 0, got {percdamp!r}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("sparsegpt: weight has non-finite values (NaN or inf)")
    if not bool(torch.isfinite(hessian).all()):
        raise ValueError("sparsegpt: hessian has non-finite values (NaN or inf)")


def damped_hessian(hessian: torch.Tensor, percdamp: float = 0.01, dtype=torch.float32):
    """``(H', dead)``: H (cols, cols) symmetrised, dead channels (zero diagonal) set to 1 on the
    diagonal, plus ``percdamp * mean(diag)`` on the diagonal; ``dead`` the (cols,) bool of dead
    channels. The input is not modified. Used by ``sparsegpt`` and ``reconstruct``."""
    H = hessian.to(dtype).clone()
    H = (H + H.t()) * 0.5
    diag = torch.diagonal(H)
    dead = diag == 0
    diag[dead] = 1
    diag += percdamp * torch.mean(diag)
    return H, dead


def _upper_cholesky_of_inverse(H: torch.Tensor) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) == 0:
        U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if int(info) != 0:
        raise ValueError("sparsegpt: the dampened Hessian is not positive definite (leading minor "
                         f"{int(info)}); pass a larger percdamp or more calibration tokens")
    return U


def sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, *, sparsity: float = 0.5, prune_n: int = 0,
              prune_m: int = 0, blocksize: int = 128, percdamp: float = 0.01):
    """SparseGPT on one linear layer: the mask and the OBS-updated weights.

    Args:
        weight: (rows, cols) = (out_features, in_features), any float dtype; not modified.
        hessian: (cols, cols) float, ``2 X Xᵀ / n`` of the layer's inputs
            (``CalibrationStats(cols, hessian=True).hessian``); any positive scale gives the same
            result up to rounding. Not modified.
        sparsity: unstructured ratio in [0, 1): ``int(rows * block_cols * sparsity)`` pruned per
            column block (rows differ). Ignored for N:M.
        prune_n, prune_m: N:M pattern when ``prune_n > 0`` (cols and blocksize divisible by M).
        blocksize: columns per block (the lazy-update and mask-selection unit), >= 1.
        percdamp: dampening, ``percdamp * mean(diag H)`` added to the diagonal (>= 0).

    Returns:
        ``(mask, new_weight)``: mask (rows, cols) bool, True = pruned; new_weight (rows, cols) in
        weight's dtype and device, exactly 0 on the mask (and on dead input channels). No NaN:
        a Hessian that stays singular after dampening raises ``ValueError``.
    """
    _check_args(weight, hessian, sparsity, prune_n, prune_m, blocksize, percdamp)
    rows, cols = weight.shape
    if rows == 0 or cols == 0:
        return torch.zeros((rows, cols), dtype=torch.bool, device=weight.device), weight.clone()
    W = weight.detach().to(torch.float32).contiguous().clone()
    H, dead = damped_hessian(hessian.detach(), percdamp)
    W[:, dead] = 0
    Hinv = _upper_cholesky_of_inverse(H)
    mask = torch.zeros((rows, cols), dtype=torch.bool, device=W.device)
    nm = prune_n > 0
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diagonal(Hinv1)
        mask1 = torch.zeros(W1.shape, dtype=torch.bool, device=W1.device)
        if not nm:
            k = int(W1.numel() * float(sparsity))
            if k:
                sal = (W1 ** 2 / (d ** 2).unsqueeze(0)).flatten()
                order = torch.sort(sal, stable=True)[1]
                mask1.view(-1)[order[:k]] = True
        for i in range(count):
            if nm and i % prune_m == 0:
                sal = W1[:, i:i + prune_m] ** 2 / (d[i:i + prune_m] ** 2).unsqueeze(0)
                idx = torch.sort(sal, dim=1, stable=True)[1][:, :prune_n]
                mask1[:, i:i + prune_m].scatter_(1, idx, True)
            w = W1[:, i]
            q = torch.where(mask1[:, i], torch.zeros((), dtype=w.dtype, device=w.device), w)
            Q1[:, i] = q
            err = (w - q) / d[i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        mask[:, i1:i2] = mask1
        if i2 < cols:
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if not bool(torch.isfinite(W).all()):  # cannot happen with a positive definite H; never return NaN
        raise ValueError("sparsegpt: non-finite weights after the updates; pass a larger percdamp")
    W[mask] = 0
    return mask, W.to(weight.dtype)
