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
    the same float32 value; ``err_sum="torch"`` sums it as the authors do (ATen's ``torch.sum``).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from dsnot_kernels.objectives.common import (SUM_LANES, _ordered_candidates, growth_keys,  # noqa: F401
                                             initial_selection, lane_sum, row_error, sqrt_rn, var_power,
                                             wanda_metric)
from dsnot_kernels.objectives.cov import CovScore
from dsnot_kernels.objectives.cov_window import cov_g0, refine_cov_window  # noqa: F401
from dsnot_kernels.objectives.dsnot import DsnotRule
from dsnot_kernels.objectives.mse import MseScore
from dsnot_kernels.objectives.swap import refine_swap

# The cursor objectives: how a cycle's pair (prune q, regrow r) is accepted (one file each).
CURSOR_SCORES = {0: DsnotRule, 1: MseScore, 2: CovScore}


def refine_mask_reference(weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask, mean,
                          sparsity, prune_n, prune_m, max_cycle_time, update_threshold,
                          pow_of_var_regrowing, same_sign, objective, second_moment=None, window=None,
                          err_sum="lanes"):
    """Reference backend: the op's positional arguments (validated by ``ops.refine_mask``).

    ``second_moment``: (cols, cols) float64, exactly symmetric; objectives 2 ("cov"), 3
    ("cov_window", with ``window`` candidates per list) and 4 ("swap", the best pair of the whole
    row) only.
    Objectives 0-2 walk the same cursors (below); what accepts a pair is each objective's score
    (``CURSOR_SCORES``: objectives/dsnot.py, mse.py, cov.py). Objective 3 walks windows over the
    same lists (cov_window.py), objective 4 searches the whole row (swap.py).
    ``err_sum``: the order of the rows' initial error sum, "lanes" (the contract's) or "torch"
    (ATen's ``torch.sum``, the authors' order; ``common.row_error``).

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
    if objective == 4:  # "swap": the best pair of the whole row, from this initial mask (swap.py)
        return refine_swap(W, mask, second_moment, max_cycle_time=max_cycle_time, prune_m=prune_m if nm else 0)

    err = row_error(torch.where(mask, dm, torch.zeros((), device=dev)), err_sum)
    thr = torch.tensor(update_threshold, dtype=torch.float32, device=dev)
    lists = _cursor_lists(mask, dm, wanda, metric, var, pow_of_var_regrowing, nm)
    if objective == 3:  # windows over these same lists (cov_window.py)
        kw = dict(prune_m=prune_m) if nm else dict(prune_order=lists.prune_order, n_plo=lists.plo_end,
                                                    n_phi=cols - lists.phi_start)
        return refine_cov_window(W, dm, mask, err, thr, second_moment, window=window, max_cycle_time=max_cycle_time,
                                 grow_order=lists.grow_order, n_hi=cols - lists.hi_end, n_lo=lists.lo_end, **kw)
    score = CURSOR_SCORES[objective](W=W, mask=mask, err=err, mean=mean, var=var, second_moment=second_moment,
                                     same_sign=same_sign, nm=nm)
    return _walk(dm, mask, err, thr, lists, score, max_cycle_time, prune_m if nm else 0)


def _cursor_lists(mask, dm, wanda, metric, var, p, nm):
    """The candidate lists of §3, as sorted column orders and their ends, per row.

    Growth: the initially pruned columns by key ``dm / var**p``, +key at the top end (cursor hi
    from the last column down), -key at the bottom (cursor lo from the first). Prune (unstructured):
    the initially kept columns by wanda ascending, dm < 0 first (plo), dm > 0 last (phi); N:M: the
    initial metric of the kept columns (q is chosen in r's group)."""
    rows, cols = mask.shape
    dev = mask.device
    zero = torch.zeros((), device=dev)
    key = growth_keys(dm, var, p)
    grow_pos = mask & (key > 0)
    grow_neg = mask & (key < 0)
    out = SimpleNamespace(grow_order=torch.sort(torch.where(grow_pos | grow_neg, key, zero), dim=1, stable=True)[1],
                          hi_end=cols - grow_pos.sum(1),  # hi valid while hi_ptr >= hi_end
                          lo_end=grow_neg.sum(1))         # lo valid while lo_ptr < lo_end
    if nm:
        # q in r's group: smallest initial metric among kept, not yet chosen columns (§3 step 1).
        out.q_metric = torch.where(mask, torch.full((), float("inf"), device=dev), metric)
    else:
        kept = ~mask
        cls = torch.ones((rows, cols), dtype=torch.int8, device=dev)
        cls[kept & (dm < 0)] = 0
        cls[kept & (dm > 0)] = 2
        out.prune_order = _ordered_candidates(wanda + 0.0, cls)
        out.plo_end = (cls == 0).sum(1)
        out.phi_start = cols - (cls == 2).sum(1)  # phi valid while phi_ptr < cols
    return out


def _walk(dm, mask, err, thr, lists, score, max_cycle_time, prune_m):
    """The cursor walk of objectives 0-2: per cycle and active row, the sign of ``err`` picks one
    growth candidate r and one prune candidate q; ``score.accept`` says which rows swap. Returns
    ``(mask, swaps)``; ``mask`` is updated in place."""
    rows, cols = mask.shape
    dev = mask.device
    nm = prune_m > 0
    grow_order, hi_end, lo_end = lists.grow_order, lists.hi_end, lists.lo_end
    hi_ptr = torch.full((rows,), cols - 1, dtype=torch.int64, device=dev)
    lo_ptr = torch.zeros(rows, dtype=torch.int64, device=dev)
    if nm:
        q_metric = lists.q_metric
        group_offsets = torch.arange(prune_m, device=dev)
    else:
        prune_order, plo_end, phi_ptr = lists.prune_order, lists.plo_end, lists.phi_start.clone()
        plo_ptr = torch.zeros(rows, dtype=torch.int64, device=dev)
    swaps = torch.zeros(rows, dtype=torch.int32, device=dev)
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
        ok, active = score.accept(active, r_ok, q_ok, q, r, after)
        hit = row_ids[ok]
        mask[hit, q[ok]] = True
        mask[hit, r[ok]] = False
        if nm:
            q_metric[hit, q[ok]] = float("inf")
        err = torch.where(ok, after, err)
        swaps += ok.int()
    return mask, swaps
