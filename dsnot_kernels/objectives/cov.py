"""Objective 2, ``"cov"``: the next cursor pair is taken if it lowers the row's full output error
``L(P) = D M Dᵀ`` (docs/KERNEL_CONTRACT.md "Objective 2").

D = W on the pruned set P (float64), M the inputs' (cols, cols) second moment (float64, exactly
symmetric), g = D M (``cov_g0``: one float64 matmul per call, then updated per accepted swap). A
pair (prune q, regrow r) changes L by
``delta = ((((2 w_q) g_q - (2 w_r) g_r) + (w_q w_q) M_qq) + (w_r w_r) M_rr) - ((2 w_q) w_r) M_qr``
(evaluated in exactly this order); it is accepted iff delta < 0, and then
``g <- g + (w_q M[q, :] - w_r M[r, :])``. Cursors, rejections and stops as objective 1.
"""
from __future__ import annotations

import torch

from dsnot_kernels.objectives.cov_window import cov_g0


def _at(t, cols):
    return t.gather(1, cols.unsqueeze(1)).squeeze(1)


class CovScore:
    """Acceptance of objective 2 for the cursor walk of ``refine_mask_reference``.

    W: (rows, cols) float32; mask: (rows, cols) bool, True = pruned; second_moment: (cols, cols)
    float64, exactly symmetric."""

    def __init__(self, *, W, mask, second_moment, nm: bool, **_):
        self.Wd = W.double()
        self.M = second_moment
        self.Mdiag = torch.diagonal(second_moment).clone()
        self.g = cov_g0(W, mask, second_moment)
        self.nm = nm

    def accept(self, active, r_ok, q_ok, q, r, after):
        """``(ok, active)``: (rows,) bool, the rows that swap and the rows still running; g is
        updated for the rows that swap."""
        w_q, w_r = _at(self.Wd, q), _at(self.Wd, r)
        g_q, g_r = _at(self.g, q), _at(self.g, r)
        M, Mdiag = self.M, self.Mdiag
        delta = (((((2 * w_q) * g_q - (2 * w_r) * g_r) + (w_q * w_q) * Mdiag[q]) + (w_r * w_r) * Mdiag[r])
                 - ((2 * w_q) * w_r) * M[q, r])
        active = active & r_ok & (q_ok | self.nm)
        ok = active & q_ok & (delta < 0)
        hit_rows = ok.nonzero().squeeze(1)
        if hit_rows.numel():
            # one rounded addition per element, as g[hit] = g[hit] + (...) (rows are unique)
            self.g.index_add_(0, hit_rows, w_q[ok].unsqueeze(1) * M[q[ok]] - w_r[ok].unsqueeze(1) * M[r[ok]])
        return ok, active
