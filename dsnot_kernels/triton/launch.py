"""``refine_mask_triton``: the Triton backend of ``dsnot_kernels::refine_mask`` (spec §2-§3).

Takes the op's 15 positional arguments (already validated by ``ops.refine_mask``) and runs two
launches over rows: the initial selection (skipped when the caller gives ``initial_mask``), then
the fused refinement. CUDA tensors run compiled; CPU tensors run under ``TRITON_INTERPRET=1``.
"""
import contextlib
import os

import torch
import triton

from dsnot_kernels.objectives.reference import sqrt_rn, var_power
from dsnot_kernels.triton.refine import refine
from dsnot_kernels.triton.select_nm import select_nm
from dsnot_kernels.triton.select_unstructured import select_unstructured

POISON_ENV = "DSNOT_KERNELS_POISON"
MASK_POISON = 0x5A  # uint8 view of the mask
SWAPS_POISON = -777
LAUNCH_ENV = "DSNOT_TRITON_LAUNCH"


def launch_config(cols: int):
    """(CHUNK, num_warps) for a row of ``cols`` columns.

    One program per row: rows are independent and each runs a sequential swap loop, whose cycles
    are latency-bound (a chunk rescan, a few dependent loads, a barrier), so the GPU is filled by
    many rows per SM rather than many threads per row; real layers have >= 4096 rows (>= 30 per
    H200 SM). Every kernel sweeps its row in CHUNK-column chunks, so any width works with the same
    registers. 512 columns over 4 warps keeps every kernel at <= 80 registers on sm_80/sm_90 (6
    rows per SM) and at most 16 spilled bytes, except the bounded unstructured swap kernel on sm_80
    (94 registers: 5 rows per SM; benchmarks/RESULTS.md, "Triton kernel resources").
    ``DSNOT_TRITON_LAUNCH=CHUNK:WARPS`` overrides it (for tuning on a GPU).
    """
    override = os.environ.get(LAUNCH_ENV)
    if override:
        chunk, warps = (int(x) for x in override.split(":"))
        if chunk < 16 or chunk & (chunk - 1) or warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"{LAUNCH_ENV}={override!r}: CHUNK a power of two >= 16, WARPS 1..16")
        return chunk, warps
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        # the interpreter pays per element of a block: the smallest chunk that holds a short row
        chunk = max(min(triton.next_power_of_2(max(cols, 1)), 512), 16)
        return chunk, max(1, min(4, chunk // 128))
    return 512, 4  # compiled: one CHUNK for every width (fewer kernel variants to JIT-compile)


def _poison_on() -> bool:
    return os.environ.get(POISON_ENV, "0") == "1"


def row_vectors(scaler_row, var, pow_of_var_regrowing, update_threshold):
    """``(sqrt_scaler, varp, p, thr)`` shared by every Triton launcher: ``sqrt(scaler_row)``
    correctly rounded (CPU torch.sqrt is not: issue 21); ``var**p`` by the contract's one
    definition (ATen CPU pow in float64, one rounding; p == 1: var; p == 0: unused); ``thr`` the
    threshold rounded to float32, as the contract says."""
    sqrt_scaler = sqrt_rn(scaler_row)
    p = float(pow_of_var_regrowing)
    varp = var if p == 0.0 else var_power(var, p)
    thr = float(torch.tensor(update_threshold, dtype=torch.float32))
    return sqrt_scaler, varp, p, thr


def initial_source(weight, sqrt_scaler, initial_metric, initial_mask, out, sparsity, prune_n, prune_m,
                   chunk, num_warps):
    """The launch's initial mask as uint8 0/1 (rows, cols): the caller's ``initial_mask`` viewed as
    it is, or ``out`` filled by the selection kernels (N:M or unstructured). Call inside the
    device context."""
    if initial_mask is not None:
        return initial_mask.view(torch.uint8)
    if prune_n > 0:
        select_nm(weight, sqrt_scaler, initial_metric, out, prune_n, prune_m, chunk, num_warps)
    else:
        select_unstructured(weight, sqrt_scaler, initial_metric, out, int(weight.shape[1] * sparsity),
                            chunk, num_warps)
    return out


def refine_mask_triton(weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask, mean,
                       sparsity, prune_n, prune_m, max_cycle_time, update_threshold,
                       pow_of_var_regrowing, same_sign, objective):
    """Triton backend. weight (rows, cols) fp32/fp16/bf16 contiguous; stats (cols,) fp32;
    initial_metric (rows, cols) fp32 or None; initial_mask (rows, cols) bool or None; mean (cols,)
    fp32 for objective 1. Returns (mask (rows, cols) bool, swaps (rows,) int32)."""
    rows, cols = weight.shape
    dev = weight.device
    out = torch.empty((rows, cols), dtype=torch.uint8, device=dev)
    swaps = torch.empty((rows,), dtype=torch.int32, device=dev)
    if _poison_on():
        out.fill_(MASK_POISON)
        swaps.fill_(SWAPS_POISON)
    if rows == 0 or cols == 0:
        return out.zero_().view(torch.bool), swaps.zero_()
    chunk, num_warps = launch_config(cols)
    nm = prune_n > 0
    sqrt_scaler, varp, p, thr = row_vectors(scaler_row, var, pow_of_var_regrowing, update_threshold)
    with (torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()):
        src = initial_source(weight, sqrt_scaler, initial_metric, initial_mask, out, sparsity, prune_n,
                             prune_m, chunk, num_warps)
        refine(weight, sum_metric_row, varp, sqrt_scaler, initial_metric, mean, var, src, out,
               swaps, int(max_cycle_time), thr, prune_m if nm else 0, same_sign, objective,
               p != 0.0, chunk, num_warps)
    return out.view(torch.bool), swaps
