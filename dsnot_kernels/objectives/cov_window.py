"""Objective 3, ``"cov_window"``: the best swap among the next ``window`` candidates of each cursor.

Part of the PyTorch reference (the executable spec; docs/KERNEL_CONTRACT.md "Objective 3").
Objectives 1 and 2 test one (prune q, regrow r) pair per cycle, the next one of each cursor. This
objective keeps, per row and per candidate list, a *window* of the first ``K`` not yet used entries,
and each cycle applies the pair with the most negative change of the row's output error
``L(P) = D M Dᵀ`` (objective 2's model) among all pairs of the two windows the sign of ``err``
picks. A row stops when no pair lowers L, when ``|err| <= update_threshold``, or after
``max_cycle_time`` swaps.

Window slots. A window is ``K`` slots (``K = min(window, cols)``), filled with the list's first
entries in list order; slots past the list's end are empty. When a slot's column is used by a swap,
the slot takes the list's next entry not yet windowed (empty once the list is exhausted). So a
window always holds the first K unused entries of its list; the slot order only breaks ties:
the pair with the lowest (q slot, r slot) wins among equal deltas (row-major first minimum).

Vectorised over rows, one set of tensor ops per cycle for the rows still active; the cross terms
``(2 w_q) w_r M_qr`` of every window pair are cached and refreshed one slot row or column at a time,
so a cycle reads ``M`` at O(K) places per row.
"""
from __future__ import annotations

import torch

_INF = float("inf")


class _Window:
    """``K`` slots over one candidate list per row (see the module docstring).

    ``order``: (rows, cols) int64 column indices in list order (entries past ``length`` are valid
    column indices that are never used); ``length``: (rows,) int64.
    """

    def __init__(self, order: torch.Tensor, length: torch.Tensor, K: int):
        self.order, self.length = order, length
        slots = torch.arange(K, device=order.device)
        self.col = order[:, :K].clone()                              # (rows, K)
        self.ok = slots.unsqueeze(0) < length.unsqueeze(1)           # (rows, K)
        self.next = torch.minimum(length, torch.full_like(length, K))

    def refill(self, rows: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Slot ``slot[i]`` of row ``rows[i]`` takes its list's next entry; returns the new columns."""
        nxt = self.next[rows]
        ok = nxt < self.length[rows]
        col = self.order[rows, nxt.clamp(max=self.order.shape[1] - 1)]
        self.col[rows, slot] = col
        self.ok[rows, slot] = ok
        self.next[rows] = nxt + ok.long()
        return col


def _side_terms(Wd, g, Mdiag, rows, col, ok, prune_side: bool):
    """Per slot: ``A_q = (2 w_q) g_q + (w_q w_q) M_qq`` (prune side) or
    ``B_r = (w_r w_r) M_rr - (2 w_r) g_r`` (regrow side); +inf on empty slots. (n, K) float64."""
    w = Wd[rows.unsqueeze(1), col]
    gg = g[rows.unsqueeze(1), col]
    md = Mdiag[col]
    t = (2 * w) * gg + (w * w) * md if prune_side else (w * w) * md - (2 * w) * gg
    return torch.where(ok, t, torch.full((), _INF, dtype=torch.float64, device=t.device))


def _cross(Wd, M, rows, q_col, r_col):
    """``(2 w_q) w_r M_qr`` for broadcastable (n, a, b) column index tensors of the rows ``rows``."""
    ridx = rows.view(-1, 1, 1)
    wq = Wd[ridx, q_col]
    wr = Wd[ridx, r_col]
    return ((2 * wq) * wr) * M[q_col, r_col]


def cov_g0(W: torch.Tensor, mask: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``g = D0 @ M`` of objectives 2 and 3 (contract "Objective 2"): D0 = the float32 weight on the
    initially pruned set, in float64; ONE torch matmul, which every backend shares by calling this
    (its rounding is the BLAS's). (rows, cols) float64."""
    D = torch.where(mask, W.float().double(), torch.zeros((), dtype=torch.float64, device=W.device))
    return D @ M


def refine_cov_window(W, dm, mask, err, thr, M, *, window, max_cycle_time, prune_m=0,
                      grow_order=None, n_hi=None, n_lo=None, prune_order=None, n_plo=None, n_phi=None):
    """Objective 3 on the reference's prepared state; returns ``(mask, swaps)``.

    ``W`` (rows, cols) float32; ``dm`` (rows, cols) float32; ``mask`` the initial mask (modified in
    place); ``err`` (rows,) float32; ``thr`` float32 scalar tensor; ``M`` (cols, cols) float64
    symmetric. ``grow_order`` the stable ascending key order of the growth candidates with ``n_lo``
    negative keys first and ``n_hi`` positive keys last. Unstructured: ``prune_order`` (the wanda
    order grouped by class) with ``n_plo`` columns of ``dm < 0`` first and ``n_phi`` of ``dm > 0``
    last. N:M (``prune_m > 0``): q ranges over r's group, among columns initially kept and still
    kept (q is chosen by the loss, not by the initial metric).
    """
    rows, cols = W.shape
    dev = W.device
    nm = prune_m > 0
    K = min(int(window), cols)
    Wd = W.double()
    Mdiag = torch.diagonal(M).clone()
    g = cov_g0(W, mask, M)
    swaps = torch.zeros(rows, dtype=torch.int32, device=dev)
    pos = torch.arange(cols, device=dev)

    grow_hi = _Window(grow_order.flip(1), n_hi, K)    # largest key first
    grow_lo = _Window(grow_order, n_lo, K)            # smallest key first
    all_rows = torch.arange(rows, device=dev)
    if nm:
        kept0 = ~mask                                  # initially kept: the only possible q
        offsets = torch.arange(prune_m, device=dev)

        def group_cols(r_col):                         # (n, K) -> (n, K, m)
            return (r_col - r_col % prune_m).unsqueeze(-1) + offsets

        # cross terms per growth slot and group position, for each direction
        cross = {d: _cross(Wd, M, all_rows, group_cols(w.col), w.col.unsqueeze(-1))
                 for d, w in ((True, grow_hi), (False, grow_lo))}
    else:
        phi_order = prune_order.gather(1, ((cols - n_phi).unsqueeze(1) + pos).clamp(max=cols - 1))
        prune_lo = _Window(prune_order, n_plo, K)      # dm < 0, wanda ascending (err > 0)
        prune_hi = _Window(phi_order, n_phi, K)        # dm > 0, wanda ascending (err < 0)
        # (2 w_q) w_r M_qr for every (prune slot, growth slot) pair, for each direction
        cross = {True: _cross(Wd, M, all_rows, prune_lo.col.unsqueeze(2), grow_hi.col.unsqueeze(1)),
                 False: _cross(Wd, M, all_rows, prune_hi.col.unsqueeze(2), grow_lo.col.unsqueeze(1))}

    active = torch.ones(rows, dtype=torch.bool, device=dev)
    for _ in range(max_cycle_time):
        active &= err.abs() > thr
        if not bool(active.any()):
            break
        go_hi_all = err > 0
        for go_hi in (True, False):
            rws = torch.nonzero(active & (go_hi_all if go_hi else ~go_hi_all)).squeeze(1)
            if rws.numel() == 0:
                continue
            gw = grow_hi if go_hi else grow_lo
            cx = cross[go_hi]
            r_col, r_ok = gw.col[rws], gw.ok[rws]
            B = _side_terms(Wd, g, Mdiag, rws, r_col, r_ok, prune_side=False)       # (n, K)
            if nm:
                q_col = group_cols(r_col)                                            # (n, K, m)
                ridx = rws.view(-1, 1, 1)
                q_ok = kept0[ridx, q_col] & ~mask[ridx, q_col] & r_ok.unsqueeze(-1)
                wq = Wd[ridx, q_col]
                A = (2 * wq) * g[ridx, q_col] + (wq * wq) * Mdiag[q_col]
                A = torch.where(q_ok, A, torch.full((), _INF, dtype=torch.float64, device=dev))
                d = (A - cx[rws]) + B.unsqueeze(-1)                                  # (n, K, m)
                best, flat = d.reshape(len(rws), -1).min(dim=1)
                r_slot, q_pos = flat // prune_m, flat % prune_m
                r = r_col.gather(1, r_slot.unsqueeze(1)).squeeze(1)
                q = r - r % prune_m + q_pos
            else:
                pw = prune_lo if go_hi else prune_hi
                q_col, q_ok = pw.col[rws], pw.ok[rws]
                A = _side_terms(Wd, g, Mdiag, rws, q_col, q_ok, prune_side=True)    # (n, K)
                d = (A.unsqueeze(2) - cx[rws]) + B.unsqueeze(1)                      # (n, K, K)
                best, flat = d.reshape(len(rws), -1).min(dim=1)
                q_slot, r_slot = flat // K, flat % K
                q = q_col.gather(1, q_slot.unsqueeze(1)).squeeze(1)
                r = r_col.gather(1, r_slot.unsqueeze(1)).squeeze(1)
            ok = best < 0
            active[rws[~ok]] = False
            if not bool(ok.any()):
                continue
            h, q, r = rws[ok], q[ok], r[ok]
            r_slot = r_slot[ok]
            w_q, w_r = Wd[h, q], Wd[h, r]
            # one rounded addition per element (rows are unique), as objective 2
            g.index_add_(0, h, w_q.unsqueeze(1) * M[q] - w_r.unsqueeze(1) * M[r])
            mask[h, q] = True
            mask[h, r] = False
            err[h] = (err[h] + dm[h, q]) - dm[h, r]
            swaps[h] += 1
            # refill the used slots and refresh their cross terms
            new_r = gw.refill(h, r_slot)
            if nm:
                cx[h, r_slot] = _cross(Wd, M, h, group_cols(new_r.unsqueeze(1)), new_r.view(-1, 1, 1))[:, 0]
            else:
                q_slot = q_slot[ok]
                new_q = pw.refill(h, q_slot)
                cx[h, :, r_slot] = _cross(Wd, M, h, pw.col[h].unsqueeze(2), new_r.view(-1, 1, 1))[:, :, 0]
                cx[h, q_slot, :] = _cross(Wd, M, h, new_q.view(-1, 1, 1), gw.col[h].unsqueeze(1))[:, 0, :]
    return mask, swaps
