"""The fused per-row DSnoT refinement (spec §3, contract "The swap loop"), one program per row.

Per row, in one program:
  1. a lane pass: ``err`` (float32) and, for ``objective == 1``, ``e`` (float64) as the contract's
     256 lane partials plus pairwise tree, over the initially pruned columns; the initial mask is
     copied into the output on the way (from the caller's mask, or onto itself);
  2. candidate selection without sorting: the four candidate lists of the contract ("Orders":
     ``hi``, ``lo``, and unstructured ``plo``, ``phi``) are kept as a tournament over the row's
     CHUNK-column chunks: for each list, the best not-yet-taken member of every chunk. One sweep
     builds it; taking a list's next candidate is a max over the chunk bests, then a rescan of that
     one chunk. So the swap loop touches only the candidates it takes (at most ``max_cycle_time``
     per list) and costs O(cols + cycles * CHUNK) per row;
  3. the swap loop (N:M takes ``q`` from ``r``'s group, M loads), then a final pass that turns the
     working codes into the bool mask.

Every list is a max in a "flipped" composite key ``v = s * ((ord(x) << 32) | col)``: ``hi`` takes
the largest ``(key, col)`` (s = 1); ``lo`` the smallest key and ``plo``/``phi`` the smallest
``(wanda, col)`` (s = -1). A composite key is never KEY_MIN, so ``-key`` cannot overflow and KEY_MIN
means "no member". Within a list, the members not yet taken are exactly those below the last
taken ``v``, which is why a rescan needs no other state.

Working codes in ``out`` (uint8) while the row runs: 0 kept, 1 pruned (as initially), 2 initially
kept and now pruned (``q``), 3 initially pruned and now regrown (``r``). Bit 0 is the initial mask,
which defines every candidate list; code 2 marks an N:M ``q`` already chosen.
"""
import triton
import triton.language as tl

from dsnot_kernels.triton._common import (KEY_MAX, KEY_MIN, composite_key, dm_at, key_column,
                                          load_w, metric_at, pair_tree_256, sign_of, wanda_at,
                                          weight_arg)


@triton.jit
def _growth_values(w_row, smr_ptr, varp_ptr, out_row, offs, m, go_hi, div):
    """Flipped keys of the ``hi`` (``go_hi``) or ``lo`` list at ``offs``; KEY_MIN off the list.

    Members: initially pruned with growth key ``dm / var**p`` > 0 (hi) or < 0 (lo); NaN never."""
    init_pruned = (tl.load(out_row + offs, mask=m, other=0) & 1) == 1
    dm = dm_at(w_row, smr_ptr, offs, m)
    key = dm
    if div:  # p != 0 (runtime flag)
        key = tl.math.div_rn(dm, tl.load(varp_ptr + offs, mask=m, other=1.0))
    member = m & init_pruned & tl.where(go_hi, key > 0, key < 0)
    flip = tl.where(go_hi, 1, -1).to(tl.int64)
    return tl.where(member, composite_key(key, offs) * flip, KEY_MIN)


@triton.jit
def _prune_values(w_row, smr_ptr, sqrt_s_ptr, out_row, offs, m, use_phi):
    """Flipped keys of the ``phi`` (``use_phi``) or ``plo`` list at ``offs``; KEY_MIN off the list.

    Members: initially kept with ``dm > 0`` (phi) or ``dm < 0`` (plo), by ``(wanda, col)`` ascending."""
    init_kept = (tl.load(out_row + offs, mask=m, other=1) & 1) == 0
    dm = dm_at(w_row, smr_ptr, offs, m)
    member = m & init_kept & tl.where(use_phi, dm > 0, dm < 0)
    return tl.where(member, -composite_key(wanda_at(w_row, sqrt_s_ptr, offs, m), offs), KEY_MIN)


@triton.jit
def _chunk_best(values, limit):
    """The largest of ``values`` below ``limit`` (KEY_MIN if none)."""
    return tl.max(tl.where(values < limit, values, KEY_MIN), axis=0)


@triton.jit
def _tournament(build, w_row, smr_ptr, varp_ptr, sqrt_s_ptr, out_row, idx, chunk_ids, cols, div,
                NM: tl.constexpr, CHUNK: tl.constexpr, N_CHUNKS: tl.constexpr):
    """The best member of each chunk for the lists hi, lo, plo, phi ((N_CHUNKS,) int64 keys each;
    KEY_MIN everywhere unless ``build``; N:M builds no prune lists)."""
    top_hi = tl.full([N_CHUNKS], KEY_MIN, tl.int64)
    top_lo = top_hi
    top_plo = top_hi
    top_phi = top_hi
    if build:
        for c in range(0, tl.cdiv(cols, CHUNK)):
            offs = c * CHUNK + idx
            m = offs < cols
            here = chunk_ids == c
            top_hi = tl.where(here, _chunk_best(
                _growth_values(w_row, smr_ptr, varp_ptr, out_row, offs, m, True, div), KEY_MAX), top_hi)
            top_lo = tl.where(here, _chunk_best(
                _growth_values(w_row, smr_ptr, varp_ptr, out_row, offs, m, False, div), KEY_MAX), top_lo)
            if not NM:
                top_phi = tl.where(here, _chunk_best(
                    _prune_values(w_row, smr_ptr, sqrt_s_ptr, out_row, offs, m, True), KEY_MAX), top_phi)
                top_plo = tl.where(here, _chunk_best(
                    _prune_values(w_row, smr_ptr, sqrt_s_ptr, out_row, offs, m, False), KEY_MAX), top_plo)
    return top_hi, top_lo, top_plo, top_phi


@triton.jit(do_not_specialize=["max_cycles", "same_sign", "has_metric", "div"])
def _refine_kernel(w_ptr, smr_ptr, varp_ptr, sqrt_s_ptr, metric_ptr, mean_ptr, var_ptr,
                   src_ptr, out_ptr, swaps_ptr, cols, max_cycles, thr, same_sign, has_metric, div,
                   NM: tl.constexpr, PRUNE_M: tl.constexpr, M_POW2: tl.constexpr,
                   OBJECTIVE: tl.constexpr, CHUNK: tl.constexpr, N_CHUNKS: tl.constexpr):
    """Row ``program_id(0)``: reads ``src`` (uint8 0/1 initial mask), writes ``out`` (uint8 0/1,
    True = pruned) and ``swaps[row]`` (int32). ``varp`` = ``var**p`` (fp32, used when ``div``).
    ``same_sign``, ``has_metric``, ``div`` are int flags (runtime: fewer compiled variants);
    ``N_CHUNKS`` >= cdiv(cols, CHUNK), a power of two."""
    row = tl.program_id(0).to(tl.int64)
    w_row = w_ptr + row * cols
    metric_row = metric_ptr + row * cols
    src_row = src_ptr + row * cols
    out_row = out_ptr + row * cols
    lanes = tl.arange(0, 256)
    idx = tl.arange(0, CHUNK)
    chunk_ids = tl.arange(0, N_CHUNKS)

    # 1. err (and e) in the contract's fixed order: lane l adds columns l, l+256, ... in turn
    acc = tl.zeros([256], tl.float32)
    acc_e = tl.zeros([256], tl.float64)
    for base in range(0, cols, 256):
        offs = base + lanes
        m = offs < cols
        code = tl.load(src_row + offs, mask=m, other=0)
        tl.store(out_row + offs, code, mask=m)  # a no-op when src is out
        pruned = code == 1
        acc += tl.where(pruned, dm_at(w_row, smr_ptr, offs, m), 0.0)
        if OBJECTIVE == 1:
            w64 = load_w(w_row + offs, m).to(tl.float64)
            a = w64 * tl.load(mean_ptr + offs, mask=m, other=0.0).to(tl.float64)
            acc_e += tl.where(pruned, a, 0.0)
    err = pair_tree_256(acc)
    e = pair_tree_256(acc_e)
    sign0 = sign_of(err)
    tl.debug_barrier()  # the copied codes are read by other threads below

    # 2. the tournament: best member of each chunk, per list (built only if a cycle can run)
    top_hi, top_lo, top_plo, top_phi = _tournament(
        (max_cycles > 0) & (tl.abs(err) > thr), w_row, smr_ptr, varp_ptr, sqrt_s_ptr, out_row, idx,
        chunk_ids, cols, div, NM, CHUNK, N_CHUNKS)

    # 3. the swap loop (contract "The swap loop" / objective 1)
    swaps = tl.sum(tl.zeros([2], tl.int32), axis=0)
    alive = swaps == 0
    cycle = swaps
    while alive & (cycle < max_cycles) & (tl.abs(err) > thr):
        cycle += 1
        go_hi = err > 0
        use_phi = err < 0
        # r = next(hi) if err > 0 else next(lo); taking it rescans its chunk below it
        tops = tl.where(go_hi, top_hi, top_lo)
        r_v = tl.max(tops, axis=0)
        r_ok = r_v != KEY_MIN
        r = key_column(tl.where(r_ok, r_v, 0) * tl.where(go_hi, 1, -1).to(tl.int64))
        c = r // CHUNK
        offs = c * CHUNK + idx
        nxt = _chunk_best(_growth_values(w_row, smr_ptr, varp_ptr, out_row, offs, offs < cols,
                                         go_hi, div), r_v)
        tops = tl.where((chunk_ids == c) & r_ok, nxt, tops)
        top_hi = tl.where(go_hi, tops, top_hi)
        top_lo = tl.where(go_hi, top_lo, tops)
        if NM:
            # q: the kept, not yet chosen column of r's group with the smallest (metric, col)
            g = (r - r % PRUNE_M) + tl.arange(0, M_POW2)
            gm = tl.arange(0, M_POW2) < PRUNE_M
            gcode = tl.load(out_row + g, mask=gm, other=1)
            gmet = metric_at(w_row, sqrt_s_ptr, metric_row, g, gm, has_metric)
            cand = gm & (gcode == 0) & (gmet < float("inf"))
            q_key = tl.min(tl.where(cand, composite_key(gmet, g), KEY_MAX), axis=0)
            q_ok = q_key != KEY_MAX
            q = key_column(tl.where(q_ok, q_key, 0))
        else:
            # q = next(phi) if err < 0 else next(plo)
            ptops = tl.where(use_phi, top_phi, top_plo)
            q_v = tl.max(ptops, axis=0)
            q_ok = q_v != KEY_MIN
            q = key_column(-tl.where(q_ok, q_v, 0))
            cq = q // CHUNK
            offs = cq * CHUNK + idx
            nxt = _chunk_best(_prune_values(w_row, smr_ptr, sqrt_s_ptr, out_row, offs, offs < cols,
                                            use_phi), q_v)
            ptops = tl.where((chunk_ids == cq) & q_ok, nxt, ptops)
            top_phi = tl.where(use_phi, ptops, top_phi)
            top_plo = tl.where(use_phi, top_plo, ptops)
        dq = load_w(w_row + q, q >= 0) * tl.load(smr_ptr + q)
        dr = load_w(w_row + r, r >= 0) * tl.load(smr_ptr + r)
        after = (err + dq) - dr
        if OBJECTIVE == 0:
            ok = r_ok & q_ok
            ok = ok & ((same_sign == 0) | (sign_of(after) == sign0))
            alive = ok
        else:
            wq = load_w(w_row + q, q >= 0).to(tl.float64)
            wr = load_w(w_row + r, r >= 0).to(tl.float64)
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

    # 4. codes -> mask: pruned = 1 (kept pruned) or 2 (newly pruned)
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
        weight_arg(weight), sum_metric_row, varp, sqrt_scaler,
        metric if metric is not None else sum_metric_row,
        mean if mean is not None else sum_metric_row, var, src, out, swaps, cols, max_cycles, thr,
        int(bool(same_sign)), int(metric is not None), int(bool(div)),
        NM=nm, PRUNE_M=max(prune_m, 1), M_POW2=triton.next_power_of_2(max(prune_m, 1)),
        OBJECTIVE=int(objective), CHUNK=chunk, N_CHUNKS=n_chunks(cols, chunk),
        num_warps=num_warps, enable_fp_fusion=False)


def n_chunks(cols: int, chunk: int) -> int:
    """The tournament's size: chunks per row, rounded up to a power of two."""
    return triton.next_power_of_2(triton.cdiv(cols, chunk))
