"""``refine_mask_cov_triton``: objectives 2 ("cov"), 3 ("cov_window") and 4 ("swap") on Triton.

Three steps, as the CPU path (``ops._cov_cpu``): the initial mask (this package's Triton selection
kernels, or the caller's), ``g0 = D0 @ M`` (``objectives.cov_window.cov_g0``: the reference's one
matmul, on the weight's device), then the fused per-row kernel (``cov.py``; ``swap.py`` for
objective 4), which updates ``g0`` in place. CUDA tensors run compiled; CPU tensors run under ``TRITON_INTERPRET=1``.

Memory (docs/KERNEL_CONTRACT.md "Objectives 2 and 3 on GPUs"): ``M`` stays in the caller's dtype
(float32 or float64) when it is exactly symmetric (``second_moment_for_triton``); the layer then
needs, besides its inputs, ``layer_bytes(rows, cols, m_dtype, window)``: g (float64) and the
float64 D0 of the matmul (16 rows·cols), a float64 copy of a float32 M for that one matmul
(8 cols², released before the kernel runs), the uint8 mask, the window slots. ``check_memory``
refuses, before anything is allocated, a layer that would not fit in the device's free memory.
"""
from __future__ import annotations

import contextlib

import torch

from dsnot_kernels.ops import _is_symmetric  # noqa: F401 (also used by callers of this module)
from dsnot_kernels.objectives.cov_window import cov_g0
from dsnot_kernels.triton.cov import cov_refine
from dsnot_kernels.triton.launch import (MASK_POISON, SWAPS_POISON, _poison_on, initial_source, launch_config,
                                         row_vectors)
from dsnot_kernels.triton.swap import CS_BLOCK, cs_factors, swap_refine

GIB = 2 ** 30
# the largest window the kernel's int32 pair index (K * K) can address
MAX_WINDOW = 46340


def free_bytes(device: torch.device) -> "int | None":
    """Free memory of ``device`` in bytes (``torch.cuda.mem_get_info``); None = not checked (CPU
    tensors under the interpreter). Tests monkeypatch this to exercise ``check_memory``."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return None


def layer_bytes(rows: int, cols: int, m_dtype: torch.dtype, window: int = 0, swap_bounds: bool = False) -> dict:
    """Bytes the Triton cov path allocates for one (rows, cols) layer, beyond its inputs.

    ``peak`` is the most at one time: during the g0 matmul, D0 and g (float64 each) plus, for a
    float32 M, its float64 copy; then g, the mask, the slots and (``swap_bounds``: objective 4's
    bounded search, unstructured) the float64 bounds scratch and Cauchy-Schwarz factors (allocated
    after the matmul, with the factors' temporaries) while the kernel runs."""
    K = min(window, cols)
    g = 8 * rows * cols
    d0 = 8 * rows * cols
    m64 = 8 * cols * cols if m_dtype != torch.float64 else 0
    mask = rows * cols + 4 * rows
    slots = 4 * rows * 4 * K
    bounds = 8 * rows * cols + 8 * rows + 8 + 8 * (cols + 1) if swap_bounds else 0
    matmul = g + d0 + m64 + mask
    # cs_factors' (CS_BLOCK, cols) float64 temporaries, just before the kernel
    cs_tmp = 4 * 8 * min(CS_BLOCK, cols) * cols if swap_bounds else 0
    kernel = g + mask + slots + bounds + cs_tmp
    return dict(g=g, d0=d0, m64_copy=m64, mask=mask, slots=slots, bounds=bounds, matmul=matmul,
                kernel=kernel, peak=max(matmul, kernel))


def check_memory(device: torch.device, need: int, what: str) -> None:
    """Raise ``torch.OutOfMemoryError`` with a clear message if ``need`` bytes are not free."""
    free = free_bytes(device)
    if free is not None and need > free:
        raise torch.OutOfMemoryError(
            f"dsnot_kernels (triton, cov objectives): {what} needs {need / GIB:.2f} GiB of {device} "
            f"memory, {free / GIB:.2f} GiB are free; refine fewer rows at a time (the rows are "
            "independent), give the second moment as an exactly symmetric float32 tensor, or use "
            "backend='torch'/'cpu' (docs/KERNEL_CONTRACT.md, memory of objectives 2 and 3)")


def second_moment_for_triton(second_moment: torch.Tensor) -> torch.Tensor:
    """The second moment as the Triton cov kernel takes it, with the reference's values.

    An exactly symmetric float32 or float64 ``M`` is returned as it is (no copy: the kernel widens
    per element, exactly as the reference's float64 conversion); float16/bfloat16 widen to float32
    (exact). Otherwise the reference's ``(M + Mᵀ) * 0.5`` in float64, built by row blocks into one
    float64 matrix (8 cols² bytes, checked against free memory first). Values are checked finite
    by the caller."""
    m = second_moment
    if m.dtype in (torch.float16, torch.bfloat16):
        check_memory(m.device, 4 * m.numel(), "a float32 copy of the float16/bfloat16 second moment")
        m = m.float()
    m = m.contiguous()
    if m.dtype in (torch.float32, torch.float64) and _is_symmetric(m):
        return m
    check_memory(m.device, 8 * m.numel(), "the float64 symmetrised copy of a non-symmetric second moment")
    out = torch.empty(m.shape, dtype=torch.float64, device=m.device)
    block = 1024
    for i in range(0, m.shape[0], block):
        out[i:i + block] = (m[i:i + block].double() + m[:, i:i + block].t().double()) * 0.5
    return out


G0_BLOCK = 2048  # columns of M per float64 copy when a whole copy does not fit


def _g0(weight, mask_bool, M, blocked=False):
    """``cov_g0`` with the reference's operands: a float32 M becomes float64 for the one matmul
    (the same values as the reference's converted M, so the same g0 bits). ``blocked``: when a
    float64 copy of M does not fit, g0 by blocks of G0_BLOCK columns of M (the BLAS may round an
    element differently from the one matmul: masks can then differ from the reference's in
    near-ties, as between a CPU and a GPU run; the contract defines masks given g0)."""
    if M.dtype == torch.float64:
        return cov_g0(weight, mask_bool, M)
    if not blocked:
        return cov_g0(weight, mask_bool, M.double())
    D = torch.where(mask_bool, weight.float().double(), torch.zeros((), dtype=torch.float64, device=weight.device))
    g = torch.empty(D.shape, dtype=torch.float64, device=D.device)
    for j in range(0, M.shape[1], G0_BLOCK):
        g[:, j:j + G0_BLOCK] = D @ M[:, j:j + G0_BLOCK].double()
    return g


def swap_tile_config(cols: int, prune_m: int, interpreting: bool):
    """(QB, RB) of objective 4's pair search: QB q columns by RB r columns (N:M: QB q columns by
    their group; RB unused)."""
    import triton

    kp = triton.next_power_of_2(max(cols, 1))
    if prune_m:
        return (min(kp, 64) if interpreting else 128), 1
    return (min(kp, 64), min(kp, 64)) if interpreting else (8, 64)


def tile_config(window: int, prune_m: int, interpreting: bool):
    """(QB, RB): the q-slot by r-slot tile of objective 3's pair search (N:M: RB r slots by the
    group). The interpreter pays per operation, not per element: one tile for a small window."""
    import triton

    kp = triton.next_power_of_2(max(window, 1))
    if interpreting:
        return min(kp, 64), min(kp, 64)
    return min(kp, 8), min(kp, 64 if prune_m == 0 else 32)


def refine_mask_cov_triton(weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask, mean,
                           sparsity, prune_n, prune_m, max_cycle_time, update_threshold,
                           pow_of_var_regrowing, same_sign, objective, second_moment=None, window=0,
                           swap_search=0, swap_pairs=None):
    """Triton backend of objectives 2, 3 and 4 (the op's positional arguments, validated by
    ``ops.refine_mask``, plus ``second_moment`` (cols, cols) float32/float64 exactly symmetric and
    ``window`` for objective 3). Objective 4: ``swap_search`` 0 = the bounded search (the
    default; unstructured rows), 1 = the full scan of every pair (the same result); ``swap_pairs``,
    a (rows,) int64 tensor, receives the deltas each row computed. Returns (mask (rows, cols)
    bool, swaps (rows,) int32)."""
    import os

    rows, cols = weight.shape
    dev = weight.device
    K = min(int(window), cols) if objective == 3 else 0
    if objective == 4 and cols > MAX_WINDOW:
        raise ValueError(f"the triton swap kernel takes rows of up to {MAX_WINDOW} columns, got {cols}")
    if K > MAX_WINDOW:
        raise ValueError(f"window={window}: the triton cov_window kernel takes windows up to {MAX_WINDOW}")
    blocked = False
    swap_bounds = objective == 4 and prune_n == 0 and swap_search == 0
    if max_cycle_time > 0:
        need = layer_bytes(rows, cols, second_moment.dtype, K, swap_bounds)
        free = free_bytes(dev)
        small = (max(need["matmul"] - need["m64_copy"] + 8 * cols * min(cols, G0_BLOCK), need["kernel"])
                 if need["m64_copy"] else None)
        blocked = free is not None and small is not None and need["peak"] > free >= small
        check_memory(dev, small if blocked else need["peak"], f"a ({rows}, {cols}) layer")
    out = torch.empty((rows, cols), dtype=torch.uint8, device=dev)
    swaps = torch.empty((rows,), dtype=torch.int32, device=dev)
    if _poison_on():
        out.fill_(MASK_POISON)
        swaps.fill_(SWAPS_POISON)
    chunk, num_warps = launch_config(cols)
    nm = prune_n > 0
    sqrt_scaler, varp, p, thr = row_vectors(scaler_row, var, pow_of_var_regrowing, update_threshold)
    with (torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()):
        src = initial_source(weight, sqrt_scaler, initial_metric, initial_mask, out, sparsity, prune_n,
                             prune_m, chunk, num_warps)
        if max_cycle_time == 0:
            if initial_mask is not None:
                out.copy_(src)
            return out.view(torch.bool), swaps.zero_()
        g = _g0(weight, src.view(torch.bool), second_moment, blocked)
        interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1"
        if objective == 4:
            qb, rb = swap_tile_config(cols, prune_m if nm else 0, interpreting)
            # the Cauchy-Schwarz factors of the bounded search: one O(cols²) pass over M per call
            z = cs_factors(second_moment) if swap_bounds else None
            pairs = swap_refine(weight, second_moment, g, src, out, swaps, int(max_cycle_time),
                                prune_m if nm else 0, chunk, num_warps, qb, rb, search=int(swap_search),
                                z=z)
            if swap_pairs is not None:
                swap_pairs.copy_(pairs)
            return out.view(torch.bool), swaps
        slots = torch.empty((rows, 4, K), dtype=torch.int32, device=dev) if K else None
        qb, rb = tile_config(K, prune_m if nm else 0, interpreting)
        cov_refine(weight, sum_metric_row, varp, sqrt_scaler, initial_metric, second_moment, g, slots,
                   src, out, swaps, int(max_cycle_time), thr, prune_m if nm else 0, K, p != 0.0,
                   chunk, num_warps, qb, rb)
    return out.view(torch.bool), swaps
