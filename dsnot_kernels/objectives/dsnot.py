"""Objective 0, ``"dsnot"``: the authors' rule (the paper; docs/ALGORITHM.md §3).

Each cycle the two cursors propose one pair (prune q, regrow r), chosen by the sign of the row's
mean output error ``err`` (objectives/reference.py walks them). The pair is taken whenever both
cursors still have a candidate and, with ``without_same_sign`` (the authors' default, here
``same_sign``), the error after the swap keeps the sign it had before the first cycle. No loss is
computed: the threshold on ``|err|`` and the cycle cap stop the row.
"""
from __future__ import annotations

import torch


class DsnotRule:
    """Acceptance of objective 0 for the cursor walk of ``refine_mask_reference``.

    err: (rows,) float32, the initial mean error; the sign every accepted swap must keep."""

    def __init__(self, *, err: torch.Tensor, same_sign: bool, **_):
        self.sign0 = torch.sign(err)
        self.same_sign = same_sign

    def accept(self, active, r_ok, q_ok, q, r, after):
        """``(ok, active)``: (rows,) bool, the rows that swap, and those still running (the same:
        a rejected pair stops the row)."""
        ok = active & r_ok & q_ok
        if self.same_sign:
            ok &= torch.sign(after) == self.sign0
        return ok, ok
