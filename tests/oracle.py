"""A deliberately simple per-row implementation of DSnoT (spec §2-§3, docs/KERNEL_CONTRACT.md).

One row at a time, Python lists and ``sorted`` on (value, column) tuples, numpy float32 scalars for
float32 arithmetic and Python floats for float64. Shares no code with ``dsnot_kernels``: the
vectorised reference and every kernel must equal it on small inputs.
"""
from __future__ import annotations

import math

import numpy as np
import torch

F32 = np.float32
LANES = 256


def _lane_sum(values, zero):
    """Contract order: 256 sequential lane partials, then the pairwise tree."""
    parts = [zero] * LANES
    for j, v in enumerate(values):
        parts[j % LANES] = parts[j % LANES] + v
    while len(parts) > 1:
        parts = [parts[2 * i] + parts[2 * i + 1] for i in range(len(parts) // 2)]
    return parts[0]


def _pow(x: float, p: float) -> float:
    """C's pow for x >= 0: 0 ** negative is +inf (Python's math.pow raises there)."""
    if x == 0.0 and p < 0:
        return math.inf
    return math.pow(x, p)


def _sign(x) -> int:
    return int(x > 0) - int(x < 0)


def oracle_row(w, s, var, scaler, metric=None, pruned=None, mean=None, *, sparsity=0.5, prune_n=0,
               prune_m=0, max_cycle_time=50, update_threshold=0.1, p=1.0, same_sign=False,
               objective="dsnot", g0=None, M=None, window=100, sqrt_scaler=None, err_sum="lanes"):
    """Refine one row. ``sqrt_scaler``: the square roots of ``scaler`` to use in the wanda metric
    (default: correctly rounded, ``np.sqrt`` of the float32). ``err_sum``: the initial error's sum,
    "lanes" (the contract's order) or "torch" (``torch.sum`` over the (1, cols) row, the authors'). ``w, s, var, scaler, metric, mean``: lists of floats; ``pruned``: list of bools.
    Objectives "cov" and "cov_window": ``M`` the (cols, cols) float64 numpy second moment and ``g0``
    this row's ``D M`` for the initial pruned set (from one torch matmul over all rows, as the
    reference); "cov_window" compares ``window`` candidates per list (``_window_cycles``); "swap"
    the best pair of the whole row (``_swap_cycles``).

    Returns ``(pruned_list, swaps)``.
    """
    cols = len(w)
    w = [F32(x) for x in w]
    dm = [F32(w[j] * F32(s[j])) for j in range(cols)]
    roots = [np.sqrt(F32(scaler[j])) for j in range(cols)] if sqrt_scaler is None else [F32(x) for x in sqrt_scaler]
    wanda = [F32(abs(w[j]) * roots[j]) for j in range(cols)]
    metric = wanda if metric is None else [F32(x) for x in metric]
    by_metric = lambda j: (float(metric[j]), j)  # noqa: E731  (-0.0 == 0.0 in tuples: a tie)

    if pruned is None:
        pruned = [False] * cols
        if prune_n:
            for g in range(0, cols, prune_m):
                for j in sorted(range(g, g + prune_m), key=by_metric)[:prune_n]:
                    pruned[j] = True
        else:
            for j in sorted(range(cols), key=by_metric)[:int(cols * sparsity)]:
                pruned[j] = True
    pruned = list(pruned)
    initial = list(pruned)
    if max_cycle_time == 0:
        return pruned, 0
    if objective == "swap":
        return _swap_cycles(w, pruned, [float(x) for x in g0], M, prune_m if prune_n else 0, max_cycle_time)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if p == 0:
            key = list(dm)
        else:
            key = [dm[j] / (F32(var[j]) if p == 1 else F32(_pow(float(var[j]), p)))
                   for j in range(cols)]
    pruned_dm = [dm[j] if initial[j] else F32(0) for j in range(cols)]
    if err_sum == "torch":
        err = F32(torch.sum(torch.tensor([float(x) for x in pruned_dm], dtype=torch.float32).reshape(1, -1), dim=1).item())
    else:
        err = _lane_sum(pruned_dm, F32(0))
    thr = F32(update_threshold)
    sign0 = _sign(err)

    hi = sorted([j for j in range(cols) if initial[j] and key[j] > 0], key=lambda j: (float(key[j]), j), reverse=True)
    lo = sorted([j for j in range(cols) if initial[j] and key[j] < 0], key=lambda j: (float(key[j]), j))
    plo = sorted([j for j in range(cols) if not initial[j] and dm[j] < 0], key=lambda j: (float(wanda[j]), j))
    phi = sorted([j for j in range(cols) if not initial[j] and dm[j] > 0], key=lambda j: (float(wanda[j]), j))
    chosen_q = [False] * cols
    if objective == "cov_window":
        return _window_cycles(w, dm, err, thr, pruned, initial, hi, lo, plo, phi, [float(x) for x in g0], M,
                              prune_m if prune_n else 0, max_cycle_time, window)

    if objective == "mse":
        a = [float(w[j]) * float(mean[j]) for j in range(cols)]
        b = [(float(w[j]) * float(w[j])) * float(var[j]) for j in range(cols)]
        e = _lane_sum([a[j] if initial[j] else 0.0 for j in range(cols)], 0.0)
    if objective == "cov":
        g = [float(x) for x in g0]

    swaps = 0
    for _ in range(max_cycle_time):
        if not (abs(err) > thr):
            break
        grow = hi if err > 0 else lo
        if not grow:
            break
        r = grow.pop(0)
        if prune_n:
            start = r - r % prune_m
            cands = [c for c in range(start, start + prune_m)
                     if not initial[c] and not chosen_q[c] and metric[c] < np.inf]
            q = min(cands, key=by_metric) if cands else None
        else:
            source = phi if err < 0 else plo
            if not source:
                break
            q = source.pop(0)
        after = F32(F32(err + (dm[q] if q is not None else F32(0))) - dm[r])
        if objective == "dsnot":
            if q is None or (same_sign and _sign(after) != sign0):
                break
        elif objective == "mse":
            if q is None:
                continue
            t = (e + a[q]) - a[r]
            if not (((t * t - e * e) + b[q]) - b[r] < 0):
                continue
            e = t
        else:  # cov: the change of D M Dᵀ, terms in the reference's order
            if q is None:
                continue
            wq, wr = float(w[q]), float(w[r])
            delta = (((2 * wq) * g[q] - (2 * wr) * g[r]) + (wq * wq) * float(M[q, q])
                     + (wr * wr) * float(M[r, r])) - ((2 * wq) * wr) * float(M[q, r])
            if not (delta < 0):
                continue
            g = [g[j] + (wq * float(M[q, j]) - wr * float(M[r, j])) for j in range(cols)]
        pruned[q], pruned[r] = True, False
        chosen_q[q] = True
        err = after
        swaps += 1
    return pruned, swaps


def _window_cycles(w, dm, err, thr, pruned, initial, hi, lo, plo, phi, g, M, m, max_cycle_time, window):
    """Objective "cov_window" for one row: windows of ``K`` slots over the four candidate lists,
    a used slot takes its list's next entry; each cycle the pair with the smallest delta (first in
    (q slot, r slot) order; N:M: (r slot, group position)) is applied if delta < 0."""
    cols = len(w)
    K = min(window, cols)

    def slots_of(lst):
        return {"list": lst, "slots": [lst[i] if i < len(lst) else None for i in range(K)], "next": min(K, len(lst))}

    wins = {name: slots_of(lst) for name, lst in (("hi", hi), ("lo", lo), ("plo", plo), ("phi", phi))}

    def refill(win, slot):
        lst, n = win["list"], win["next"]
        win["slots"][slot] = lst[n] if n < len(lst) else None
        win["next"] = min(n + 1, len(lst))

    def a_term(q):
        wq = float(w[q])
        return (2 * wq) * g[q] + (wq * wq) * float(M[q, q])

    def b_term(r):
        wr = float(w[r])
        return (wr * wr) * float(M[r, r]) - (2 * wr) * g[r]

    def delta(q, r):
        return (a_term(q) - ((2 * float(w[q])) * float(w[r])) * float(M[q, r])) + b_term(r)

    swaps = 0
    for _ in range(max_cycle_time):
        if not (abs(err) > thr):
            break
        gw = wins["hi" if err > 0 else "lo"]
        best, pick = math.inf, None
        if m:
            for rs, r in enumerate(gw["slots"]):
                for q in range(r - r % m, r - r % m + m) if r is not None else ():
                    if not initial[q] and not pruned[q]:
                        d = delta(q, r)
                        if d < best:
                            best, pick = d, (None, q, rs, r)
        else:
            pw = wins["plo" if err > 0 else "phi"]
            for qs, q in enumerate(pw["slots"]):
                for rs, r in enumerate(gw["slots"]):
                    if q is not None and r is not None:
                        d = delta(q, r)
                        if d < best:
                            best, pick = d, (qs, q, rs, r)
        if not (best < 0):
            break
        qs, q, rs, r = pick
        wq, wr = float(w[q]), float(w[r])
        g = [g[j] + (wq * float(M[q, j]) - wr * float(M[r, j])) for j in range(cols)]
        pruned[q], pruned[r] = True, False
        err = F32(F32(err + dm[q]) - dm[r])
        swaps += 1
        refill(gw, rs)
        if not m:
            refill(pw, qs)
    return pruned, swaps


def _swap_cycles(w, pruned, g, M, m, max_cycle_time):
    """Objective "swap" for one row: each cycle, every pair (q kept, r pruned; N:M: in q's group)
    in ascending (q, r) order, the first strictly smallest delta wins; applied if delta < 0, else
    the row stops."""
    cols = len(w)
    swaps = 0
    for _ in range(max_cycle_time):
        best, pick = math.inf, None
        for q in range(cols):
            if pruned[q]:
                continue
            wq = float(w[q])
            a = (2 * wq) * g[q] + (wq * wq) * float(M[q, q])
            partners = range(q - q % m, q - q % m + m) if m else range(cols)
            for r in partners:
                if not pruned[r]:
                    continue
                wr = float(w[r])
                b = (wr * wr) * float(M[r, r]) - (2 * wr) * g[r]
                d = (a - ((2 * wq) * wr) * float(M[q, r])) + b
                if d < best:
                    best, pick = d, (q, r)
        if not (best < 0):
            break
        q, r = pick
        wq, wr = float(w[q]), float(w[r])
        g = [g[j] + (wq * float(M[q, j]) - wr * float(M[r, j])) for j in range(cols)]
        pruned[q], pruned[r] = True, False
        swaps += 1
    return pruned, swaps


def oracle(weight, sum_metric_row, var, scaler_row, *, initial_metric=None, initial_mask=None, mean=None,
           sparsity=0.5, prune_n=0, prune_m=0, max_cycle_time=50, update_threshold=0.1,
           pow_of_var_regrowing=1.0, without_same_sign=True, objective="dsnot", second_moment=None, window=100,
           sqrt_scaler=None, err_sum="lanes"):
    """``refine_mask``'s keyword interface over ``oracle_row``; returns (mask, swaps) tensors."""
    W = weight.float().tolist()
    cols = weight.shape[1]
    g0 = M = None
    if objective in ("cov", "cov_window", "swap"):  # g0 = D M with the reference's one matmul (its rounding is torch's)
        init = initial_mask
        if init is None:
            init = torch.tensor([oracle_row(row, sum_metric_row.tolist(), var.tolist(), scaler_row.tolist(),
                                            None if initial_metric is None else initial_metric[i].float().tolist(),
                                            sparsity=sparsity, prune_n=prune_n, prune_m=prune_m,
                                            max_cycle_time=0)[0] for i, row in enumerate(W)], dtype=torch.bool)
        Md = second_moment.double()
        Md = (Md + Md.t()) * 0.5
        g0 = (torch.where(init, weight.float().double(), torch.zeros((), dtype=torch.float64)) @ Md).tolist()
        M = Md.numpy()
    s, v, sc = sum_metric_row.tolist(), var.tolist(), scaler_row.tolist()
    mu = mean.tolist() if mean is not None else None
    same_sign = True if prune_n else not without_same_sign
    masks, swaps = [], []
    for i, row in enumerate(W):
        pr, sw = oracle_row(row, s, v, sc,
                            None if initial_metric is None else initial_metric[i].float().tolist(),
                            None if initial_mask is None else initial_mask[i].tolist(), mu,
                            sparsity=sparsity, prune_n=prune_n, prune_m=prune_m,
                            max_cycle_time=max_cycle_time, update_threshold=update_threshold,
                            p=pow_of_var_regrowing, same_sign=same_sign, objective=objective,
                            g0=None if g0 is None else g0[i], M=M, window=window, err_sum=err_sum,
                            sqrt_scaler=None if sqrt_scaler is None else sqrt_scaler.tolist())
        masks.append(pr)
        swaps.append(sw)
    mask = torch.tensor(masks, dtype=torch.bool).reshape(len(W), cols)
    return mask, torch.tensor(swaps, dtype=torch.int32)
