"""Argument checks of ``refine_mask``: every tensor and number is validated and canonicalised here
before a backend sees it (spec: docs/ALGORITHM.md §2, numerics: docs/KERNEL_CONTRACT.md). Errors
are ``TypeError``/``ValueError`` naming the argument and the problem."""
from __future__ import annotations

import math

import torch

from dsnot_kernels.objectives import OBJECTIVES, SECOND_MOMENT_OBJECTIVES

WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_tensor(name, t) -> None:
    """``t`` must be a dense (strided) torch.Tensor: numpy arrays, lists, sparse tensors are refused."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")


def _as_real(name, v) -> float:
    """A real-number argument as a Python float; strings, None and other objects are refused."""
    if isinstance(v, (str, bytes)) or v is None:
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    try:
        return float(v)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}") from exc


def _all_finite(t: torch.Tensor) -> bool:
    """True if every element is finite: one ``aminmax`` pass, which propagates NaN and exposes
    +-inf (``torch.isfinite(t).all()`` takes several passes and temporaries over a large weight)."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _has_nan(t: torch.Tensor) -> bool:
    """True if any element is NaN (infinities allowed); ``aminmax`` propagates NaN."""
    return t.numel() > 0 and bool(torch.isnan(torch.aminmax(t)[0]))


def _check_placed(name, t, shape, device) -> None:
    """``t`` is a dense tensor of ``shape`` on ``device`` (the weight's)."""
    _check_tensor(name, t)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but weight is on {device}; put all tensors on one device")


def _as_stat(name, t, cols, device) -> torch.Tensor:
    _check_tensor(name, t)
    if t.dim() != 1 or t.shape[0] != cols:
        raise ValueError(f"{name} must have shape ({cols},) to match weight's columns, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but weight is on {device}; put all tensors on one device")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    t = t.to(torch.float32).contiguous()
    if not _all_finite(t):
        raise ValueError(f"{name} has non-finite values (NaN or inf)")
    return t


def validate_arguments(weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask,
                       sparsity, prune_n, prune_m, max_cycle_time, update_threshold,
                       pow_of_var_regrowing, objective, mean):
    """Check every argument of ``refine_mask`` and return the canonical tensors.

    Returns ``(weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask, mean)``:
    weight contiguous in its dtype, statistics and metric float32 contiguous, mask bool contiguous.
    (``second_moment`` of objective "cov" is checked by ``validate_second_moment``.)
    Raises ``TypeError``/``ValueError`` naming the argument and the problem.
    """
    weight, sum_metric_row, var, scaler_row = _check_weight_and_stats(weight, sum_metric_row, var, scaler_row)
    _check_numbers(weight.shape[1], sparsity, prune_n, prune_m, max_cycle_time, update_threshold,
                   pow_of_var_regrowing, objective)
    initial_metric, initial_mask, mean = _check_optional(weight, initial_metric, initial_mask, mean, prune_n,
                                                         prune_m, objective)
    return weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask, mean


def _check_weight_and_stats(weight, sum_metric_row, var, scaler_row):
    """The weight (2-D, float32/16/bf16, finite; contiguous) and the three (cols,) statistics
    (float32 contiguous, finite; var and scaler_row >= 0)."""
    _check_tensor("weight", weight)
    if weight.device.type == "meta":
        raise ValueError("weight is on the meta device (no data); refine_mask needs real tensors")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (rows, cols) = (out_features, in_features), got shape {tuple(weight.shape)}")
    if weight.dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight dtype must be float32, float16 or bfloat16, got {weight.dtype}")
    rows, cols = weight.shape
    if cols >= 2**31:
        raise ValueError(f"weight has {cols} columns; at most 2**31 - 1 are supported")
    device = weight.device
    weight = weight.contiguous()
    if not _all_finite(weight):
        raise ValueError("weight has non-finite values (NaN or inf)")
    sum_metric_row = _as_stat("sum_metric_row", sum_metric_row, cols, device)
    var = _as_stat("var", var, cols, device)
    scaler_row = _as_stat("scaler_row", scaler_row, cols, device)
    if bool((var < 0).any()):
        raise ValueError("var has negative values; a variance must be >= 0")
    var = var + 0.0  # -0.0 -> +0.0: a zero variance gives keys +-inf by the sign of dm (spec §3)
    if bool((scaler_row < 0).any()):
        raise ValueError("scaler_row has negative values; a mean of squares must be >= 0")
    return weight, sum_metric_row, var, scaler_row


def _check_numbers(cols, sparsity, prune_n, prune_m, max_cycle_time, update_threshold, pow_of_var_regrowing,
                   objective) -> None:
    """The scalar arguments: the pattern (N:M with cols divisible by M, or a sparsity in [0, 1)),
    the cycle cap, the threshold, the exponent and the objective's name."""
    for name, v in (("prune_n", prune_n), ("prune_m", prune_m), ("max_cycle_time", max_cycle_time)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if max_cycle_time < 0:
        raise ValueError(f"max_cycle_time must be >= 0, got {max_cycle_time}")
    if max_cycle_time >= 2**31:
        raise ValueError(f"max_cycle_time must be < 2**31, got {max_cycle_time}")
    if prune_n != 0 or prune_m != 0:
        if not (0 < prune_n < prune_m):
            raise ValueError(f"N:M needs 0 < prune_n < prune_m, got prune_n={prune_n}, prune_m={prune_m}")
        if cols % prune_m != 0:
            raise ValueError(f"N:M needs cols divisible by prune_m: cols={cols}, prune_m={prune_m}")
    else:
        sparsity = _as_real("sparsity", sparsity)
        if not (0.0 <= sparsity < 1.0):
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    update_threshold = _as_real("update_threshold", update_threshold)
    if not (math.isfinite(update_threshold) and update_threshold >= 0):
        raise ValueError(f"update_threshold must be finite and >= 0, got {update_threshold}")
    if not math.isfinite(_as_real("pow_of_var_regrowing", pow_of_var_regrowing)):
        raise ValueError(f"pow_of_var_regrowing must be finite, got {pow_of_var_regrowing}")
    if not isinstance(objective, str):
        raise TypeError(f"objective must be a str, one of {sorted(OBJECTIVES)}, got {type(objective).__name__}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")


def _check_optional(weight, initial_metric, initial_mask, mean, prune_n, prune_m, objective):
    """``(initial_metric, initial_mask, mean)`` checked against the weight's shape and device and
    made canonical (float32 / bool contiguous); ``mean`` only for the objectives that need it."""
    rows, cols = weight.shape
    device = weight.device
    if initial_metric is not None:
        _check_placed("initial_metric", initial_metric, (rows, cols), device)
        if not initial_metric.is_floating_point():
            raise ValueError(f"initial_metric must be floating point, got {initial_metric.dtype}")
        initial_metric = initial_metric.to(torch.float32).contiguous()
        if _has_nan(initial_metric):
            raise ValueError("initial_metric has NaN values")
    if initial_mask is not None:
        _check_placed("initial_mask", initial_mask, (rows, cols), device)
        if initial_mask.dtype != torch.bool:
            raise ValueError(f"initial_mask must be a bool tensor (True = pruned), got {initial_mask.dtype}")
        initial_mask = initial_mask.contiguous()
        if prune_n > 0 and rows * cols > 0:
            per_group = initial_mask.view(rows, cols // prune_m, prune_m).sum(-1)
            bad = (per_group != prune_n).nonzero()
            if bad.numel():
                r, g = bad[0].tolist()
                raise ValueError(f"initial_mask is not {prune_n}:{prune_m}: row {r}, group {g} has "
                                 f"{int(per_group[r, g])} pruned ({bad.shape[0]} groups violate)")
    if "mean" in OBJECTIVES[objective].needs:
        if mean is None:
            raise ValueError('objective="mse" needs mean= (CalibrationStats.mean, the per-token input mean)')
        mean = _as_stat("mean", mean, cols, device)
    else:
        mean = None
    return initial_metric, initial_mask, mean


def validate_second_moment(second_moment, objective, cols, device, keep_dtype=False):
    """The (cols, cols) second-moment matrix of objectives "cov", "cov_window", "swap" as float64, exactly symmetric
    (``(M + Mᵀ) / 2``, so that M[q, r] == M[r, q] whatever summation order produced it); None for
    the other objectives. Any positive scale works (``CalibrationStats.hessian`` as it is): the
    objective only compares a change of the loss with 0. ``keep_dtype`` (the triton backend): an
    exactly symmetric float32/float64 M as it is, no copy (``triton.cov_launch.second_moment_for_triton``:
    the same values as the float64 conversion, and no 8 cols² bytes copy)."""
    if objective not in SECOND_MOMENT_OBJECTIVES:
        return None
    if second_moment is None:
        raise ValueError(f'objective={objective!r} needs second_moment= (a (cols, cols) E[x xᵀ] up to a positive '
                         "scale, e.g. CalibrationStats(..., hessian=True).hessian)")
    _check_placed("second_moment", second_moment, (cols, cols), device)
    if not second_moment.is_floating_point():
        raise ValueError(f"second_moment must be floating point, got {second_moment.dtype}")
    if keep_dtype:
        if not _all_finite(second_moment):
            raise ValueError("second_moment has non-finite values (NaN or inf)")
        from dsnot_kernels.triton.cov_launch import second_moment_for_triton

        return second_moment_for_triton(second_moment)
    m = second_moment.to(torch.float64).contiguous()
    if not _all_finite(m):
        raise ValueError("second_moment has non-finite values (NaN or inf)")
    return _symmetric_float64(m, own=m.data_ptr() != second_moment.data_ptr())


def _is_symmetric(m: torch.Tensor, block: int = 1024) -> bool:
    """``m == mᵀ`` exactly, by row blocks (no cols² temporary)."""
    n = m.shape[0]
    for i in range(0, n, block):
        if not torch.equal(m[i:i + block], m[:, i:i + block].t()):
            return False
    return True


def _symmetric_float64(m, block=1024, own=False):
    """``(m + mᵀ) * 0.5`` of a finite float64 (cols, cols) ``m``, holding at most one more matrix:
    an exactly symmetric ``m`` is returned as it is (the same values: x + x and the halving are
    exact, short of overflow, where the sum would have been inf); ``own`` (m is a copy made here,
    e.g. the float64 widening of a float32 M): symmetrised in place, by pairs of row blocks;
    otherwise the result is built by row blocks into one new matrix. At 28672 columns M is 6.6 GB
    in float64: this keeps the peak at one float64 M (two for a caller's non-symmetric float64 M)."""
    if _is_symmetric(m, block):
        return m
    n = m.shape[0]
    if own:
        for i in range(0, n, block):
            for j in range(i, n, block):
                avg = (m[i:i + block, j:j + block] + m[j:j + block, i:i + block].t()) * 0.5
                m[i:i + block, j:j + block] = avg
                m[j:j + block, i:i + block] = avg.t()
        return m
    out = torch.empty_like(m)
    for i in range(0, n, block):
        out[i:i + block] = (m[i:i + block] + m[:, i:i + block].t()) * 0.5
    return out
