"""Objective 1, ``"mse"``: the next cursor pair is taken if it lowers mean² + variance of the
row's output error (docs/KERNEL_CONTRACT.md "Objective 1").

With ``a = w * mean`` and ``b = w² * var`` (float64, per column) and ``e`` the sum of ``a`` over
the pruned set (``lane_sum``), a pair (prune q, regrow r) gives ``t = (e + a_q) - a_r`` and
``delta = ((t t - e e) + b_q) - b_r``, evaluated in exactly this order; it is accepted iff
``delta < 0``, and then ``e <- t``. An exhausted cursor stops the row; an N:M group without a
prune candidate only rejects.
"""
from __future__ import annotations

import torch

from dsnot_kernels.objectives.common import lane_sum


def _at(t, cols):
    return t.gather(1, cols.unsqueeze(1)).squeeze(1)


class MseScore:
    """Acceptance of objective 1 for the cursor walk of ``refine_mask_reference``.

    W: (rows, cols) float32; mask: (rows, cols) bool, True = pruned; mean, var: (cols,) float32."""

    def __init__(self, *, W, mask, mean, var, nm: bool, **_):
        Wd = W.double()
        self.a = Wd * mean.double().unsqueeze(0)
        self.b = (Wd * Wd) * var.double().unsqueeze(0)
        self.e = lane_sum(torch.where(mask, self.a, torch.zeros((), dtype=torch.float64, device=W.device)))
        self.nm = nm

    def accept(self, active, r_ok, q_ok, q, r, after):
        """``(ok, active)``: (rows,) bool, the rows that swap and the rows still running."""
        t = (self.e + _at(self.a, q)) - _at(self.a, r)
        delta = ((t * t - self.e * self.e) + _at(self.b, q)) - _at(self.b, r)
        active = active & r_ok & (q_ok | self.nm)
        ok = active & q_ok & (delta < 0)
        self.e = torch.where(ok, t, self.e)
        return ok, active
