"""What every objective's reference shares: the fixed-order row sum, the correctly rounded square
root, the wanda metric, the growth keys and the initial selection (docs/ALGORITHM.md §2-§3,
docs/KERNEL_CONTRACT.md)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

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


ERR_SUM_MODES = ("lanes", "torch")


def row_error(v: torch.Tensor, err_sum: str = "lanes") -> torch.Tensor:
    """The rows' initial reconstruction error ``err``: row sums of ``v`` (rows, cols), (rows,).

    ``"lanes"``: the contract's fixed order (``lane_sum``), the same float32 value on every
    backend. ``"torch"``: ATen's ``torch.sum(v, dim=1)`` on ``v``'s device, the authors' order
    (their ``torch.sum(metric_for_regrowing, dim=1)``); a few ulps away from ``"lanes"`` on most
    rows, which decides the ``|err| > update_threshold`` test when ``err`` lands within those ulps
    of the threshold (issue 30). Reference backend only.
    """
    if err_sum == "lanes":
        return lane_sum(v)
    if err_sum == "torch":
        return torch.sum(v, dim=1)
    raise ValueError(f"err_sum must be one of {ERR_SUM_MODES}, got {err_sum!r}")


NM_TIES = ("lower", "topk")


def topk_nm_selection(metric: torch.Tensor, prune_n: int, prune_m: int) -> torch.Tensor:
    """(rows, cols) bool N:M mask, True = pruned: in each group of ``prune_m`` columns the
    ``prune_n`` of smallest metric as the authors' code picks them for a sub-layer it does not
    refine, ``torch.topk(metric[:, g:g + M], N, dim=1, largest=False)`` group by group. It differs
    from the spec's "ties by lower index" on exact ties only (ATen's topk can take a later index)."""
    mask = torch.zeros(metric.shape, dtype=torch.bool, device=metric.device)
    for g in range(0, metric.shape[1], prune_m):
        mask.scatter_(1, g + torch.topk(metric[:, g:g + prune_m].float(), prune_n, dim=1, largest=False)[1], True)
    return mask


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
