"""Objectives 2 ("cov") and 3 ("cov_window") as one fused Triton kernel, one program per row.

docs/KERNEL_CONTRACT.md "Objective 2" and "Objective 3". The caller gives the initial mask (the
selection kernels of this package) and ``g = D0 @ M`` (``objectives.cov_window.cov_g0``, the one shared
matmul), in float64, (rows, cols); the kernel updates ``g`` in place, eagerly: after an accepted
swap (prune q, regrow r) every ``g[j] = g[j] + (w_q M[q, j] - w_r M[r, j])``, the reference's
float64 operations in its order (``enable_fp_fusion=False``: no FMA). ``M`` is read from global
memory (through L2) in its own dtype, float32 or float64, and widened exactly per element.

Per row, in one program:
  1. a lane pass: ``err`` (float32, the contract's 256 lanes + pairwise tree) over the initially
     pruned columns; the initial mask is copied into the output on the way;
  2. the candidate lists (growth ``hi``/``lo``, unstructured prune ``plo``/``phi``) as the
     tournament of ``refine.py``: the best member of each CHUNK-column chunk; taking a list's next
     entry is a max over the chunk bests and one chunk rescan (no sort);
  3. objective 2: the cycles of the reference (one pair per cycle, the next of each cursor, N:M
     ``q`` the smallest-metric kept column of ``r``'s group); objective 3: per list a window of
     ``K`` slots (their columns in the ``slots`` scratch, (rows, 4, K) int32, -1 = empty), filled
     from the tournament; each cycle scores every pair of the two windows the sign of ``err``
     picks, in QB x RB tiles (the cross terms ``((2 w_q) w_r) M_qr`` are recomputed from ``M``,
     not cached), takes the first minimum in row-major (q slot, r slot) order (N:M: (r slot,
     group position)), and refills the used slots from the tournament;
  4. the working codes (0 kept, 1 pruned, 2 newly pruned q, 3 regrown r: bit 0 is the initial
     mask, which defines every list) become the bool mask.
"""
import triton
import triton.language as tl

from dsnot_kernels.triton._common import (KEY_MAX, KEY_MIN, composite_key, dm_at, key_column,
                                          load_w, metric_at, pair_tree_256, weight_arg)
from dsnot_kernels.triton.refine import _chunk_best, _growth_values, _prune_values, _tournament

# list ids in the slots scratch
HI, LO, PLO, PHI = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2), tl.constexpr(3)


@triton.jit
def _take_growth(tops, go_hi, w_row, smr_ptr, varp_ptr, out_row, idx, chunk_ids, cols, div,
                 CHUNK: tl.constexpr):
    """Next entry of ``hi`` (``go_hi``) or ``lo``: (column or -1, updated chunk bests)."""
    v = tl.max(tops, axis=0)
    ok = v != KEY_MIN
    col = key_column(tl.where(ok, v, 0) * tl.where(go_hi, 1, -1).to(tl.int64))
    c = col // CHUNK
    offs = c * CHUNK + idx
    nxt = _chunk_best(_growth_values(w_row, smr_ptr, varp_ptr, out_row, offs, offs < cols, go_hi,
                                     div), v)
    return tl.where(ok, col, -1), tl.where((chunk_ids == c) & ok, nxt, tops)


@triton.jit
def _take_prune(tops, use_phi, w_row, smr_ptr, sqrt_s_ptr, out_row, idx, chunk_ids, cols,
                CHUNK: tl.constexpr):
    """Next entry of ``phi`` (``use_phi``) or ``plo``: (column or -1, updated chunk bests)."""
    v = tl.max(tops, axis=0)
    ok = v != KEY_MIN
    col = key_column(-tl.where(ok, v, 0))
    c = col // CHUNK
    offs = c * CHUNK + idx
    nxt = _chunk_best(_prune_values(w_row, smr_ptr, sqrt_s_ptr, out_row, offs, offs < cols,
                                    use_phi), v)
    return tl.where(ok, col, -1), tl.where((chunk_ids == c) & ok, nxt, tops)


@triton.jit
def _m_at(m_ptr, q, r, cols, m):
    """``M[q, r]`` widened to float64 (0 where ``m`` is False); int64 offsets (cols² > 2**31)."""
    return tl.load(m_ptr + q.to(tl.int64) * cols + r, mask=m, other=0.0).to(tl.float64)


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


@triton.jit
def _g_update(g_row, m_ptr, q, r, wq, wr, cols, ok, idx, CHUNK: tl.constexpr):
    """``g[j] = g[j] + (w_q M[q, j] - w_r M[r, j])`` for every column (stores only if ``ok``)."""
    mq_row = m_ptr + q.to(tl.int64) * cols
    mr_row = m_ptr + r.to(tl.int64) * cols
    for base in range(0, cols, CHUNK):
        offs = base + idx
        m = tl.where(ok, offs < cols, False)  # (a block & a scalar bool trips the interpreter)
        mq = tl.load(mq_row + offs, mask=m, other=0.0).to(tl.float64)
        mr = tl.load(mr_row + offs, mask=m, other=0.0).to(tl.float64)
        gv = tl.load(g_row + offs, mask=m, other=0.0)
        tl.store(g_row + offs, gv + (wq * mq - wr * mr), mask=m)


@triton.jit
def _tile_min(d, flat, best, best_flat):
    """Fold a tile of deltas into the running first minimum (value, row-major pair index)."""
    dmin = tl.min(d)
    fmin = tl.min(tl.where(d == dmin, flat, 2147483647))
    better = (dmin < best) | ((dmin == best) & (fmin < best_flat))
    return tl.where(better, dmin, best), tl.where(better, fmin, best_flat)


@triton.jit(do_not_specialize=["max_cycles", "has_metric", "div", "K"])
def _cov_kernel(w_ptr, smr_ptr, varp_ptr, sqrt_s_ptr, metric_ptr, m_ptr, g_ptr, slots_ptr,
                src_ptr, out_ptr, swaps_ptr, cols, K, max_cycles, thr, has_metric, div,
                WINDOW: tl.constexpr, NM: tl.constexpr, PRUNE_M: tl.constexpr,
                M_POW2: tl.constexpr, CHUNK: tl.constexpr, N_CHUNKS: tl.constexpr,
                QB: tl.constexpr, RB: tl.constexpr):
    """Row ``program_id(0)``. ``src`` uint8 0/1 initial mask (may be ``out``); ``out`` uint8 0/1
    (True = pruned); ``swaps[row]`` int32; ``g`` (rows, cols) float64, updated in place; ``M``
    (cols, cols) float32 or float64, symmetric; ``slots`` (rows, 4, K) int32 scratch (WINDOW
    only); ``K`` the window (WINDOW only, K * K < 2**31); ``varp`` = var**p (used when ``div``)."""
    row = tl.program_id(0).to(tl.int64)
    w_row = w_ptr + row * cols
    metric_row = metric_ptr + row * cols
    src_row = src_ptr + row * cols
    out_row = out_ptr + row * cols
    g_row = g_ptr + row * cols
    slots_row = slots_ptr + row * 4 * K
    lanes = tl.arange(0, 256)
    idx = tl.arange(0, CHUNK)
    chunk_ids = tl.arange(0, N_CHUNKS)
    inf = float("inf")

    # 1. err in the contract's fixed order; the initial mask copied into out
    acc = tl.zeros([256], tl.float32)
    for base in range(0, cols, 256):
        offs = base + lanes
        m = offs < cols
        code = tl.load(src_row + offs, mask=m, other=0)
        tl.store(out_row + offs, code, mask=m)
        acc += tl.where(code == 1, dm_at(w_row, smr_ptr, offs, m), 0.0)
    err = pair_tree_256(acc)
    tl.debug_barrier()

    # 2. the tournament, and (objective 3) the windows filled from it
    build = (max_cycles > 0) & (tl.abs(err) > thr)
    top_hi, top_lo, top_plo, top_phi = _tournament(build, w_row, smr_ptr, varp_ptr, sqrt_s_ptr, out_row,
                                                   idx, chunk_ids, cols, div, NM, CHUNK, N_CHUNKS)
    if build:
        if WINDOW:
            for s in range(0, K):
                col, top_hi = _take_growth(top_hi, True, w_row, smr_ptr, varp_ptr, out_row, idx,
                                           chunk_ids, cols, div, CHUNK)
                tl.store(slots_row + HI * K + s, col)
                col, top_lo = _take_growth(top_lo, False, w_row, smr_ptr, varp_ptr, out_row, idx,
                                           chunk_ids, cols, div, CHUNK)
                tl.store(slots_row + LO * K + s, col)
                if not NM:
                    col, top_plo = _take_prune(top_plo, False, w_row, smr_ptr, sqrt_s_ptr, out_row,
                                               idx, chunk_ids, cols, CHUNK)
                    tl.store(slots_row + PLO * K + s, col)
                    col, top_phi = _take_prune(top_phi, True, w_row, smr_ptr, sqrt_s_ptr, out_row,
                                               idx, chunk_ids, cols, CHUNK)
                    tl.store(slots_row + PHI * K + s, col)
            tl.debug_barrier()

    # 3. the cycles
    swaps = tl.sum(tl.zeros([2], tl.int32), axis=0)
    alive = swaps == 0
    cycle = swaps
    while alive & (cycle < max_cycles) & (tl.abs(err) > thr):
        cycle += 1
        go_hi = err > 0
        use_phi = err < 0
        tops = tl.where(go_hi, top_hi, top_lo)
        ptops = tl.where(use_phi, top_phi, top_plo)
        if WINDOW:
            g_slots = slots_row + tl.where(go_hi, HI, LO) * K
            p_slots = slots_row + tl.where(go_hi, PLO, PHI) * K
            best = tl.sum(tl.zeros([2], tl.float64), axis=0) + inf
            best_flat = tl.sum(tl.zeros([2], tl.int32), axis=0) + 2147483647
            if NM:
                t = tl.arange(0, M_POW2)
                for rb in range(0, K, RB):
                    rs = rb + tl.arange(0, RB)
                    r = tl.load(g_slots + rs, mask=rs < K, other=-1)
                    r_ok = r >= 0
                    rc = tl.where(r_ok, r, 0)
                    wr, b = _side(w_row, g_row, m_ptr, rc, r_ok, cols, False)
                    q = (rc - rc % PRUNE_M)[:, None] + t[None, :]
                    q_ok = r_ok[:, None] & (t < PRUNE_M)[None, :]
                    q_ok = q_ok & (tl.load(out_row + q, mask=q_ok, other=1) == 0)
                    wq, a = _side(w_row, g_row, m_ptr, q, q_ok, cols, True)
                    cross = ((2.0 * wq) * wr[:, None]) * _m_at(m_ptr, q, rc[:, None], cols, q_ok)
                    d = tl.where(q_ok, (a - cross) + b[:, None], inf)
                    best, best_flat = _tile_min(d, rs[:, None] * PRUNE_M + t[None, :], best,
                                                best_flat)
                ok = best < 0
                r = tl.load(g_slots + best_flat // PRUNE_M, mask=ok, other=0)
                q = r - r % PRUNE_M + best_flat % PRUNE_M
            else:
                for qb in range(0, K, QB):
                    qs = qb + tl.arange(0, QB)
                    q = tl.load(p_slots + qs, mask=qs < K, other=-1)
                    q_ok = q >= 0
                    qc = tl.where(q_ok, q, 0)
                    wq, a = _side(w_row, g_row, m_ptr, qc, q_ok, cols, True)
                    for rb in range(0, K, RB):
                        rs = rb + tl.arange(0, RB)
                        r = tl.load(g_slots + rs, mask=rs < K, other=-1)
                        r_ok = r >= 0
                        rc = tl.where(r_ok, r, 0)
                        wr, b = _side(w_row, g_row, m_ptr, rc, r_ok, cols, False)
                        pair = q_ok[:, None] & r_ok[None, :]
                        cross = ((2.0 * wq)[:, None] * wr[None, :]) * _m_at(
                            m_ptr, qc[:, None], rc[None, :], cols, pair)
                        d = tl.where(pair, (a[:, None] - cross) + b[None, :], inf)
                        best, best_flat = _tile_min(d, qs[:, None] * K + rs[None, :], best,
                                                    best_flat)
                ok = best < 0
                q_slot = best_flat // K
                r_slot = best_flat % K
                q = tl.load(p_slots + q_slot, mask=ok, other=0)
                r = tl.load(g_slots + r_slot, mask=ok, other=0)
            alive = ok
        else:
            # r = next(hi) if err > 0 else next(lo)
            r, tops = _take_growth(tops, go_hi, w_row, smr_ptr, varp_ptr, out_row, idx, chunk_ids,
                                   cols, div, CHUNK)
            r_ok = r >= 0
            r = tl.where(r_ok, r, 0)
            if NM:  # q: the kept, not yet chosen column of r's group with the smallest (metric, col)
                gcol = (r - r % PRUNE_M) + tl.arange(0, M_POW2)
                gm = tl.arange(0, M_POW2) < PRUNE_M
                gcode = tl.load(out_row + gcol, mask=gm, other=1)
                gmet = metric_at(w_row, sqrt_s_ptr, metric_row, gcol, gm, has_metric)
                cand = gm & (gcode == 0) & (gmet < inf)
                q_key = tl.min(tl.where(cand, composite_key(gmet, gcol), KEY_MAX), axis=0)
                q_ok = q_key != KEY_MAX
                q = key_column(tl.where(q_ok, q_key, 0))
            else:  # q = next(phi) if err < 0 else next(plo)
                q, ptops = _take_prune(ptops, use_phi, w_row, smr_ptr, sqrt_s_ptr, out_row, idx,
                                       chunk_ids, cols, CHUNK)
                q_ok = q >= 0
                q = tl.where(q_ok, q, 0)
            wq = load_w(w_row + q, q_ok).to(tl.float64)
            wr = load_w(w_row + r, r_ok).to(tl.float64)
            gq = tl.load(g_row + q)
            gr = tl.load(g_row + r)
            delta = (((((2.0 * wq) * gq - (2.0 * wr) * gr) + (wq * wq) * _m_at(m_ptr, q, q, cols, q_ok))
                      + (wr * wr) * _m_at(m_ptr, r, r, cols, r_ok))
                     - ((2.0 * wq) * wr) * _m_at(m_ptr, q, r, cols, q_ok & r_ok))
            if NM:  # an N:M group without q only rejects the pair
                alive = r_ok
            else:
                alive = r_ok & q_ok
            ok = alive & q_ok & (delta < 0)
        wq = load_w(w_row + q, ok).to(tl.float64)
        wr = load_w(w_row + r, ok).to(tl.float64)
        _g_update(g_row, m_ptr, q, r, wq, wr, cols, ok, idx, CHUNK)
        dq = dm_at(w_row, smr_ptr, q, ok)
        dr = dm_at(w_row, smr_ptr, r, ok)
        tl.store(out_row + q, tl.full([], 2, tl.uint8), mask=ok)
        tl.store(out_row + r, tl.full([], 3, tl.uint8), mask=ok)
        err = tl.where(ok, (err + dq) - dr, err)
        swaps += ok.to(tl.int32)
        tl.debug_barrier()  # codes and g just stored are read by every thread below
        if WINDOW:  # refill the used slots (N:M: only r's) from the tournament
            new_r, new_tops = _take_growth(tops, go_hi, w_row, smr_ptr, varp_ptr, out_row, idx,
                                           chunk_ids, cols, div, CHUNK)
            tops = tl.where(ok, new_tops, tops)
            if NM:
                tl.store(g_slots + best_flat // PRUNE_M, new_r, mask=ok)
            else:
                tl.store(g_slots + r_slot, new_r, mask=ok)
                new_q, new_ptops = _take_prune(ptops, use_phi, w_row, smr_ptr, sqrt_s_ptr, out_row,
                                               idx, chunk_ids, cols, CHUNK)
                ptops = tl.where(ok, new_ptops, ptops)
                tl.store(p_slots + q_slot, new_q, mask=ok)
            tl.debug_barrier()
        top_hi = tl.where(go_hi, tops, top_hi)
        top_lo = tl.where(go_hi, top_lo, tops)
        top_phi = tl.where(use_phi, ptops, top_phi)
        top_plo = tl.where(use_phi, top_plo, ptops)

    # 4. codes -> mask: pruned = 1 (kept pruned) or 2 (newly pruned)
    for base in range(0, cols, CHUNK):
        offs = base + idx
        m = offs < cols
        code = tl.load(out_row + offs, mask=m, other=0)
        tl.store(out_row + offs, ((code == 1) | (code == 2)).to(tl.uint8), mask=m)
    tl.store(swaps_ptr + row, swaps)


def cov_refine(weight, sum_metric_row, varp, sqrt_scaler, metric, M, g, slots, src, out, swaps,
               max_cycles, thr, prune_m, window, div, chunk, num_warps, qb, rb):
    """Launch over rows. weight (rows, cols) fp32/fp16/bf16; sum_metric_row, varp, sqrt_scaler
    (cols,) fp32; metric (rows, cols) fp32 or None; M (cols, cols) fp32/fp64 symmetric; g (rows,
    cols) fp64 = D0 @ M, updated in place; slots (rows, 4, window) int32 scratch or None
    (window 0 = objective 2); src/out (rows, cols) uint8; swaps (rows,) int32."""
    from dsnot_kernels.triton.refine import n_chunks

    rows, cols = weight.shape
    nm = prune_m > 0
    _cov_kernel[(rows,)](
        weight_arg(weight), sum_metric_row, varp, sqrt_scaler,
        metric if metric is not None else sum_metric_row, M, g,
        slots if slots is not None else swaps, src, out, swaps, cols, int(window), max_cycles, thr,
        int(metric is not None), int(bool(div)),
        WINDOW=window > 0, NM=nm, PRUNE_M=max(prune_m, 1),
        M_POW2=triton.next_power_of_2(max(prune_m, 1)), CHUNK=chunk,
        N_CHUNKS=n_chunks(cols, chunk), QB=qb, RB=rb, num_warps=num_warps, enable_fp_fusion=False)
