"""The backends of ``refine_mask``: which implementations exist, which devices each serves, and the
automatic choice (docs/ARCHITECTURE.md). The objectives' table (``dsnot_kernels.objectives``)
names, per objective, the backends below that implement it.

Every backend takes the positional arguments of the compiled op ``dsnot_kernels::refine_mask``
and returns ``(mask, swaps)``. The choice: the ``backend`` argument, else the environment
variable ``DSNOT_KERNELS_BACKEND``, else the first in ``AUTO_ORDER`` that serves the device. An
explicitly requested backend that cannot serve raises; an automatic choice falls back and says so
once.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, NamedTuple

import torch

from dsnot_kernels import _extension

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
    from dsnot_kernels.objectives.cov_window import cov_g0

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
    from dsnot_kernels.objectives.cov_window import cov_g0

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


def _reference(*args, **kw):
    """The PyTorch reference (objectives/reference.py), imported on first use."""
    from dsnot_kernels.objectives.reference import refine_mask_reference

    return refine_mask_reference(*args, **kw)


REFERENCE = Backend("torch", _reference, _serve_torch)
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

BACKENDS = RULE_BACKENDS  # every backend name appears here
# The automatic choice: the first backend in this order that serves the objective on the device.
AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}
_fallback_said: set = set()


def backend_report(device="cpu", objective: str = "dsnot") -> dict:
    """``{backend name: None if it can serve objective on device tensors, else the reason why not}``,
    every backend, best first."""
    from dsnot_kernels.objectives import OBJECTIVES

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
    from dsnot_kernels.objectives import OBJECTIVES

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


# Shapes of the compiled ops' outputs, for torch.compile / FakeTensor tracing (torch.library).
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
