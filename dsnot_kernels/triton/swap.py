"""Objective 4 ("swap") as a fused Triton kernel, one program per row.

docs/KERNEL_CONTRACT.md "Objective 4". The caller gives the initial mask and ``g = D0 @ M``
(``reference_window.cov_g0``, float64, (rows, cols)), updated here in place exactly as objectives 2
and 3 (``cov._g_update``). Each cycle scores every pair (q kept now, r pruned now) of the row
(N:M: q and r in the same M-group) with the contract's float64
``delta = (A_q - ((2 w_q) w_r) M_qr) + B_r``, in QB x RB column tiles (N:M: QB q columns by their
group), and applies the smallest if it is < 0; ties: the lowest q, then the lowest r, i.e. the
first minimum of the pair index ``q * cols + r`` (int32: cols² < 2**31). ``M`` is read from global
memory (through L2) in its dtype, float32 or float64, widened exactly per element. The cost is
O(cols²) reads of ``M`` per cycle and row for unstructured rows (O(cols · M) for N:M): the rule
is a brute-force search, as the reference.

``out`` holds the working mask (0 kept, 1 pruned) and is the result.
"""
import triton
import triton.language as tl

from dsnot_kernels.triton._common import load_w, weight_arg
from dsnot_kernels.triton.cov import _g_update, _m_at, _tile_min


@triton.jit
def _side(w_row, g_row, m_ptr, c, ok, cols, prune_side: tl.constexpr):
    """``A_c = (2 w_c) g_c + (w_c w_c) M_cc`` (prune side) or ``B_c = (w_c w_c) M_cc - (2 w_c) g_c``."""
    w = load_w(w_row + c, ok).to(tl.float64)
    gc = tl.load(g_row + c, mask=ok, other=0.0)
    mcc = _m_at(m_ptr, c, c, cols, ok)
    if prune_side:
        t = (2.0 * w) * gc + (w * w) * mcc
    else:
        t = (w * w) * mcc - (2.0 * w) * gc
    return w, t


@triton.jit(do_not_specialize=["max_cycles"])
def _swap_kernel(w_ptr, m_ptr, g_ptr, src_ptr, out_ptr, swaps_ptr, cols, max_cycles,
                 NM: tl.constexpr, PRUNE_M: tl.constexpr, M_POW2: tl.constexpr,
                 CHUNK: tl.constexpr, QB: tl.constexpr, RB: tl.constexpr):
    """Row ``program_id(0)``: ``src`` uint8 0/1 initial mask (may be ``out``); ``out`` uint8 0/1
    (True = pruned); ``swaps[row]`` int32; ``g`` (rows, cols) float64 updated in place; ``M``
    (cols, cols) float32/float64, symmetric."""
    row = tl.program_id(0).to(tl.int64)
    w_row = w_ptr + row * cols
    src_row = src_ptr + row * cols
    out_row = out_ptr + row * cols
    g_row = g_ptr + row * cols
    idx = tl.arange(0, CHUNK)
    inf = float("inf")
    for base in range(0, cols, CHUNK):
        offs = base + idx
        m = offs < cols
        tl.store(out_row + offs, tl.load(src_row + offs, mask=m, other=0), mask=m)
    tl.debug_barrier()

    swaps = tl.sum(tl.zeros([2], tl.int32), axis=0)
    alive = swaps == 0
    cycle = swaps
    while alive & (cycle < max_cycles):
        cycle += 1
        best = tl.sum(tl.zeros([2], tl.float64), axis=0) + inf
        best_flat = tl.sum(tl.zeros([2], tl.int32), axis=0) + 2147483647
        for qb in range(0, cols, QB):
            q = qb + tl.arange(0, QB)
            qm = q < cols
            q_ok = qm & (tl.load(out_row + q, mask=qm, other=1) == 0)        # kept now
            wq, a = _side(w_row, g_row, m_ptr, q, q_ok, cols, True)
            if NM:  # r in q's group
                t = tl.arange(0, M_POW2)
                r = (q - q % PRUNE_M)[:, None] + t[None, :]
                pair = q_ok[:, None] & (t < PRUNE_M)[None, :]
                pair = pair & (tl.load(out_row + r, mask=pair, other=0) == 1)  # pruned now
                wr, b = _side(w_row, g_row, m_ptr, r, pair, cols, False)
                cross = ((2.0 * wq)[:, None] * wr) * _m_at(m_ptr, q[:, None], r, cols, pair)
                d = tl.where(pair, (a[:, None] - cross) + b, inf)
                best, best_flat = _tile_min(d, q[:, None] * cols + r, best, best_flat)
            else:
                for rb in range(0, cols, RB):
                    r = rb + tl.arange(0, RB)
                    rm = r < cols
                    r_ok = rm & (tl.load(out_row + r, mask=rm, other=0) == 1)  # pruned now
                    wr, b = _side(w_row, g_row, m_ptr, r, r_ok, cols, False)
                    pair = q_ok[:, None] & r_ok[None, :]
                    cross = ((2.0 * wq)[:, None] * wr[None, :]) * _m_at(m_ptr, q[:, None], r[None, :],
                                                                         cols, pair)
                    d = tl.where(pair, (a[:, None] - cross) + b[None, :], inf)
                    best, best_flat = _tile_min(d, q[:, None] * cols + r[None, :], best, best_flat)
        ok = best < 0
        q = tl.where(ok, best_flat // cols, 0)
        r = tl.where(ok, best_flat % cols, 0)
        wq = load_w(w_row + q, ok).to(tl.float64)
        wr = load_w(w_row + r, ok).to(tl.float64)
        _g_update(g_row, m_ptr, q, r, wq, wr, cols, ok, idx, CHUNK)
        tl.store(out_row + q, tl.full([], 1, tl.uint8), mask=ok)
        tl.store(out_row + r, tl.full([], 0, tl.uint8), mask=ok)
        swaps += ok.to(tl.int32)
        alive = ok
        tl.debug_barrier()  # the mask and g just stored are read by every thread next cycle
    tl.store(swaps_ptr + row, swaps)


def swap_refine(weight, M, g, src, out, swaps, max_cycles, prune_m, chunk, num_warps, qb, rb):
    """Launch over rows. weight (rows, cols) fp32/fp16/bf16; M (cols, cols) fp32/fp64 symmetric;
    g (rows, cols) fp64 = D0 @ M, updated in place; src/out (rows, cols) uint8 (src may be out);
    swaps (rows,) int32; prune_m 0 = unstructured."""
    rows, cols = weight.shape
    nm = prune_m > 0
    _swap_kernel[(rows,)](
        weight_arg(weight), M, g, src, out, swaps, cols, max_cycles,
        NM=nm, PRUNE_M=max(prune_m, 1), M_POW2=triton.next_power_of_2(max(prune_m, 1)),
        CHUNK=chunk, QB=qb, RB=rb, num_warps=num_warps, enable_fp_fusion=False)
