"""The public kernel API: ``refine_mask``, ``available_backends`` and ``backend_report``.

Every call is validated and canonicalised (``validate.py``; spec: docs/ALGORITHM.md §2-§3,
numerics: docs/KERNEL_CONTRACT.md), then handed to one backend (``backends.py``) of the objective
asked for. Which backends serve which objective, and what each objective needs, is one table:
``dsnot_kernels.objectives.OBJECTIVES``.
"""
from __future__ import annotations

import torch

from dsnot_kernels.backends import (AUTO_ORDER, BACKEND_ENV, BACKENDS, REFERENCE, Backend,  # noqa: F401
                                    _choose_backend, _cov_cpu, _serve_cov_cpu, _serve_swap_cpu,
                                    available_backends, backend_report)
from dsnot_kernels.objectives import (DEFAULT_WINDOW, OBJECTIVES, SECOND_MOMENT_OBJECTIVES,  # noqa: F401
                                      Objective, default_max_cycle_time, swap_default_cycles)
from dsnot_kernels.objectives.common import ERR_SUM_MODES
from dsnot_kernels.validate import (WEIGHT_DTYPES, _is_symmetric, _symmetric_float64,  # noqa: F401
                                    validate_arguments, validate_second_moment)


def refine_mask(weight, sum_metric_row, var, scaler_row, *, initial_metric=None, initial_mask=None,
                sparsity=0.5, prune_n=0, prune_m=0, max_cycle_time=None, update_threshold=0.1,
                pow_of_var_regrowing=1.0, without_same_sign=True, backend=None, objective="dsnot",
                mean=None, second_moment=None, window=DEFAULT_WINDOW, return_swaps=False, err_sum="lanes"):
    """DSnoT: initial mask plus training-free refinement of one linear layer (spec §2-§3).

    Args:
        weight: (rows, cols) = (out_features, in_features), float32/float16/bfloat16.
        sum_metric_row, var, scaler_row: (cols,) floating, the layer's input statistics
            (``CalibrationStats``); converted to float32.
        initial_metric: (rows, cols) float, the metric of the initial selection (None = wanda,
            ``|W| * sqrt(scaler_row)``). For N:M it also picks the weight pruned in a group.
        initial_mask: (rows, cols) bool, True = pruned: use this mask instead of the initial
            selection (for N:M it must be N:M already).
        sparsity: unstructured ratio in [0, 1); ``int(cols * sparsity)`` pruned per row.
        prune_n, prune_m: N:M pattern when ``prune_n > 0`` (cols divisible by ``prune_m``).
        max_cycle_time: swap cycles per row (0 = the initial mask only); None = the objective's
            default (``default_max_cycle_time``: 50, "swap": ``max(64, cols // 4)``).
        update_threshold: a row stops once ``|err| <= update_threshold`` (float32 compare).
        pow_of_var_regrowing: p in the growth key ``dm / var**p`` (0 = no division).
        without_same_sign: unstructured only; False applies the same-sign rule (N:M always does).
        backend: None (automatic), "torch", "cpu", "cuda" or "triton".
        objective: "dsnot" (the authors' rule), "mse" (accept a swap only if it lowers the
            row's mean² + variance output error; needs ``mean``) or "cov" (accept a swap only if it
            lowers the row's full output error ``D M Dᵀ``; needs ``second_moment``) or "cov_window"
            (each cycle, the swap that lowers ``D M Dᵀ`` most among the next ``window`` candidates
            of each cursor; needs ``second_moment``) or "swap" (each cycle, the swap that lowers
            ``D M Dᵀ`` most among all pairs of the row, until none does; needs ``second_moment``).
            "cov" and "cov_window": the "torch", "cpu" and "triton" backends; "swap": "torch",
            "cpu" and "triton" (``docs/KERNEL_CONTRACT.md``, objectives 2 to 4).
        mean: (cols,) float, ``CalibrationStats.mean``; only for ``objective="mse"``.
        second_moment: (cols, cols) float, ``E[x xᵀ]`` of the layer's inputs up to a positive scale
            (``CalibrationStats(..., hessian=True).hessian``); only for "cov", "cov_window", "swap".
        window: candidates per list (prune and regrow) that "cov_window" compares each cycle,
            an int >= 1 (it compares up to ``window**2`` pairs; N:M: ``window * M``).
        return_swaps: also return the (rows,) int32 count of accepted swaps per row.
        err_sum: the order of each row's initial error sum ``err``: "lanes" (the contract's fixed
            order, every backend) or "torch" (ATen's ``torch.sum`` over the row on the weight's
            device, as the authors' code sums it: a few ulps off "lanes", which flips the
            ``|err| > update_threshold`` test of a row whose ``err`` lands that close to it;
            docs/ALGORITHM.md §3). "torch" runs on the "torch" backend only (None picks it; any other
            backend raises ``ValueError``).

    Returns:
        (rows, cols) bool mask, True = pruned, on the weight's device; with ``return_swaps``,
        ``(mask, swaps)``.
    """
    if isinstance(without_same_sign, (str, bytes)) or without_same_sign not in (True, False):
        raise TypeError(f"without_same_sign must be a bool, got {without_same_sign!r}")
    if max_cycle_time is None:  # the objective's default (a bad objective or weight raises below)
        cols = weight.shape[-1] if isinstance(weight, torch.Tensor) and weight.dim() >= 1 else 0
        known = isinstance(objective, str) and objective in OBJECTIVES
        max_cycle_time = default_max_cycle_time(objective, cols) if known else 0
    (weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask, mean) = validate_arguments(
        weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask, sparsity, prune_n,
        prune_m, max_cycle_time, update_threshold, pow_of_var_regrowing, objective, mean)
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int, got {type(window).__name__}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    needs = OBJECTIVES[objective].needs
    chosen = _err_sum_backend(err_sum, backend, weight.device, objective)
    second_moment = validate_second_moment(second_moment, objective, weight.shape[1], weight.device,
                                           keep_dtype=chosen.name == "triton")
    rows, cols = weight.shape
    if rows == 0 or cols == 0:
        mask = torch.zeros((rows, cols), dtype=torch.bool, device=weight.device)
        swaps = torch.zeros((rows,), dtype=torch.int32, device=weight.device)
    else:
        nm = prune_n > 0
        same_sign = True if nm else not bool(without_same_sign)
        extra = {"second_moment": second_moment} if "second_moment" in needs else {}
        if "window" in needs:
            extra["window"] = window
        if err_sum != "lanes":
            extra["err_sum"] = err_sum
        mask, swaps = chosen.fn(weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask,
                                mean, float(sparsity) if not nm else 0.0, int(prune_n), int(prune_m),
                                int(max_cycle_time), float(update_threshold), float(pow_of_var_regrowing),
                                same_sign, OBJECTIVES[objective].code, **extra)
    return (mask, swaps) if return_swaps else mask



def _err_sum_backend(err_sum, backend, device, objective):
    """The backend of a call with this ``err_sum``: ``err_sum="torch"`` is the reference's alone."""
    if err_sum not in ERR_SUM_MODES:
        raise ValueError(f"err_sum must be one of {ERR_SUM_MODES}, got {err_sum!r}")
    if err_sum == "lanes":
        return _choose_backend(backend, device, objective)
    if backend not in (None, "torch"):
        raise ValueError(f'err_sum="torch" (the authors\' torch.sum order) runs on the "torch" backend only, '
                         f"not {backend!r}; use backend=None or \"torch\", or err_sum=\"lanes\"")
    return _choose_backend("torch", device, objective)
