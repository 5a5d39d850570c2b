"""The fused per-row DSnoT refinement (spec §3, contract "The swap loop"), one program per row.

Per row, in one program:
  1. a lane pass: ``err`` (float32) and, for ``objective == 1``, ``e`` (float64) as the contract's
     256 lane partials plus pairwise tree, over the initially pruned columns; the initial mask is
     copied into the output on the way when it comes from the caller;
  2. the swap loop: each cycle takes the next growth candidate ``r`` (``hi``: max composite
     ``(key, col)`` below the cursor; ``lo``: min above it) and, unstructured, the next prune
     candidate ``q`` (``plo``/``phi``: min composite ``(wanda, col)`` above the cursor), all in a
     single sweep over the row: a cursor is its last composite key, so only the consumed
     candidates are ever selected (no sort; O(cols) per cycle, at most ``max_cycle_time`` cycles).
     N:M takes ``q`` from ``r``'s group (M loads);
  3. a final pass that turns the working codes into the bool mask.

Working codes in ``out`` (uint8) while the row runs: 0 kept, 1 pruned (as initially), 2 initially
kept and now pruned (``q``), 3 initially pruned and now regrown (``r``). Bit 0 is the initial mask,
which defines every candidate list; code 2 marks an N:M ``q`` already chosen.
"""
import triton
import triton.language as tl

from dsnot_kernels.triton._common import (KEY_MAX, KEY_MIN, composite_key, dm_at, key_column,
                                          metric_at, pair_tree_256, sign_of, wanda_at)


@triton.jit
def _refine_kernel(w_ptr, smr_ptr, varp_ptr, sqrt_s_ptr, metric_ptr, mean_ptr, var_ptr,
                   src_ptr, out_ptr, swaps_ptr, cols, max_cycles, thr,
                   NM: tl.constexpr, PRUNE_M: tl.constexpr, M_POW2: tl.constexpr,
                   SAME_SIGN: tl.constexpr, OBJECTIVE: tl.constexpr, HAS_METRIC: tl.constexpr,
                   DIV: tl.constexpr, COPY_SRC: tl.constexpr, CHUNK: tl.constexpr):
    """Row ``program_id(0)``: reads ``src`` (uint8 0/1 initial mask), writes ``out`` (uint8 0/1,
    True = pruned) and ``swaps[row]`` (int32). ``varp`` = ``var**p`` (fp32, used when ``DIV``)."""
    row = tl.program_id(0).to(tl.int64)
    w_row = w_ptr + row * cols
    metric_row = metric_ptr + row * cols
    src_row = src_ptr + row * cols
    out_row = out_ptr + row * cols
    lanes = tl.arange(0, 256)
    idx = tl.arange(0, CHUNK)

    # 1. err (and e) in the contract's fixed order: lane l adds columns l, l+256, ... in turn
    acc = tl.zeros([256], tl.float32)
    acc_e = tl.zeros([256], tl.float64)
    for base in range(0, cols, 256):
        offs = base + lanes
        m = offs < cols
        code = tl.load(src_row + offs, mask=m, other=0)
        if COPY_SRC:
            tl.store(out_row + offs, code, mask=m)
        pruned = code == 1
        acc += tl.where(pruned, dm_at(w_row, smr_ptr, offs, m), 0.0)
        if OBJECTIVE == 1:
            w64 = tl.load(w_row + offs, mask=m, other=0.0).to(tl.float32).to(tl.float64)
            a = w64 * tl.load(mean_ptr + offs, mask=m, other=0.0).to(tl.float64)
            acc_e += tl.where(pruned, a, 0.0)
    err = pair_tree_256(acc)
    e = pair_tree_256(acc_e)
    sign0 = sign_of(err)
    tl.debug_barrier()  # the copied codes are read by other threads below

    # 2. the swap loop. Growth cursors live in a "flipped" domain so both are a max below a limit:
    #    hi: v = key, lo: v = -key (composite keys are never KEY_MIN, so -key cannot overflow).
    hi_lim = tl.max(tl.full([2], KEY_MAX, tl.int64), axis=0)
    lo_lim = hi_lim
    plo_last = tl.min(tl.full([2], KEY_MIN, tl.int64), axis=0)  # prune cursors: min above last
    phi_last = plo_last
    swaps = tl.sum(tl.zeros([2], tl.int32), axis=0)
    alive = swaps == 0
    cycle = swaps
    while alive & (cycle < max_cycles) & (tl.abs(err) > thr):
        cycle += 1
        go_hi = err > 0
        use_phi = err < 0
        r_lim = tl.where(go_hi, hi_lim, lo_lim)
        flip = tl.where(go_hi, 1, -1).to(tl.int64)
        q_last = tl.where(use_phi, phi_last, plo_last)
        r_best = KEY_MIN + tl.zeros([CHUNK], tl.int64)
        q_best = KEY_MAX + tl.zeros([CHUNK], tl.int64)
        for base in range(0, cols, CHUNK):
            offs = base + idx
            m = offs < cols
            init_pruned = (tl.load(out_row + offs, mask=m, other=0) & 1) == 1
            dm = dm_at(w_row, smr_ptr, offs, m)
            if DIV:
                key = tl.math.div_rn(dm, tl.load(varp_ptr + offs, mask=m, other=1.0))
            else:
                key = dm
            grow = m & init_pruned & tl.where(go_hi, key > 0, key < 0)  # NaN keys never grow
            v = composite_key(key, offs) * flip
            r_best = tl.maximum(r_best, tl.where(grow & (v < r_lim), v, KEY_MIN))
            if not NM:
                shrink = m & (~init_pruned) & tl.where(use_phi, dm > 0, dm < 0)
                u = composite_key(wanda_at(w_row, sqrt_s_ptr, offs, m), offs)
                q_best = tl.minimum(q_best, tl.where(shrink & (u > q_last), u, KEY_MAX))
        r_key = tl.max(r_best, axis=0)
        r_ok = r_key != KEY_MIN
        hi_lim = tl.where(go_hi & r_ok, r_key, hi_lim)
        lo_lim = tl.where((~go_hi) & r_ok, r_key, lo_lim)
        r = key_column(tl.where(r_ok, r_key, 0) * flip)
        if NM:
            # q: the kept, not yet chosen column of r's group with the smallest (metric, col)
            g = (r - r % PRUNE_M) + tl.arange(0, M_POW2)
            gm = tl.arange(0, M_POW2) < PRUNE_M
            gcode = tl.load(out_row + g, mask=gm, other=1)
            gmet = metric_at(w_row, sqrt_s_ptr, metric_row, g, gm, HAS_METRIC)
            cand = gm & (gcode == 0) & (gmet < float("inf"))
            q_key = tl.min(tl.where(cand, composite_key(gmet, g), KEY_MAX), axis=0)
        else:
            q_key = tl.min(q_best, axis=0)
            phi_last = tl.where(use_phi & (q_key != KEY_MAX), q_key, phi_last)
            plo_last = tl.where((~use_phi) & (q_key != KEY_MAX), q_key, plo_last)
        q_ok = q_key != KEY_MAX
        q = key_column(tl.where(q_ok, q_key, 0))
        dq = (tl.load(w_row + q).to(tl.float32)) * tl.load(smr_ptr + q)
        dr = (tl.load(w_row + r).to(tl.float32)) * tl.load(smr_ptr + r)
        after = (err + dq) - dr
        if OBJECTIVE == 0:
            ok = r_ok & q_ok
            if SAME_SIGN:
                ok = ok & (sign_of(after) == sign0)
            alive = ok
        else:
            wq = tl.load(w_row + q).to(tl.float32).to(tl.float64)
            wr = tl.load(w_row + r).to(tl.float32).to(tl.float64)
            a_q = wq * tl.load(mean_ptr + q).to(tl.float64)
            a_r = wr * tl.load(mean_ptr + r).to(tl.float64)
            b_q = (wq * wq) * tl.load(var_ptr + q).to(tl.float64)
            b_r = (wr * wr) * tl.load(var_ptr + r).to(tl.float64)
            t = (e + a_q) - a_r
            delta = ((t * t - e * e) + b_q) - b_r
            alive = r_ok & (q_ok | NM)  # an N:M group without q only rejects the pair
            ok = alive & q_ok & (delta < 0)
            e = tl.where(ok, t, e)
        tl.store(out_row + q, tl.full([], 2, tl.uint8), mask=ok)
        tl.store(out_row + r, tl.full([], 3, tl.uint8), mask=ok)
        err = tl.where(ok, after, err)
        swaps += ok.to(tl.int32)
        tl.debug_barrier()  # the codes just stored are read by every thread next cycle

    # 3. codes -> mask: pruned = 1 (kept pruned) or 2 (newly pruned)
    for base in range(0, cols, CHUNK):
        offs = base + idx
        m = offs < cols
        code = tl.load(out_row + offs, mask=m, other=0)
        tl.store(out_row + offs, ((code == 1) | (code == 2)).to(tl.uint8), mask=m)
    tl.store(swaps_ptr + row, swaps)


def refine(weight, sum_metric_row, varp, sqrt_scaler, metric, mean, var, src, out, swaps,
           max_cycles, thr, prune_m, same_sign, objective, div, chunk, num_warps):
    """Launch over rows. weight (rows, cols) fp32/fp16/bf16; sum_metric_row, varp, sqrt_scaler
    (= sqrt(scaler_row)), var, mean (cols,) fp32 (mean only for objective 1); metric (rows, cols)
    fp32 or None; src (rows, cols) uint8 0/1 initial mask (may be ``out``); out (rows, cols)
    uint8; swaps (rows,) int32; thr the float32 threshold; prune_m 0 for unstructured."""
    rows, cols = weight.shape
    nm = prune_m > 0
    _refine_kernel[(rows,)](
        weight, sum_metric_row, varp, sqrt_scaler, metric if metric is not None else weight,
        mean if mean is not None else sum_metric_row, var, src, out, swaps, cols, max_cycles, thr,
        NM=nm, PRUNE_M=max(prune_m, 1), M_POW2=triton.next_power_of_2(max(prune_m, 1)),
        SAME_SIGN=bool(same_sign), OBJECTIVE=int(objective), HAS_METRIC=metric is not None,
        DIV=bool(div), COPY_SRC=src.data_ptr() != out.data_ptr(), CHUNK=chunk,
        num_warps=num_warps, enable_fp_fusion=False)
