"""Objective 4, ``"swap"``: the best swap of the whole row, repeated to a local optimum.

Part of the PyTorch reference (the executable spec; docs/KERNEL_CONTRACT.md "Objective 4").
The loss is objective 2's: the row's output error ``L(P) = D M Dᵀ`` with ``D`` = the float32 weight
on the pruned set ``P`` (float64), ``M`` the inputs' second moment, ``g = D M`` (``cov_g0``, the one
shared matmul, then updated eagerly per accepted swap exactly as objective 2). Each cycle, per
active row, every pair (q kept, r pruned) is scored (N:M: q and r in the same M-group)::

    A_q   = (2 w_q) g_q + (w_q w_q) M_qq
    B_r   = (w_r w_r) M_rr - (2 w_r) g_r
    delta = (A_q - ((2 w_q) w_r) M_qr) + B_r        # float64, each operation rounded

and the smallest delta is applied if it is < 0 (ties: the lowest q, then the lowest r); otherwise
the row stops (no single swap lowers L: a local optimum). At most ``max_cycle_time`` swaps per
row. No ``err``, threshold, same-sign rule or cursor: the statistics only shape the initial mask.

Brute force, O(cols²) per swap per row: rows are independent, so the rows are taken in chunks and
each chunk runs to its end. Per chunk the cross terms ``C[q, r] = ((2 w_q) w_r) M_qr`` of every
pair are computed once (they do not depend on the mask) and each cycle evaluates
``(A[:, :, None] - C) + B[:, None, :]`` with ``A = +inf`` on pruned q and ``B = +inf`` on kept r,
then one row-major arg-min (the first minimum: lowest q, then lowest r). A chunk holds at most
``CHUNK_BYTES`` of float64 (C and the work buffer). N:M scores only the M x M pairs of each group.
"""
from __future__ import annotations

import torch

from dsnot_kernels.reference_window import cov_g0

# Memory bound of one chunk of rows: the cached cross terms plus the per-cycle work buffer.
CHUNK_BYTES = 256 * 2**20
_INF = float("inf")


def _cycles(Wd, g, mask, M, Mdiag, max_cycle_time, prune_m, swaps, rows_idx):
    """Run the rows ``rows_idx`` (1-D int64) to their end. ``Wd`` (n, cols) float64 weights of those
    rows, ``g`` (n, cols) float64 their ``D M`` (updated in place), ``mask`` the full (rows, cols)
    bool mask and ``swaps`` the full (rows,) int32 counts (both updated in place)."""
    n, cols = Wd.shape
    dev = Wd.device
    inf = torch.full((), _INF, dtype=torch.float64, device=dev)
    nm = prune_m > 0
    if nm:
        G = cols // prune_m
        wg = Wd.view(n, G, prune_m)
        Mg = torch.stack([M[s:s + prune_m, s:s + prune_m] for s in range(0, cols, prune_m)])  # (G, m, m)
        C = ((2 * wg).unsqueeze(-1) * wg.unsqueeze(-2)) * Mg.unsqueeze(0)               # (n, G, m, m)
        starts = torch.arange(0, cols, prune_m, device=dev)
    else:
        C = ((2 * Wd).unsqueeze(2) * Wd.unsqueeze(1)) * M.unsqueeze(0)                  # (n, cols, cols)
    m = mask[rows_idx]                       # (n, cols) this chunk's mask, written back at the end
    live = torch.arange(n, device=dev)       # chunk-local ids of the rows still active
    for _ in range(max_cycle_time):
        w, gg, mk = Wd[live], g[live], m[live]
        A = torch.where(mk, inf, (2 * w) * gg + (w * w) * Mdiag)
        B = torch.where(mk, (w * w) * Mdiag - (2 * w) * gg, inf)
        if nm:
            k = len(live)
            d = (A.view(k, G, prune_m, 1) - C) + B.view(k, G, 1, prune_m)               # (k, G, m, m)
            best, flat = d.view(k, -1).min(dim=1)    # first minimum: lowest group, q, then r
            grp, rest = flat // (prune_m * prune_m), flat % (prune_m * prune_m)
            q = starts[grp] + rest // prune_m
            r = starts[grp] + rest % prune_m
        else:
            d = torch.sub(A.unsqueeze(2), C)
            d.add_(B.unsqueeze(1))                                                        # (k, cols, cols)
            best, flat = d.view(len(live), -1).min(dim=1)  # first minimum: lowest q, then lowest r
            q, r = flat // cols, flat % cols
        del d
        ok = best < 0
        if not bool(ok.all()):
            keep = ok.nonzero().squeeze(1)
            live, q, r = live[keep], q[keep], r[keep]
            C = C[keep]
            if live.numel() == 0:
                break
        w_q, w_r = Wd[live, q], Wd[live, r]
        # one rounded addition per element (rows are unique), as objective 2
        g.index_add_(0, live, w_q.unsqueeze(1) * M[q] - w_r.unsqueeze(1) * M[r])
        m[live, q] = True
        m[live, r] = False
        swaps[rows_idx[live]] += 1
    mask[rows_idx] = m


def refine_swap(W: torch.Tensor, mask: torch.Tensor, M: torch.Tensor, *, max_cycle_time: int,
                prune_m: int = 0):
    """Objective 4 from an initial mask; returns ``(mask, swaps)``.

    ``W`` (rows, cols) float32 (the weight as float32); ``mask`` (rows, cols) bool, True = pruned,
    the initial mask (modified in place and returned); ``M`` (cols, cols) float64, exactly
    symmetric (``ops.validate_second_moment``); ``prune_m`` > 0: N:M, pairs within each group of
    ``prune_m`` columns. ``swaps`` (rows,) int32: accepted swaps per row (at most ``max_cycle_time``).
    """
    rows, cols = W.shape
    dev = W.device
    swaps = torch.zeros(rows, dtype=torch.int32, device=dev)
    if rows == 0 or cols == 0 or max_cycle_time <= 0:
        return mask, swaps
    Wd = W.double()
    Mdiag = torch.diagonal(M).clone()
    g = cov_g0(W, mask, M)          # the shared matmul, on all rows at once
    per_row = 8 * 2 * (cols * prune_m if prune_m > 0 else cols * cols)
    step = max(1, CHUNK_BYTES // per_row)
    for s in range(0, rows, step):
        idx = torch.arange(s, min(rows, s + step), device=dev)
        gc = g[s:s + step].clone()
        _cycles(Wd[s:s + step], gc, mask, M, Mdiag, max_cycle_time, prune_m, swaps, idx)
    return mask, swaps
