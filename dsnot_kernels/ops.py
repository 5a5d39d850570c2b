"""The public kernel API: ``refine_mask``, ``available_backends`` and ``backend_report``.

Every call is validated and canonicalised here (spec: docs/ALGORITHM.md §2-§3, numerics:
docs/KERNEL_CONTRACT.md), then handed to one backend. All backends take the same positional
arguments as the compiled op ``dsnot_kernels::refine_mask`` and return ``(mask, swaps)``.

Backend choice: the ``backend`` argument, else the environment variable
``DSNOT_KERNELS_BACKEND``, else the best available for the weight's device
(CUDA: ``cuda`` > ``triton`` > ``torch``; CPU: ``cpu`` > ``torch``). An explicitly requested
backend that cannot serve raises; an automatic choice falls back and says so once.

Which backends serve which objective, and what each objective needs, is one table: ``OBJECTIVES``.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Callable, NamedTuple

import torch

from dsnot_kernels import _extension
from dsnot_kernels.reference import cov_g0, refine_mask_reference

# Candidates per list that "cov_window" compares by default: measured on the embedded model (README
# setup), 100 beat 50 at 50/60/70 % and 2:4 (benchmarks/RESULTS.md, "Objective cov_window: window"); 200
# was better again at 70 % but doubles the mask time (the search is K² per cycle).
DEFAULT_WINDOW = 100
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BACKEND_ENV = "DSNOT_KERNELS_BACKEND"


class Backend(NamedTuple):
    name: str
    fn: Callable
    can_serve: Callable[[torch.device], "str | None"]  # None = can serve, else the reason why not


def _compiled_op(*args):
    return torch.ops.dsnot_kernels.refine_mask.default(*args)


def _serve_torch(device: torch.device) -> "str | None":
    if device.type == "cuda" and not torch.cuda.is_available():
        return "this torch has no usable CUDA (torch.cuda.is_available() is False)"
    return None


def _serve_cpu(device: torch.device) -> "str | None":
    if device.type != "cpu":
        return f"the cpu backend serves CPU tensors, not {device.type}"
    if not _extension.has_kernel("CPU"):
        return ("the compiled extension has no CPU kernel"
                + (f" ({_extension.EXTENSION_ERROR})" if _extension.EXTENSION_ERROR else ""))
    return None


def _serve_cuda(device: torch.device) -> "str | None":
    if device.type != "cuda":
        return f"the cuda backend serves CUDA tensors, not {device.type}"
    if not _extension.has_kernel("CUDA"):
        return ("the compiled extension has no CUDA kernel (built without nvcc or without a CUDA torch)"
                + (f" ({_extension.EXTENSION_ERROR})" if _extension.EXTENSION_ERROR else ""))
    return None


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _serve_triton(device: torch.device) -> "str | None":
    if device.type == "cpu" and not _triton_interpreting():
        return "the triton backend serves CPU tensors only under TRITON_INTERPRET=1"
    if device.type not in ("cpu", "cuda"):
        return f"the triton backend does not serve {device.type} tensors"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "the triton backend needs a CUDA device, and torch.cuda.is_available() is False"
    try:
        from dsnot_kernels.triton import refine_mask_triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not importable ({exc})"
    return None


def _serve_cpu_op(op: str) -> Callable[[torch.device], "str | None"]:
    """``can_serve`` of a CPU backend that needs the compiled op ``dsnot_kernels::<op>``."""
    def can_serve(device: torch.device) -> "str | None":
        why = _serve_cpu(device)
        if why is None and not _extension.has_kernel("CPU", op):
            why = f"the compiled extension has no {op} kernel (rebuild it)"
        return why
    return can_serve


_serve_cov_cpu = _serve_cpu_op("refine_mask_cov")
_serve_swap_cpu = _serve_cpu_op("refine_mask_swap")


def _cpu_initial_mask(weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask, sparsity,
                      prune_n, prune_m, update_threshold, pow_of_var_regrowing, same_sign):
    """The caller's mask, else the initial selection of the compiled op (0 cycles): the start of the
    second-moment objectives' CPU kernels, which then take g0 = cov_g0(...) (the reference's matmul)."""
    if initial_mask is not None:
        return initial_mask
    mask, _ = _compiled_op(weight, sum_metric_row, var, scaler_row, initial_metric, None, None, sparsity,
                           prune_n, prune_m, 0, update_threshold, pow_of_var_regrowing, same_sign, 0)
    return mask


def _cov_cpu(weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask, mean, sparsity,
             prune_n, prune_m, max_cycle_time, update_threshold, pow_of_var_regrowing, same_sign,
             objective, second_moment=None, window=0):
    """Objectives 2 and 3 on the CPU kernel: the cycles in C++ (csrc/cpu/refine_cov_cpu.cpp)."""
    initial_mask = _cpu_initial_mask(weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask,
                                     sparsity, prune_n, prune_m, update_threshold, pow_of_var_regrowing, same_sign)
    if max_cycle_time == 0:
        return initial_mask.clone(), torch.zeros(weight.shape[0], dtype=torch.int32)
    g0 = cov_g0(weight, initial_mask, second_moment)
    return torch.ops.dsnot_kernels.refine_mask_cov.default(
        weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask, second_moment, g0, prune_m,
        max_cycle_time, update_threshold, pow_of_var_regrowing, window if objective == 3 else 0)


def _swap_cpu(weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask, mean, sparsity,
              prune_n, prune_m, max_cycle_time, update_threshold, pow_of_var_regrowing, same_sign,
              objective, second_moment=None):
    """Objective 4 ("swap") on the CPU kernel: the exact best-pair search in C++
    (csrc/cpu/refine_swap_cpu.cpp)."""
    initial_mask = _cpu_initial_mask(weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask,
                                     sparsity, prune_n, prune_m, update_threshold, pow_of_var_regrowing, same_sign)
    if max_cycle_time == 0:
        return initial_mask.clone(), torch.zeros(weight.shape[0], dtype=torch.int32)
    g0 = cov_g0(weight, initial_mask, second_moment)
    mask, swaps, _pairs = torch.ops.dsnot_kernels.refine_mask_swap.default(
        weight, initial_mask, second_moment, g0, prune_m, max_cycle_time, 0)
    return mask, swaps


def _triton_fn(*args):
    from dsnot_kernels.triton import refine_mask_triton

    return refine_mask_triton(*args)


def _cov_triton(*args, **kw):
    """Objectives 2 and 3 on Triton (dsnot_kernels/triton/cov_launch.py): the initial mask and g0
    (the reference's matmul) there, the cycles in one fused per-row kernel."""
    from dsnot_kernels.triton.cov_launch import refine_mask_cov_triton

    return refine_mask_cov_triton(*args, **kw)


class Objective(NamedTuple):
    code: int           # the op's objective id (docs/KERNEL_CONTRACT.md, "Objective <code>")
    needs: tuple        # refine_mask arguments it needs beyond the weight and the three statistics
    backends: dict      # backend name -> Backend, the implementations that serve it
    # max_cycle_time when the caller passes None: an int, or a function of the weight's columns
    default_cycles: "int | Callable[[int], int]" = 50


def swap_default_cycles(cols: int) -> int:
    """Default cap of objective "swap": ``max(64, cols // 4)`` accepted swaps per row.

    The swaps a row needs to reach its local optimum grow with its width (measured on the embedded
    model, benchmarks/RESULTS.md "Objective swap": 5-9 % of cols on average, the longest row 13 %,
    at 50/60/70 % and 2:4); a quarter of the columns is about twice the longest measured row, and
    still bounds the time of a pathological row."""
    return max(64, cols // 4)


REFERENCE = Backend("torch", refine_mask_reference, _serve_torch)
# The per-row rules of the authors' kind (err-driven cursors): the compiled op and the Triton kernels.
RULE_BACKENDS = {
    "torch": REFERENCE,
    "cpu": Backend("cpu", _compiled_op, _serve_cpu),
    "cuda": Backend("cuda", _compiled_op, _serve_cuda),
    "triton": Backend("triton", _triton_fn, _serve_triton),
}
# The objectives scored with the second moment M: the reference, csrc/cpu/refine_cov_cpu.cpp and
# dsnot_kernels/triton/cov.py (no CUDA C++: docs/KERNEL_CONTRACT.md, "Objectives 2 and 3 on GPUs").
COV_BACKENDS = {"torch": REFERENCE, "cpu": Backend("cpu", _cov_cpu, _serve_cov_cpu),
                "triton": Backend("triton", _cov_triton, _serve_triton)}
# Objective 4: the reference, csrc/cpu (refine_mask_swap) and dsnot_kernels/triton/swap.py (the
# launcher of objectives 2 and 3).
SWAP_BACKENDS = {"torch": REFERENCE, "cpu": Backend("cpu", _swap_cpu, _serve_swap_cpu),
                 "triton": Backend("triton", _cov_triton, _serve_triton)}

# THE TABLE: every objective, what it needs and which backends serve it. Adding an objective or a
# backend is one entry here (and its kernel), not a new branch in refine_mask.
OBJECTIVES = {
    #             code  needs                        backends
    "dsnot":      Objective(0, (),                          RULE_BACKENDS),
    "mse":        Objective(1, ("mean",),                   RULE_BACKENDS),
    "cov":        Objective(2, ("second_moment",),          COV_BACKENDS),
    "cov_window": Objective(3, ("second_moment", "window"), COV_BACKENDS),
    "swap":       Objective(4, ("second_moment",),          SWAP_BACKENDS, swap_default_cycles),
}
SECOND_MOMENT_OBJECTIVES = tuple(n for n, o in OBJECTIVES.items() if "second_moment" in o.needs)
BACKENDS = RULE_BACKENDS  # every backend name appears here
# The automatic choice: the first backend in this order that serves the objective on the device.
AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}
_fallback_said: set = set()


def default_max_cycle_time(objective: str, cols: int) -> int:
    """The ``max_cycle_time`` that ``refine_mask(..., max_cycle_time=None)`` uses for ``objective``
    on a weight of ``cols`` columns (50 for the cursor objectives; "swap": ``swap_default_cycles``)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")
    d = OBJECTIVES[objective].default_cycles
    return int(d(int(cols))) if callable(d) else int(d)


def backend_report(device="cpu", objective: str = "dsnot") -> dict:
    """``{backend name: None if it can serve objective on device tensors, else the reason why not}``,
    every backend, best first."""
    device = torch.device(device)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")
    served = OBJECTIVES[objective].backends
    order = list(AUTO_ORDER.get(device.type, ("torch",)))
    order += [n for n in BACKENDS if n not in order]
    return {n: (served[n].can_serve(device) if n in served
                else f"the {n} backend does not implement objective {objective!r}") for n in order}


def available_backends(device="cpu", objective: str = "dsnot") -> list:
    """Names of the backends that can serve ``objective`` on ``device`` tensors, best first ([] when
    none can: e.g. "cuda" on a torch without CUDA). ``backend_report`` says why the others cannot."""
    return [n for n, why in backend_report(device, objective).items() if why is None]


def _choose_backend(name, device: torch.device, objective: str = "dsnot") -> Backend:
    """The backend of this call: ``name``, else $DSNOT_KERNELS_BACKEND, else the automatic choice."""
    served = OBJECTIVES[objective].backends
    if name is None:
        name = os.environ.get(BACKEND_ENV) or None
    if name is not None:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; expected one of {sorted(BACKENDS)}")
        if name not in served:
            raise ValueError(f"objective={objective!r} is implemented by the "
                             f"{' and '.join(map(repr, sorted(served)))} backends only, not {name!r}")
        why = served[name].can_serve(device)
        if why is not None:
            raise RuntimeError(f"dsnot_kernels: backend {name!r} cannot serve this call: {why}")
        return served[name]
    for candidate in AUTO_ORDER.get(device.type, ("torch",)):
        if candidate in served and served[candidate].can_serve(device) is None:
            if candidate == "torch" and (device.type, objective) not in _fallback_said:
                _fallback_said.add((device.type, objective))
                if device.type == "cpu":
                    _extension.warn_once_missing()
                elif any(n != "torch" for n in served):
                    warnings.warn(f"dsnot_kernels: no compiled backend serves {device.type} tensors for "
                                  f"objective={objective!r}; using the PyTorch reference", RuntimeWarning,
                                  stacklevel=3)
            return served[candidate]
    return REFERENCE


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
    return weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask, mean


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


def refine_mask(weight, sum_metric_row, var, scaler_row, *, initial_metric=None, initial_mask=None,
                sparsity=0.5, prune_n=0, prune_m=0, max_cycle_time=None, update_threshold=0.1,
                pow_of_var_regrowing=1.0, without_same_sign=True, backend=None, objective="dsnot",
                mean=None, second_moment=None, window=DEFAULT_WINDOW, return_swaps=False):
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
    chosen = _choose_backend(backend, weight.device, objective)
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
        mask, swaps = chosen.fn(weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask,
                                mean, float(sparsity) if not nm else 0.0, int(prune_n), int(prune_m),
                                int(max_cycle_time), float(update_threshold), float(pow_of_var_regrowing),
                                same_sign, OBJECTIVES[objective].code, **extra)
    return (mask, swaps) if return_swaps else mask


if _extension._C is not None:
    @torch.library.register_fake("dsnot_kernels::refine_mask")
    def _refine_mask_fake(weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask, mean,
                          sparsity, prune_n, prune_m, max_cycle_time, update_threshold,
                          pow_of_var_regrowing, same_sign, objective):
        mask = torch.empty(weight.shape, dtype=torch.bool, device=weight.device)
        swaps = torch.empty((weight.shape[0],), dtype=torch.int32, device=weight.device)
        return mask, swaps

if _extension._C is not None and hasattr(torch.ops.dsnot_kernels, "refine_mask_cov"):  # (a stale build lacks it)
    @torch.library.register_fake("dsnot_kernels::refine_mask_cov")
    def _refine_mask_cov_fake(weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask,
                              second_moment, g0, prune_m, max_cycle_time, update_threshold,
                              pow_of_var_regrowing, window):
        mask = torch.empty(weight.shape, dtype=torch.bool, device=weight.device)
        swaps = torch.empty((weight.shape[0],), dtype=torch.int32, device=weight.device)
        return mask, swaps

if _extension._C is not None and hasattr(torch.ops.dsnot_kernels, "refine_mask_swap"):  # (a stale build lacks it)
    @torch.library.register_fake("dsnot_kernels::refine_mask_swap")
    def _refine_mask_swap_fake(weight, initial_mask, second_moment, g0, prune_m, max_cycle_time, search):
        mask = torch.empty(weight.shape, dtype=torch.bool, device=weight.device)
        swaps = torch.empty((weight.shape[0],), dtype=torch.int32, device=weight.device)
        pairs = torch.empty((weight.shape[0],), dtype=torch.int64, device=weight.device)
        return mask, swaps, pairs
