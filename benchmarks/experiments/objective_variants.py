"""Prototype swap-selection rules for DSnoT's "mse" objective (issue #10, "look for more").

Pure PyTorch, vectorised over rows (one set of tensor ops per cycle, like the reference). Not part
of the package; nothing here changes what ``refine_mask`` does.

Variants (``refine_variant(..., model=, window=)``):
  * model="diag", window=0: the package's objective "mse" (``refine_mask``); the measured runs
    used a re-implementation in this file, identical masks (27/27 layer cases, ``selftest.py``).
  * model="diag", window=K  (B, "best-pair window"): at each step the next K unconsumed candidates
    of the growth cursor and of the prune cursor (the cursors the sign of ``err`` picks, as §3) give
    K x K pairs; the pair with the most negative delta L is applied and both columns leave their
    lists; if no pair has delta < 0 the row stops. N:M: r from the growth window, q any kept
    (initially kept, not yet pruned) column of r's group; the best (q, r) over K x (M-N) pairs.
  * model="cov", window=0  (C): now the package's ``objective="cov"`` (``refine_mask``; the measured
    runs used a re-implementation in this file, same perplexities). The reference's linear scan
    (rejected pairs consume both candidates), but delta from the exact second-moment model L(P) = E[(sum_P W_j x_j)^2] = D M D^T
    with M = E[x x^T] per token. Per row g = M[:, P] W_P (float64), updated in O(cols) per swap.
    N:M: q chosen as in the reference (smallest initial metric in r's group).
  * model="cov", window=K  (B+C): the best-pair window with the covariance delta.

Every variant keeps the row's pruned count (N:M: N per group of M). ``info`` reports, per call, the
model loss before/after (recomputed from scratch) and how many rows it increased in.
"""
from __future__ import annotations

import torch

import dsnot_kernels as dk
from dsnot_kernels.reference import (_ordered_candidates, growth_keys, initial_selection, lane_sum,
                                     wanda_metric)


# --------------------------------------------------------------------------------------- losses
def loss_diag(W, mask, mean, var):
    """Per row (sum_P W mu)^2 + sum_P W^2 var, float64."""
    D = torch.where(mask, W.double(), torch.zeros((), dtype=torch.float64))
    return (D @ mean.double()) ** 2 + (D * D) @ var.double()


def loss_cov(W, mask, M):
    """Per row D M D^T with D = W on P (float64): the true mean squared output error per token."""
    D = torch.where(mask, W.double(), torch.zeros((), dtype=torch.float64))
    return ((D @ M) * D).sum(1)


def second_moment_of(stats):
    """E[x x^T] per token (float64) from CalibrationStats(hessian=True)."""
    return stats.hessian.double() * (stats.nsamples / (2.0 * stats.ntokens))


# --------------------------------------------------------------------------------------- variant
def _package_rule(W, sum_metric_row, var, scaler_row, mean, M, model, initial_mask, **kw):
    """window 0: ``refine_mask(objective="mse" | "cov")`` on the reference backend, with the same
    ``info`` (no per-step tracking: ``max_track_drift_rel`` is NaN)."""
    obj = {"diag": "mse", "cov": "cov"}[model]
    args = (W, sum_metric_row, var, scaler_row)
    extra = dict(mean=mean) if obj == "mse" else dict(second_moment=M)
    init = initial_mask if initial_mask is not None else \
        dk.refine_mask(*args, **dict(kw, max_cycle_time=0), backend="torch")
    mask, swaps = dk.refine_mask(*args, initial_mask=initial_mask, objective=obj, backend="torch",
                                 return_swaps=True, **extra, **kw)
    loss = (lambda m: loss_diag(W, m, mean, var)) if obj == "mse" else (lambda m: loss_cov(W, m, M))
    L0, L1 = loss(init), loss(mask)
    tol = 1e-9 * L0.abs().clamp_min(1e-30) + 1e-15
    info = {"model": model, "window": 0, "L0": float(L0.sum()), "L1": float(L1.sum()),
            "rows_increased": int((L1 > L0 + tol).sum()), "max_track_drift_rel": float("nan"),
            "swaps": int(swaps.sum())}
    return mask, swaps, info


@torch.no_grad()
def refine_variant(W, sum_metric_row, var, scaler_row, mean, M=None, *, sparsity=0.5, prune_n=0,
                   prune_m=0, max_cycle_time=50, update_threshold=0.1, pow_of_var_regrowing=1.0,
                   model="diag", window=0, initial_mask=None):
    """Returns ``(mask, swaps, info)``. ``M`` (cols, cols) float64 is needed for model="cov"."""
    if window == 0:  # the linear scan: the package's objective "mse" (diag) or "cov"
        return _package_rule(W, sum_metric_row, var, scaler_row, mean, M, model, initial_mask,
                             sparsity=sparsity, prune_n=prune_n, prune_m=prune_m, max_cycle_time=max_cycle_time,
                             update_threshold=update_threshold, pow_of_var_regrowing=pow_of_var_regrowing)
    W = W.float()
    rows, cols = W.shape
    nm = prune_n > 0
    zero = torch.zeros(())
    dm = W * sum_metric_row.unsqueeze(0)
    wanda = wanda_metric(W, scaler_row)
    metric = wanda + 0.0
    init_mask = initial_mask.clone() if initial_mask is not None else \
        initial_selection(metric, sparsity, prune_n, prune_m)
    mask = init_mask.clone()
    swaps = torch.zeros(rows, dtype=torch.int32)
    err = lane_sum(torch.where(mask, dm, zero))
    thr = torch.tensor(update_threshold, dtype=torch.float32)

    key = growth_keys(dm, var, pow_of_var_regrowing)
    grow_pos = mask & (key > 0)
    grow_neg = mask & (key < 0)
    grow_order = torch.sort(torch.where(grow_pos | grow_neg, key, zero), dim=1, stable=True)[1]
    hi_end = cols - grow_pos.sum(1)
    lo_end = grow_neg.sum(1)
    if not nm:
        kept = ~mask
        cls = torch.ones((rows, cols), dtype=torch.int8)
        cls[kept & (dm < 0)] = 0
        cls[kept & (dm > 0)] = 2
        prune_order = _ordered_candidates(wanda + 0.0, cls)
        plo_end = (cls == 0).sum(1)
        phi_start = cols - (cls == 2).sum(1)

    Wd = W.double()
    if model == "diag":
        a = Wd * mean.double().unsqueeze(0)
        b = (Wd * Wd) * var.double().unsqueeze(0)
        e = lane_sum(torch.where(mask, a, torch.zeros((), dtype=torch.float64)))
        L0 = loss_diag(W, mask, mean, var)
    elif model == "cov":
        M = M.double()
        Mdiag = torch.diagonal(M).clone()
        g = torch.where(mask, Wd, torch.zeros((), dtype=torch.float64)) @ M   # M symmetric
        L0 = loss_cov(W, mask, M)
    else:
        raise ValueError(model)
    tracked = torch.zeros(rows, dtype=torch.float64)   # sum of accepted deltas

    def deltas(q, r):
        """delta L for (q, r) index tensors of the same shape (rows, ...), float64."""
        shp = q.shape
        qf, rf = q.reshape(rows, -1), r.reshape(rows, -1)
        if model == "diag":
            aq, ar = a.gather(1, qf), a.gather(1, rf)
            bq, br = b.gather(1, qf), b.gather(1, rf)
            t = (e.unsqueeze(1) + aq) - ar
            d = ((t * t - (e * e).unsqueeze(1)) + bq) - br
        else:
            wq, wr = Wd.gather(1, qf), Wd.gather(1, rf)
            gq, gr = g.gather(1, qf), g.gather(1, rf)
            d = (2 * wq * gq - 2 * wr * gr + wq * wq * Mdiag[qf] + wr * wr * Mdiag[rf]
                 - 2 * wq * wr * M[qf, rf])
        return d.reshape(shp)

    def apply(ok, q, r, d):
        nonlocal e, err
        hit = torch.nonzero(ok).squeeze(1)
        if hit.numel() == 0:
            return
        qh, rh = q[hit], r[hit]
        if model == "diag":
            e = torch.where(ok, (e + a.gather(1, q.unsqueeze(1)).squeeze(1)) - a.gather(1, r.unsqueeze(1)).squeeze(1), e)
        else:
            g[hit] += Wd[hit, qh].unsqueeze(1) * M[qh] - Wd[hit, rh].unsqueeze(1) * M[rh]
        mask[hit, qh] = True
        mask[hit, rh] = False
        dq = dm.gather(1, q.unsqueeze(1)).squeeze(1)
        dr = dm.gather(1, r.unsqueeze(1)).squeeze(1)
        err = torch.where(ok, (err + dq) - dr, err)
        tracked.add_(torch.where(ok, d, torch.zeros((), dtype=torch.float64)))
        swaps.add_(ok.int())

    active = torch.ones(rows, dtype=torch.bool)
    # best pair in a K x K window
    K = int(window)
    pos = torch.arange(cols).unsqueeze(0)
    hi_list, n_hi = grow_order.flip(1), cols - hi_end
    consumed = torch.zeros((rows, cols), dtype=torch.bool)   # by column (the lists are disjoint)
    big = torch.tensor(cols)

    def first_k(lst, lo, hi):
        avail = (pos >= lo.unsqueeze(1)) & (pos < hi.unsqueeze(1)) & ~consumed.gather(1, lst)
        sc, idx = torch.where(avail, pos, big).topk(min(K, cols), dim=1, largest=False, sorted=True)
        return lst.gather(1, idx), sc < cols

    for _ in range(max_cycle_time):
        active &= err.abs() > thr
        if not bool(active.any()):
            break
        go_hi = err > 0
        glist = torch.where(go_hi.unsqueeze(1), hi_list, grow_order)
        rw, rw_ok = first_k(glist, torch.zeros_like(hi_end), torch.where(go_hi, n_hi, lo_end))
        if nm:
            qw = (rw - rw % prune_m).unsqueeze(2) + torch.arange(prune_m)         # (rows, K, m)
            qw_ok = rw_ok.unsqueeze(2) & ~init_mask.gather(1, qw.reshape(rows, -1)).reshape(qw.shape) \
                & ~mask.gather(1, qw.reshape(rows, -1)).reshape(qw.shape)
            rr = rw.unsqueeze(2).expand_as(qw)
            qq, ok_pair = qw, qw_ok
        else:
            use_phi = err < 0
            qw, qw_ok = first_k(prune_order, torch.where(use_phi, phi_start, 0),
                                torch.where(use_phi, cols, plo_end))
            qq = qw.unsqueeze(2).expand(rows, qw.shape[1], rw.shape[1])
            rr = rw.unsqueeze(1).expand_as(qq)
            ok_pair = qw_ok.unsqueeze(2) & rw_ok.unsqueeze(1)
        qq, rr, ok_pair = qq.reshape(rows, -1), rr.reshape(rows, -1), ok_pair.reshape(rows, -1)
        d = deltas(qq, rr)
        d = torch.where(ok_pair, d, torch.full((), float("inf"), dtype=torch.float64))
        best, arg = d.min(dim=1)
        ok = active & (best < 0)
        active = ok
        q = qq.gather(1, arg.unsqueeze(1)).squeeze(1)
        r = rr.gather(1, arg.unsqueeze(1)).squeeze(1)
        hit = torch.nonzero(ok).squeeze(1)
        consumed[hit, q[hit]] = True
        consumed[hit, r[hit]] = True
        apply(ok, q, r, best)

    L1 = loss_diag(W, mask, mean, var) if model == "diag" else loss_cov(W, mask, M)
    tol = 1e-9 * L0.abs().clamp_min(1e-30) + 1e-15
    info = {"model": model, "window": window, "L0": float(L0.sum()), "L1": float(L1.sum()),
            "rows_increased": int((L1 > L0 + tol).sum()),
            "max_track_drift_rel": float(((L1 - L0) - tracked).abs().max() / L0.abs().max().clamp_min(1e-30)),
            "swaps": int(swaps.sum())}
    return mask, swaps, info


VARIANTS = {  # name -> (model, window)
    "mse_proto": ("diag", 0),
    "B": ("diag", 8),
    "C": ("cov", 0),
    "BC": ("cov", 8),
    "B50": ("diag", 50),
    "BC50": ("cov", 50),
}
