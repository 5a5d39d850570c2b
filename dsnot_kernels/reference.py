"""The PyTorch reference of DSnoT: the executable spec (docs/ALGORITHM.md §2-§3).

Vectorised over rows, one set of tensor ops per cycle, like the authors' ``prune_DSnoT``; full
stable sorts where they sort. Every other backend must return the same masks on the same inputs
(the floating-point details are in docs/KERNEL_CONTRACT.md). Written for clarity first; it is also
the baseline that every benchmark compares against, so it avoids needless work (no Python loop over
columns, no per-row Python loop).

Differences from the authors' code, all stated in the spec:
  * a cursor that runs out of candidates of its sign (or an N:M group without a finite candidate)
    stops the row instead of running into the middle of the lists;
  * ``var == 0`` gives growth keys ``+-inf`` by the sign of ``dm`` (no NaN), ``dm == 0`` there is
    no candidate;
  * ``err`` is summed in a fixed order (256 lanes, then a pairwise tree) so that every backend gets
    the same float32 value.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dsnot_kernels.reference_swap import refine_swap
from dsnot_kernels.reference_window import cov_g0, refine_cov_window

SUM_LANES = 256


def lane_sum(v: torch.Tensor) -> torch.Tensor:
    """Row sums of ``v`` (rows, cols) in the contract's fixed order, in ``v``'s dtype.

    256 lane partials summed sequentially (lane ``l`` takes columns ``l, l+256, ...``), then a
    pairwise tree ``p[l] = p[2l] + p[2l+1]``. Returns (rows,).
    """
    rows, cols = v.shape
    pad = (-cols) % SUM_LANES
    if pad:
        v = F.pad(v, (0, pad))
    chunks = v.reshape(rows, -1, SUM_LANES)
    acc = torch.zeros((rows, SUM_LANES), dtype=v.dtype, device=v.device)
    for i in range(chunks.shape[1]):
        acc = acc + chunks[:, i]
    while acc.shape[1] > 1:
        acc = acc[:, 0::2] + acc[:, 1::2]
    return acc[:, 0]


def sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 ``sqrt(x)`` (the contract's ``sqrtf``), on ``x``'s device.

    ATen's float32 ``torch.sqrt`` on CPU is not correctly rounded: with torch 2.13 (AVX-512) it is
    one ulp off on about 15 % of random inputs (issue 21: it flipped a near-tie of the wanda metric
    in a real layer). The float64 square root of a float32, rounded once to float32, is the
    correctly rounded float32 square root (53 >= 2 * 24 + 2 bits), on every device.
    """
    return torch.sqrt(x.to(torch.float64)).to(torch.float32)


def wanda_metric(weight: torch.Tensor, scaler_row: torch.Tensor) -> torch.Tensor:
    """``|W| * sqrtf(scaler_row)`` in float32, (rows, cols); ``sqrtf`` correctly rounded (``sqrt_rn``)."""
    return weight.float().abs() * sqrt_rn(scaler_row.float()).unsqueeze(0)


def var_power(var: torch.Tensor, p: float) -> torch.Tensor:
    """``var ** p`` as the contract fixes it: ATen's CPU pow in float64, rounded once to float32,
    returned on ``var``'s device. Every backend takes this one definition (p == 1: ``var``)."""
    if p == 1:
        return var
    return torch.pow(var.detach().to("cpu", torch.float64), p).float().to(var.device)


def growth_keys(dm: torch.Tensor, var: torch.Tensor, p: float) -> torch.Tensor:
    """``dm / var**p`` in float32 (contract: pow in double, one rounding; p = 0: no division)."""
    if p == 0:
        return dm
    return dm / var_power(var, p).unsqueeze(0)


def initial_selection(metric: torch.Tensor, sparsity: float, prune_n: int, prune_m: int) -> torch.Tensor:
    """Initial mask (spec §2): the smallest metrics per row (unstructured) or per M-group (N:M).

    Ties go to the lower column index (stable sorts). ``metric`` (rows, cols) float32, no NaN.
    """
    rows, cols = metric.shape
    metric = metric + 0.0  # -0.0 -> +0.0, so both zeros tie
    mask = torch.zeros((rows, cols), dtype=torch.bool, device=metric.device)
    if prune_n > 0:
        groups = metric.view(rows, cols // prune_m, prune_m)
        order = torch.sort(groups, dim=-1, stable=True)[1][..., :prune_n]
        mask.view(rows, cols // prune_m, prune_m).scatter_(-1, order, True)
    else:
        k = int(cols * sparsity)
        if k > 0:
            order = torch.sort(metric, dim=1, stable=True)[1][:, :k]
            mask.scatter_(1, order, True)
    return mask


def _ordered_candidates(values: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Column order by ``values`` (stable), then stably grouped by ``cls`` (0, 1, 2): a second
    stable sort on the small integer class (measured faster than a counting partition here)."""
    order = torch.sort(values, dim=1, stable=True)[1]
    return order.gather(1, torch.sort(cls.gather(1, order), dim=1, stable=True)[1])


def refine_mask_reference(weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask, mean,
                          sparsity, prune_n, prune_m, max_cycle_time, update_threshold,
                          pow_of_var_regrowing, same_sign, objective, second_moment=None, window=None):
    """Reference backend: the op's positional arguments (validated by ``ops.refine_mask``).

    ``second_moment``: (cols, cols) float64, exactly symmetric; objectives 2 ("cov"), 3
    ("cov_window", with ``window`` candidates per list: ``reference_window``) and 4 ("swap", the
    best pair of the whole row: ``reference_swap``) only.
    Objective 2 (contract "Objective 2"): with D = W on the pruned set P (float64) and M the second
    moment, the row's loss is L(P) = D M Dᵀ and g = D M (one float64 matmul per call, then updated
    per accepted swap). A pair (prune q, regrow r) changes L by
    ``delta = ((((2 w_q) g_q - (2 w_r) g_r) + (w_q w_q) M_qq) + (w_r w_r) M_rr) - ((2 w_q) w_r) M_qr``
    (evaluated in exactly this order); it is accepted iff delta < 0, and then
    ``g <- g + (w_q M[q, :] - w_r M[r, :])``. Cursors, rejections and stops as objective 1.

    Returns ``(mask, swaps)``: (rows, cols) bool, True = pruned; (rows,) int32 accepted swaps.
    """
    W = weight.float()
    rows, cols = W.shape
    dev = W.device
    nm = prune_n > 0
    dm = W * sum_metric_row.unsqueeze(0)
    wanda = wanda_metric(W, scaler_row)
    metric = (initial_metric if initial_metric is not None else wanda) + 0.0

    mask = initial_mask.clone() if initial_mask is not None else initial_selection(metric, sparsity, prune_n, prune_m)
    swaps = torch.zeros(rows, dtype=torch.int32, device=dev)
    if max_cycle_time == 0:
        return mask, swaps
    if objective == 4:  # "swap": the best pair of the whole row, from this initial mask (reference_swap.py)
        return refine_swap(W, mask, second_moment, max_cycle_time=max_cycle_time, prune_m=prune_m if nm else 0)

    err = lane_sum(torch.where(mask, dm, torch.zeros((), device=dev)))
    sign0 = torch.sign(err)
    thr = torch.tensor(update_threshold, dtype=torch.float32, device=dev)
    zero = torch.zeros((), device=dev)

    # Growth candidates (§3): initially pruned, by key; +key at the top end, -key at the bottom.
    key = growth_keys(dm, var, pow_of_var_regrowing)
    grow_pos = mask & (key > 0)
    grow_neg = mask & (key < 0)
    grow_order = torch.sort(torch.where(grow_pos | grow_neg, key, zero), dim=1, stable=True)[1]
    hi_end = cols - grow_pos.sum(1)          # hi valid while hi_ptr >= hi_end
    lo_end = grow_neg.sum(1)                 # lo valid while lo_ptr < lo_end
    hi_ptr = torch.full((rows,), cols - 1, dtype=torch.int64, device=dev)
    lo_ptr = torch.zeros(rows, dtype=torch.int64, device=dev)

    if nm:
        # q in r's group: smallest initial metric among kept, not yet chosen columns (§3 step 1).
        q_metric = torch.where(mask, torch.full((), float("inf"), device=dev), metric)
        group_offsets = torch.arange(prune_m, device=dev)
    else:
        # Prune candidates: initially kept, by wanda ascending; dm < 0 first (plo), dm > 0 last (phi).
        kept = ~mask
        cls = torch.ones((rows, cols), dtype=torch.int8, device=dev)
        cls[kept & (dm < 0)] = 0
        cls[kept & (dm > 0)] = 2
        prune_order = _ordered_candidates(wanda + 0.0, cls)
        plo_end = (cls == 0).sum(1)
        phi_ptr = cols - (cls == 2).sum(1)   # phi valid while phi_ptr < cols
        plo_ptr = torch.zeros(rows, dtype=torch.int64, device=dev)

    if objective == 3:  # windows over these same lists (reference_window.py)
        lists = dict(prune_m=prune_m) if nm else dict(prune_order=prune_order, n_plo=plo_end, n_phi=cols - phi_ptr)
        return refine_cov_window(W, dm, mask, err, thr, second_moment, window=window, max_cycle_time=max_cycle_time,
                                 grow_order=grow_order, n_hi=cols - hi_end, n_lo=lo_end, **lists)

    if objective == 1:
        Wd = W.double()
        a = Wd * mean.double().unsqueeze(0)
        b = (Wd * Wd) * var.double().unsqueeze(0)
        e = lane_sum(torch.where(mask, a, torch.zeros((), dtype=torch.float64, device=dev)))
    elif objective == 2:
        Wd = W.double()
        M = second_moment
        Mdiag = torch.diagonal(M).clone()
        g = cov_g0(W, mask, M)

    row_ids = torch.arange(rows, device=dev)
    active = torch.ones(rows, dtype=torch.bool, device=dev)
    for _ in range(max_cycle_time):
        active &= err.abs() > thr
        if not bool(active.any()):
            break
        go_hi = err > 0
        r_pos = torch.where(go_hi, hi_ptr, lo_ptr)
        r_ok = torch.where(go_hi, hi_ptr >= hi_end, lo_ptr < lo_end)
        r = grow_order.gather(1, r_pos.clamp(0, cols - 1).unsqueeze(1)).squeeze(1)
        hi_ptr -= (active & go_hi).long()
        lo_ptr += (active & ~go_hi).long()
        if nm:
            start = r - r % prune_m
            group = q_metric.gather(1, start.unsqueeze(1) + group_offsets)
            best, arg = group.min(dim=1)     # first minimum: lower column on ties
            q = start + arg
            q_ok = best < float("inf")
        else:
            use_phi = err < 0
            q_pos = torch.where(use_phi, phi_ptr, plo_ptr)
            q_ok = torch.where(use_phi, phi_ptr < cols, plo_ptr < plo_end)
            q = prune_order.gather(1, q_pos.clamp(0, cols - 1).unsqueeze(1)).squeeze(1)
            phi_ptr += (active & use_phi).long()
            plo_ptr += (active & ~use_phi).long()
        dq = dm.gather(1, q.unsqueeze(1)).squeeze(1)
        dr = dm.gather(1, r.unsqueeze(1)).squeeze(1)
        after = (err + dq) - dr
        if objective == 0:
            ok = active & r_ok & q_ok
            if same_sign:
                ok &= torch.sign(after) == sign0
            active = ok
        elif objective == 2:
            w_q = Wd.gather(1, q.unsqueeze(1)).squeeze(1)
            w_r = Wd.gather(1, r.unsqueeze(1)).squeeze(1)
            g_q = g.gather(1, q.unsqueeze(1)).squeeze(1)
            g_r = g.gather(1, r.unsqueeze(1)).squeeze(1)
            delta = (((((2 * w_q) * g_q - (2 * w_r) * g_r) + (w_q * w_q) * Mdiag[q]) + (w_r * w_r) * Mdiag[r])
                     - ((2 * w_q) * w_r) * M[q, r])
            active &= r_ok & (q_ok | nm)
            ok = active & q_ok & (delta < 0)
            hit_rows = row_ids[ok]
            if hit_rows.numel():
                # one rounded addition per element, as g[hit] = g[hit] + (...) (rows are unique)
                g.index_add_(0, hit_rows, w_q[ok].unsqueeze(1) * M[q[ok]] - w_r[ok].unsqueeze(1) * M[r[ok]])
        else:
            a_q = a.gather(1, q.unsqueeze(1)).squeeze(1)
            a_r = a.gather(1, r.unsqueeze(1)).squeeze(1)
            b_q = b.gather(1, q.unsqueeze(1)).squeeze(1)
            b_r = b.gather(1, r.unsqueeze(1)).squeeze(1)
            t = (e + a_q) - a_r
            delta = ((t * t - e * e) + b_q) - b_r
            active &= r_ok & (q_ok | nm)     # exhausted cursors stop; an N:M group without q only rejects
            ok = active & q_ok & (delta < 0)
            e = torch.where(ok, t, e)
        hit = row_ids[ok]
        mask[hit, q[ok]] = True
        mask[hit, r[ok]] = False
        if nm:
            q_metric[hit, q[ok]] = float("inf")
        err = torch.where(ok, after, err)
        swaps += ok.int()
    return mask, swaps
