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

Brute force, O(kept x cols) per swap per row. Rows are independent, so they are taken in chunks
and each chunk runs to its end (every row's result is as if all rows went cycle by cycle). Per
chunk the cross terms ``((2 w_q) w_c) M_qc`` of each kept q with every column c are cached in one
slot per kept column (a swap puts r in q's slot and recomputes that slot's row: O(cols)); each
cycle evaluates ``(A_q - cross) + B`` over all slots with ``B = +inf`` on kept columns, takes each
slot's first minimum (the lowest r) and then the lowest q column among the slots that reach the
row's minimum. A chunk holds at most ``CHUNK_BYTES`` of float64 (the cache and the work buffer).
N:M scores only the M x M pairs of each group.
"""
from __future__ import annotations

import torch

from dsnot_kernels.objectives.cov_window import cov_g0

# Memory bound of one chunk of rows: the cached cross terms plus the per-cycle work buffer.
CHUNK_BYTES = 256 * 2**20
_INF = float("inf")


def swap_default_cycles(cols: int) -> int:
    """Default cap of objective "swap": ``max(64, cols // 4)`` accepted swaps per row.

    The swaps a row needs to reach its local optimum grow with its width (measured on the embedded
    model, benchmarks/RESULTS.md "Objective swap": 5-9 % of cols on average, the longest row 13 %,
    at 50/60/70 % and 2:4); a quarter of the columns is about twice the longest measured row, and
    still bounds the time of a pathological row."""
    return max(64, cols // 4)


def _side_terms(w, gg, pruned, Mdiag):
    """``A`` (+inf on pruned columns) and ``B`` (+inf on kept columns), (k, cols) float64."""
    inf = torch.full((), _INF, dtype=torch.float64, device=w.device)
    A = torch.where(pruned, inf, (2 * w) * gg + (w * w) * Mdiag)
    B = torch.where(pruned, (w * w) * Mdiag - (2 * w) * gg, inf)
    return A, B


def _apply(Wd, g, m, M, swaps, live, q, r):
    """Prune q, regrow r in the chunk rows ``live``; the eager update of ``g`` as objective 2."""
    w_q, w_r = Wd[live, q], Wd[live, r]
    # one rounded addition per element (rows are unique), as objective 2
    g.index_add_(0, live, w_q.unsqueeze(1) * M[q] - w_r.unsqueeze(1) * M[r])
    m[live, q] = True
    m[live, r] = False
    swaps[live] += 1


def _cycles_unstructured(Wd, g, m, M, Mdiag, max_cycle_time, swaps):
    """Every (q kept, r pruned) pair of each row of the chunk, until no pair has delta < 0.

    ``Wd``, ``g`` (n, cols) float64; ``m`` (n, cols) bool, ``swaps`` (n,) int32 (all updated in
    place). Each row's kept columns sit in *slots*: ``qcol`` (n, S) their column indices and
    ``cross`` (n, S, cols) the cached ``((2 w_q) w_c) M_qc`` of slot q with every column c; an
    accepted swap puts r in q's slot and recomputes that one slot row. A row that keeps fewer than
    S columns (a caller's mask) has empty slots (``ok`` False: A = +inf)."""
    n, cols = Wd.shape
    dev = Wd.device
    inf = torch.full((), _INF, dtype=torch.float64, device=dev)
    kept = (~m).sum(1)
    S = int(kept.max())
    if S == 0 or bool((kept == cols).all()):   # no kept column, or no pruned one, in any row
        return
    qcol = torch.sort(m.to(torch.int8), dim=1, stable=True)[1][:, :S]        # kept first, ascending
    ok = torch.arange(S, device=dev).unsqueeze(0) < kept.unsqueeze(1)        # (n, S)
    cross = ((2 * Wd.gather(1, qcol)).unsqueeze(2) * Wd.unsqueeze(1)) * M[qcol]   # (n, S, cols)
    work = torch.empty_like(cross)
    live = torch.arange(n, device=dev)          # chunk-local ids of the rows still active
    big = torch.full((), cols, dtype=torch.int64, device=dev)
    for _ in range(max_cycle_time):
        k = len(live)
        A, B = _side_terms(Wd[live], g[live], m[live], Mdiag)
        Aq = torch.where(ok, A.gather(1, qcol), inf)                            # (k, S)
        d = torch.sub(Aq.unsqueeze(2), cross, out=work[:k])
        d.add_(B.unsqueeze(1))                                                   # (k, S, cols)
        row_best, r_of = d.min(dim=2)           # per slot: the first minimum = the lowest r
        best = row_best.amin(dim=1)
        # the lowest q column among the slots that reach the best (slots are not in column order)
        q = torch.where(row_best == best.unsqueeze(1), qcol, big).amin(dim=1)
        slot = (qcol == q.unsqueeze(1)).int().argmax(dim=1)
        r = r_of.gather(1, slot.unsqueeze(1)).squeeze(1)
        go = best < 0
        if not bool(go.all()):
            keep = go.nonzero().squeeze(1)
            live, q, r, slot = live[keep], q[keep], r[keep], slot[keep]
            qcol, ok, cross = qcol[keep], ok[keep], cross[keep]
            if live.numel() == 0:
                break
        _apply(Wd, g, m, M, swaps, live, q, r)
        pos = torch.arange(len(live), device=dev)
        qcol[pos, slot] = r
        cross[pos, slot] = ((2 * Wd[live, r]).unsqueeze(1) * Wd[live]) * M[r]


def _cycles_nm(Wd, g, m, M, Mdiag, max_cycle_time, swaps, prune_m):
    """N:M: the pairs (q kept, r pruned) of each M-group; the cross terms of all M x M pairs of
    every group are cached, (n, G, M, M). Arguments as ``_cycles_unstructured``."""
    n, cols = Wd.shape
    dev = Wd.device
    G = cols // prune_m
    wg = Wd.view(n, G, prune_m)
    Mg = torch.stack([M[s:s + prune_m, s:s + prune_m] for s in range(0, cols, prune_m)])  # (G, m, m)
    C = ((2 * wg).unsqueeze(-1) * wg.unsqueeze(-2)) * Mg.unsqueeze(0)               # (n, G, m, m)
    starts = torch.arange(0, cols, prune_m, device=dev)
    live = torch.arange(n, device=dev)
    for _ in range(max_cycle_time):
        k = len(live)
        A, B = _side_terms(Wd[live], g[live], m[live], Mdiag)
        d = (A.view(k, G, prune_m, 1) - C) + B.view(k, G, 1, prune_m)               # (k, G, m, m)
        best, flat = d.view(k, -1).min(dim=1)    # the first minimum: lowest group, q, then r
        grp, rest = flat // (prune_m * prune_m), flat % (prune_m * prune_m)
        q = starts[grp] + rest // prune_m
        r = starts[grp] + rest % prune_m
        go = best < 0
        if not bool(go.all()):
            keep = go.nonzero().squeeze(1)
            live, q, r, C = live[keep], q[keep], r[keep], C[keep]
            if live.numel() == 0:
                break
        _apply(Wd, g, m, M, swaps, live, q, r)


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
    if prune_m > 0:
        per_row = 8 * 2 * cols * prune_m
    else:
        per_row = 8 * 2 * cols * max(1, int((~mask).sum(1).max()))
    step = max(1, CHUNK_BYTES // per_row)
    for s in range(0, rows, step):
        sl = slice(s, min(rows, s + step))
        m, gc, sw = mask[sl].clone(), g[sl].clone(), swaps[sl].clone()
        if prune_m > 0:
            _cycles_nm(Wd[sl], gc, m, M, Mdiag, max_cycle_time, sw, prune_m)
        else:
            _cycles_unstructured(Wd[sl], gc, m, M, Mdiag, max_cycle_time, sw)
        mask[sl], swaps[sl] = m, sw
    return mask, swaps
