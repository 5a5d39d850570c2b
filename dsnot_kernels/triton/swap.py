"""Objective 4 ("swap") as a fused Triton kernel, one program per row.

docs/KERNEL_CONTRACT.md "Objective 4". The caller gives the initial mask and ``g = D0 @ M``
(``objectives.cov_window.cov_g0``, float64, (rows, cols)), updated here in place exactly as objectives 2
and 3 (``cov._g_update``). Each cycle finds the pair (q kept now, r pruned now) of the row (N:M: q
and r in the same M-group) with the smallest contract float64
``delta = (A_q - ((2 w_q) w_r) M_qr) + B_r`` and applies it if it is < 0; ties: the lowest q, then
the lowest r. ``M`` is read from global memory (through L2) in its dtype, float32 or float64,
widened exactly per element.

Two searches (``SEARCH``), with the same result bit for bit:

* 1, the full scan: every pair, in QB x RB column tiles (N:M: QB q columns by their group), the
  first minimum of the pair index ``q * cols + r`` (int32: cols² < 2**31). O(cols²) reads of ``M``
  per cycle and row (O(cols · M) for N:M, which always takes this scan).
* 0, the bounded search (unstructured rows; the default), the CPU kernel's
  (csrc/cpu/refine_swap_cpu.cpp; its Cauchy-Schwarz envelope without sorting: see below). Each kept q carries a lower
  bound ``lb_q`` of every computed delta of its row of the pair matrix, in the float64 scratch
  ``lb`` (rows, cols) (-inf at the start: the first cycle scans every q). A cycle repeatedly takes
  the unscanned kept q with the smallest ``lb_q`` (ties: the lowest q) while ``lb_q < 0`` and
  ``lb_q <= best`` (the best delta found so far this cycle), scans its row exactly (one row of
  ``M``, CHUNK-column tiles: the first minimum, the lowest r), keeps the pair if its delta is below
  the best, or equal with a lower q, and replaces ``lb_q`` by that row's exact minimum less the
  slack; scanned columns are marked 2 in the working mask for the rest of the cycle. Every q left
  unscanned has ``lb_q > best`` (or >= 0), so none of its pairs reaches (or ties) the best: the
  search returns the full scan's pair. After an accepted swap (q*, r*), with ``L_q = lb_q - A_q``
  (a lower bound of ``min_r (B_r - C_qr)``, ``C_qr = ((2 w_q) w_r) M_qr``): B moves on the columns
  pruned before and after by ``ΔB_r`` (computed in the pass that updates g), so every
  ``L_q += min_r ΔB_r``; the newly pruned q* adds one pair per kept q (``C_{q q*}``, one row of
  ``M``: M is symmetric); the newly kept r* gets -inf; then ``lb_q = A_q + L_q`` with the new A.
  Every bound is lowered by a relative slack (``SLACK`` = 1e-10 of the row's scale: the largest
  |A|, |B| and |cross term|, non-decreasing), far above the float64 rounding of a delta (< 4·2⁻⁵³
  of it), so it bounds the COMPUTED delta. Per cycle: a few O(cols) passes plus one O(cols) row
  scan and one O(cols) selection per scanned q. The two passes of an accepted swap (the g update
and the bounds) run in CHUNK/2-column blocks: they hold a dozen float64 values per column, and
so the kernel stays at <= 80 registers (benchmarks/triton_resources.py).

Cauchy-Schwarz bound (CS_K > 1; the CPU kernel's z, from ``cs_factors``; off as there when a rho
is infinite, a diagonal negative or the scale >= 1e100): ``|C_qr| <= 2 a_q a_r``, ``a_j = |w_j| z_j``,
so ``min_r (B_r - C_qr) >= f(a_q)``, ``f(x) = min over pruned r of (B_r - 2 a_r x)``, concave and
non-increasing. At each cycle's start one pass evaluates f exactly at CS_K abscissae
``x_k = amax k / (CS_K - 1)`` (amax = max_j a_j, fixed per row), a second one bounds every kept
q by ``max(min_k chord_k(a_q), f(amax))`` (the chord of the interval holding a_q lies below f) and
takes ``lb_q = max(lb_q, (A_q + c) - slack)``, ``c`` that bound less ``2 SLACK (scale + |c| + max|f_k|)``.
No sorting; O(CS_K · cols) per cycle.

``out`` holds the working mask (0 kept, 1 pruned; 2 kept and scanned this cycle) and is the result
(0/1). ``pairs[row]`` (int64) counts the deltas computed (as the CPU kernel counts them: a scan of
q adds the pruned count, a swap's new pairs (q, q*) the kept count).
"""
import triton
import triton.language as tl

from dsnot_kernels.triton._common import load_w, weight_arg
from dsnot_kernels.triton.cov import _g_update, _m_at, _side, _tile_min

# Slack of every bound, relative to the row's scale (the CPU kernel's kSlack).
SLACK = tl.constexpr(1e-10)
# Abscissae of the Cauchy-Schwarz bound's chords (0: no such bound).
CS_K = 8


def cs_tile(chunk, cs_k):
    """Columns per (CB, CS_K) tile of the Cauchy-Schwarz passes."""
    return max(chunk // max(cs_k, 1), 16)


@triton.jit
def _select(lb_row, out_row, cols, idx, CHUNK: tl.constexpr):
    """The unscanned kept column (mask 0) with the smallest bound, ties the lowest: (lb, q)."""
    v = tl.sum(tl.zeros([2], tl.float64), axis=0) + float("inf")
    vq = tl.sum(tl.zeros([2], tl.int32), axis=0) + 2147483647
    for base in range(0, cols, CHUNK):
        offs = base + idx
        m = offs < cols
        cand = m & (tl.load(out_row + offs, mask=m, other=1) == 0)
        lb = tl.where(cand, tl.load(lb_row + offs, mask=cand, other=float("inf")), float("inf"))
        v, vq = _tile_min(lb, offs, v, vq)
    return v, vq


@triton.jit
def _row_scan(w_row, g_row, m_ptr, out_row, q, a, wq, cols, idx, CHUNK: tl.constexpr):
    """Row q of the pair matrix: the first minimum over the pruned r of
    ``(a - ((2 w_q) w_r) M_qr) + B_r``: (delta, r); (inf, -) if no r is pruned."""
    e = tl.sum(tl.zeros([2], tl.float64), axis=0) + float("inf")
    er = tl.sum(tl.zeros([2], tl.int32), axis=0) + 2147483647
    tq = 2.0 * wq
    for base in range(0, cols, CHUNK):
        r = base + idx
        rm = r < cols
        r_ok = rm & (tl.load(out_row + r, mask=rm, other=0) == 1)          # pruned now
        wr, b = _side(w_row, g_row, m_ptr, r, r_ok, cols, False)
        cross = (tq * wr) * _m_at(m_ptr, q, r, cols, r_ok)
        d = tl.where(r_ok, (a - cross) + b, float("inf"))
        e, er = _tile_min(d, r, e, er)
    return e, er


@triton.jit
def _swap_pass(w_row, g_row, m_ptr, lb_row, out_row, q, r, wq, wr, cols, scale, ok, idx,
               CHUNK: tl.constexpr):
    """The accepted swap (q, r) (stores only if ``ok``, but the scanned marks 2 -> 0 always):
    g updated as ``cov._g_update``; on the columns kept before, ``lb`` becomes ``L = lb - A``
    (old A) less the slack. Returns (min and max |.| of ``ΔB`` over the columns pruned before and
    after, max of |A| (kept after), |B| (pruned after) with the new g, B_q with the new g)."""
    inf = float("inf")
    mq_row = m_ptr + q.to(tl.int64) * cols
    mr_row = m_ptr + r.to(tl.int64) * cols
    dmin = tl.sum(tl.zeros([2], tl.float64), axis=0) + inf
    dmax = tl.sum(tl.zeros([2], tl.float64), axis=0)
    mx = tl.sum(tl.zeros([2], tl.float64), axis=0)
    pb = tl.sum(tl.zeros([2], tl.float64), axis=0) + inf
    for base in range(0, cols, CHUNK // 2):
        offs = base + idx
        m = offs < cols
        mo = tl.where(ok, m, False)  # (a block & a scalar bool trips the interpreter)
        o = tl.load(out_row + offs, mask=m, other=0)
        pruned = o == 1
        w = load_w(w_row + offs, m).to(tl.float64)
        mjj = _m_at(m_ptr, offs, offs, cols, m)
        g_old = tl.load(g_row + offs, mask=m, other=0.0)
        mq = tl.load(mq_row + offs, mask=mo, other=0.0).to(tl.float64)
        mr = tl.load(mr_row + offs, mask=mo, other=0.0).to(tl.float64)
        g_new = g_old + (wq * mq - wr * mr)
        tl.store(g_row + offs, g_new, mask=mo)
        b_old = (w * w) * mjj - (2.0 * w) * g_old
        b_new = (w * w) * mjj - (2.0 * w) * g_new
        a_old = (2.0 * w) * g_old + (w * w) * mjj
        a_new = (2.0 * w) * g_new + (w * w) * mjj
        both = m & pruned & (offs != r)
        db = b_new - b_old
        dmin = tl.minimum(dmin, tl.min(tl.where(both, db, inf)))
        dmax = tl.maximum(dmax, tl.max(tl.where(both, tl.abs(db), 0.0)))
        pruned_after = both | (offs == q)
        mx = tl.maximum(mx, tl.max(tl.where(m, tl.abs(tl.where(pruned_after, b_new, a_new)), 0.0)))
        pb = tl.minimum(pb, tl.min(tl.where(offs == q, b_new, inf)))
        kept = mo & (o != 1)
        lbv = tl.load(lb_row + offs, mask=kept, other=0.0)
        el = (lbv - a_old) - SLACK * (scale + tl.abs(lbv))
        tl.store(lb_row + offs, el, mask=kept)
        tl.store(out_row + offs, tl.zeros_like(o), mask=m & (o == 2))
    return dmin, dmax, mx, pb


@triton.jit
def _bound_pass(w_row, g_row, m_ptr, lb_row, out_row, q, wq, pb, dmin, peps, cols, scale, ok, idx,
                CHUNK: tl.constexpr):
    """After the swap (q newly pruned): per kept column ``L += dmin`` less the slack, the new pair
    with q, then ``lb = A + L`` less the slack (NaN -> -inf). Stores only if ``ok``."""
    mq_row = m_ptr + q.to(tl.int64) * cols
    for base in range(0, cols, CHUNK // 2):
        offs = base + idx
        m = offs < cols
        mo = tl.where(ok, m, False)
        kept = mo & (tl.load(out_row + offs, mask=mo, other=1) == 0)
        w, a = _side(w_row, g_row, m_ptr, offs, kept, cols, True)
        el = tl.load(lb_row + offs, mask=kept, other=0.0)
        moved = (el + dmin) - (peps + SLACK * tl.abs(el))
        pair = pb - ((2.0 * w) * wq) * tl.load(mq_row + offs, mask=kept, other=0.0).to(tl.float64)
        lo = pair - SLACK * (scale + tl.abs(pair))
        el = tl.where(moved < lo, moved, lo)
        lb = (a + el) - SLACK * (scale + tl.abs(el))
        lb = tl.where(lb == lb, lb, -float("inf"))
        tl.store(lb_row + offs, lb, mask=kept)

@triton.jit
def _cs_lines(w_row, g_row, m_ptr, z_ptr, out_row, amax, cols, CS_K: tl.constexpr, CB: tl.constexpr):
    """``f(x) = min over the pruned r of (B_r - (2 a_r) x)`` (a_r = |w_r| z_r) at the CS_K
    abscissae ``x_k = amax (k / (CS_K - 1))`` (x_0 = 0, x_{K-1} = amax exactly, non-decreasing),
    then its chords as lines ``y = c_k + s_k x`` (``s_k = (f(x_{k+1}) - f(x_k)) / (x_{k+1} - x_k)``,
    ``c_k = f(x_k) - x_k s_k``; +inf, 0 for k = K-1 and empty intervals). Returns (c, s, f(amax),
    max_k |f(x_k)|)."""
    k = tl.arange(0, CS_K)
    x = amax * (k.to(tl.float64) / (CS_K - 1))
    f = tl.zeros([CS_K], tl.float64) + float("inf")
    rr = tl.arange(0, CB)
    for base in range(0, cols, CB):
        r = base + rr
        rm = r < cols
        r_ok = rm & (tl.load(out_row + r, mask=rm, other=0) == 1)          # pruned now
        wr, b = _side(w_row, g_row, m_ptr, r, r_ok, cols, False)
        ar2 = 2.0 * (tl.abs(wr) * tl.load(z_ptr + r, mask=r_ok, other=0.0))
        v = b[:, None] - ar2[:, None] * x[None, :]
        f = tl.minimum(f, tl.min(tl.where(r_ok[:, None], v, float("inf")), axis=0))
    nxt = tl.minimum(k + 1, CS_K - 1)
    sel = k[None, :] == nxt[:, None]
    fn = tl.min(tl.where(sel, f[None, :], float("inf")), axis=1)
    xn = tl.max(tl.where(sel, x[None, :], 0.0), axis=1)
    dx = xn - x
    live = (k < CS_K - 1) & (dx > 0.0)
    s = tl.where(live, (fn - f) / tl.where(live, dx, 1.0), 0.0)
    c = tl.where(live, f - x * s, float("inf"))
    f_last = tl.min(tl.where(k == CS_K - 1, f, float("inf")), axis=0)
    fmag = tl.max(tl.abs(f), axis=0)
    return c, s, f_last, fmag


@triton.jit
def _cs_pass(w_row, g_row, m_ptr, z_ptr, lb_row, out_row, c, s, f_last, fmag, cols, scale,
             CS_K: tl.constexpr, CB: tl.constexpr):
    """The Cauchy-Schwarz bound of every kept q (mask 0): f is concave (a min of lines), so on
    [x_k, x_{k+1}] it lies above its chord; the min over the chords (extended to lines) is at most
    the chord of the interval holding a_q = |w_q| z_q (in [0, amax]), and f(a_q) >= f(amax)
    (f never rises): ``cs = max(min_k (c_k + s_k a_q), f(amax))``. The chords' rounding is below
    ``8 K ulp fmag`` (every |c_k|, |s_k a_q| <= 2 K fmag): ``c = cs - 2 SLACK (scale + |cs| + fmag)``
    and ``lb_q = max(lb_q, (A_q + c) - SLACK (scale + |c|))``. (fmag < 1e200 and amax, every z
    finite: no overflow, no NaN.)"""
    qq = tl.arange(0, CB)
    for base in range(0, cols, CB):
        q = base + qq
        qm = q < cols
        kept = qm & (tl.load(out_row + q, mask=qm, other=1) == 0)
        wq, a = _side(w_row, g_row, m_ptr, q, kept, cols, True)
        aq = tl.abs(wq) * tl.load(z_ptr + q, mask=kept, other=0.0)
        cs = tl.min(c[None, :] + aq[:, None] * s[None, :], axis=1)
        cs = tl.where(cs > f_last, cs, f_last)
        cb = cs - (2.0 * SLACK) * ((scale + tl.abs(cs)) + fmag)
        lbc = (a + cb) - SLACK * (scale + tl.abs(cb))
        lbv = tl.load(lb_row + q, mask=kept, other=0.0)
        tl.store(lb_row + q, tl.where(lbc > lbv, lbc, lbv), mask=kept)


@triton.jit(do_not_specialize=["max_cycles"])
def _swap_kernel(w_ptr, m_ptr, g_ptr, src_ptr, out_ptr, swaps_ptr, lb_ptr, mmax_ptr, z_ptr, pairs_ptr,
                 cols, max_cycles, NM: tl.constexpr, PRUNE_M: tl.constexpr, M_POW2: tl.constexpr,
                 CHUNK: tl.constexpr, QB: tl.constexpr, RB: tl.constexpr, SEARCH: tl.constexpr,
                 CS_K: tl.constexpr, CB: tl.constexpr):
    """Row ``program_id(0)``: ``src`` uint8 0/1 initial mask (may be ``out``); ``out`` uint8 0/1
    (True = pruned); ``swaps[row]`` int32; ``pairs[row]`` int64; ``g`` (rows, cols) float64
    updated in place; ``M`` (cols, cols) float32/float64, symmetric. Bounded search (``SEARCH``
    0, unstructured): ``lb`` (rows, cols) float64 scratch, ``mmax[0]`` float64 = max |M|, ``z``
    (cols + 1,) float64: the Cauchy-Schwarz factors and ``z[cols]`` 1 (use them) or 0 (``cs_factors``);
    CS_K abscissae (0: no Cauchy-Schwarz bound), CB columns per tile of that bound."""
    row = tl.program_id(0).to(tl.int64)
    w_row = w_ptr + row * cols
    src_row = src_ptr + row * cols
    out_row = out_ptr + row * cols
    g_row = g_ptr + row * cols
    lb_row = lb_ptr + row * cols
    idx = tl.arange(0, CHUNK)
    inf = float("inf")
    BOUNDED: tl.constexpr = (SEARCH == 0) and (not NM)
    CS: tl.constexpr = BOUNDED and (CS_K > 1)
    n_pruned = tl.sum(tl.zeros([2], tl.int32), axis=0)
    mx = tl.sum(tl.zeros([2], tl.float64), axis=0)
    w_max = tl.sum(tl.zeros([2], tl.float64), axis=0)
    amax = tl.sum(tl.zeros([2], tl.float64), axis=0)
    for base in range(0, cols, CHUNK):
        offs = base + idx
        m = offs < cols
        s = tl.load(src_row + offs, mask=m, other=0)
        tl.store(out_row + offs, s, mask=m)
        n_pruned += tl.sum(tl.where(m & (s == 1), 1, 0), axis=0)
        if BOUNDED:
            tl.store(lb_row + offs, tl.zeros([CHUNK], tl.float64) - inf, mask=m)
            w, a = _side(w_row, g_row, m_ptr, offs, m, cols, True)
            b = (w * w) * _m_at(m_ptr, offs, offs, cols, m) - (2.0 * w) * tl.load(g_row + offs, mask=m, other=0.0)
            mx = tl.maximum(mx, tl.max(tl.where(m, tl.abs(tl.where(s == 1, b, a)), 0.0)))
            w_max = tl.maximum(w_max, tl.max(tl.abs(w)))
            if CS:
                amax = tl.maximum(amax, tl.max(tl.abs(w) * tl.load(z_ptr + offs, mask=m, other=0.0)))
    n_kept = cols - n_pruned
    tl.debug_barrier()

    scale = mx
    c_max = mx
    if BOUNDED:
        c_max = ((2.0 * w_max) * w_max) * tl.load(mmax_ptr)      # every |cross term|
        scale = mx + c_max
    use_cs = (n_pruned > 0) & (n_kept > 0)
    if CS:  # as the CPU kernel: usable factors, and far from overflow (bounds multiply two scales)
        use_cs = use_cs & (tl.load(z_ptr + cols) != 0.0) & (scale < 1e100) & (amax < inf)
    pairs = tl.sum(tl.zeros([2], tl.int64), axis=0)
    swaps = tl.sum(tl.zeros([2], tl.int32), axis=0)
    alive = swaps == 0
    cycle = swaps
    while alive & (cycle < max_cycles):
        cycle += 1
        if BOUNDED:
            if CS:
                if use_cs:
                    c, s, f_last, fmag = _cs_lines(w_row, g_row, m_ptr, z_ptr, out_row, amax, cols, CS_K, CB)
                    if fmag < 1e200:
                        _cs_pass(w_row, g_row, m_ptr, z_ptr, lb_row, out_row, c, s, f_last, fmag, cols,
                                 scale, CS_K, CB)
                        tl.debug_barrier()
            best = tl.sum(tl.zeros([2], tl.float64), axis=0)  # only pairs with delta < 0 matter
            bq = tl.sum(tl.zeros([2], tl.int32), axis=0) - 1
            br = bq
            v, sq = _select(lb_row, out_row, cols, idx, CHUNK)
            go = v < 0.0
            while go:
                wq = load_w(w_row + sq, go).to(tl.float64)
                mqq = tl.load(m_ptr + sq.to(tl.int64) * cols + sq).to(tl.float64)
                a = (2.0 * wq) * tl.load(g_row + sq) + (wq * wq) * mqq
                e, er = _row_scan(w_row, g_row, m_ptr, out_row, sq, a, wq, cols, idx, CHUNK)
                pairs += n_pruned.to(tl.int64)
                el = (e - a) - SLACK * (scale + tl.abs(e))
                lb = (a + el) - SLACK * (scale + tl.abs(el))
                lb = tl.where(lb == lb, lb, -inf)
                tl.store(lb_row + sq, lb)
                tl.store(out_row + sq, tl.full([], 2, tl.uint8))
                better = (e < best) | ((e == best) & (bq >= 0) & (sq < bq))
                best = tl.where(better, e, best)
                bq = tl.where(better, sq, bq)
                br = tl.where(better, er, br)
                tl.debug_barrier()  # the bound and the mark just stored are read by every thread
                v, sq = _select(lb_row, out_row, cols, idx, CHUNK)
                go = (v < 0.0) & (v <= best)
            ok = bq >= 0
            q = tl.where(ok, bq, 0)
            r = tl.where(ok, br, 0)
            wq = load_w(w_row + q, ok).to(tl.float64)
            wr = load_w(w_row + r, ok).to(tl.float64)
            dmin, dmax, mx, pb = _swap_pass(w_row, g_row, m_ptr, lb_row, out_row, q, r, wq, wr, cols,
                                            scale, ok, tl.arange(0, CHUNK // 2), CHUNK)
            dmin = tl.where(dmin < inf, dmin, 0.0)  # q is the only pruned column now
            scale = tl.where(ok, tl.maximum(scale, mx + c_max), scale)
            peps = SLACK * (scale + dmax)
            tl.debug_barrier()
            tl.store(out_row + q, tl.full([], 1, tl.uint8), mask=ok)
            tl.store(out_row + r, tl.full([], 0, tl.uint8), mask=ok)
            tl.store(lb_row + r, -inf, mask=ok)  # r is kept now: scanned when next needed
            tl.debug_barrier()
            _bound_pass(w_row, g_row, m_ptr, lb_row, out_row, q, wq, pb, dmin, peps, cols, scale, ok,
                        tl.arange(0, CHUNK // 2), CHUNK)
            pairs += tl.where(ok, n_kept, 0).to(tl.int64)
        else:
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
                    pairs += tl.sum(tl.sum(pair.to(tl.int64), axis=1), axis=0)
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
            if not NM:
                pairs += n_kept.to(tl.int64) * n_pruned.to(tl.int64)
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
    tl.store(pairs_ptr + row, pairs)


def swap_refine(weight, M, g, src, out, swaps, max_cycles, prune_m, chunk, num_warps, qb, rb,
                search=0, lb=None, m_abs_max=None, pairs=None, z=None, cs_k=CS_K):
    """Launch over rows. weight (rows, cols) fp32/fp16/bf16; M (cols, cols) fp32/fp64 symmetric;
    g (rows, cols) fp64 = D0 @ M, updated in place; src/out (rows, cols) uint8 (src may be out);
    swaps (rows,) int32; prune_m 0 = unstructured; search 0 = bounded (unstructured only; N:M
    always scans every pair of its groups), 1 = full scan. Bounded: ``lb`` (rows, cols) float64
    scratch and ``m_abs_max`` (1,) float64 = max |M| (both allocated here when None). ``pairs``
    (rows,) int64: the deltas computed per row (allocated when None)."""
    import torch

    rows, cols = weight.shape
    nm = prune_m > 0
    bounded = search == 0 and not nm
    dev = weight.device
    if bounded and lb is None:
        lb = torch.empty((rows, cols), dtype=torch.float64, device=dev)
    if bounded and m_abs_max is None:
        m_abs_max = matrix_abs_max(M)
    if bounded and z is None and cs_k > 1:
        z = cs_factors(M)
    if not bounded or cs_k <= 1:  # unused pointers
        z = g
    if not bounded:
        lb = m_abs_max = g
    if pairs is None:
        pairs = torch.empty((rows,), dtype=torch.int64, device=dev)
    _swap_kernel[(rows,)](
        weight_arg(weight), M, g, src, out, swaps, lb, m_abs_max, z, pairs, cols, max_cycles,
        NM=nm, PRUNE_M=max(prune_m, 1), M_POW2=triton.next_power_of_2(max(prune_m, 1)),
        CHUNK=chunk, QB=qb, RB=rb, SEARCH=0 if bounded else 1, CS_K=cs_k if bounded else 0,
        CB=cs_tile(chunk, cs_k), num_warps=num_warps,
        enable_fp_fusion=False)
    return pairs


def matrix_abs_max(M):
    """``max |M|`` as a (1,) float64 tensor on M's device (no cols² temporary, no host sync)."""
    import torch

    lo, hi = torch.aminmax(M)
    return torch.maximum(hi.abs(), lo.abs()).to(torch.float64).reshape(1)


CS_BLOCK = 512  # rows of M per block of ``cs_factors`` (a few (CS_BLOCK, cols) float64 temporaries)


def cs_factors(M):
    """The CPU kernel's Cauchy-Schwarz factors (csrc/cpu/refine_swap_cpu.cpp), (cols + 1,) float64
    on M's device, no host sync: ``z_j = (s_j sqrt(rho_j)) (1 + 1e-12)``, ``s_j = sqrt(max(M_jj, 0))``,
    ``rho_j = max_{r != j, M_jr != 0} |M_jr| / (s_j s_r)`` (inf when ``s_j s_r = 0``), so
    ``|M_qr| <= z_q z_r``; ``z[cols]`` is 1 when the bound may be used (every ``M_jj >= 0``, max |M|
    and every rho finite), else 0. One pass over M by blocks of CS_BLOCK rows."""
    import torch

    cols = M.shape[0]
    diag = torch.diagonal(M).to(torch.float64)
    sd = torch.sqrt(torch.clamp(diag, min=0.0))
    ok = (diag >= 0.0).all()
    rho = torch.empty((cols,), dtype=torch.float64, device=M.device)
    finite = torch.ones((), dtype=torch.bool, device=M.device)
    for i in range(0, cols, CS_BLOCK):
        a = M[i:i + CS_BLOCK].to(torch.float64).abs()
        finite = finite & torch.isfinite(a).all()
        den = sd[i:i + CS_BLOCK, None] * sd[None, :]
        t = torch.where(den > 0.0, a / torch.where(den > 0.0, den, 1.0), float("inf"))
        t = torch.where(a == 0.0, 0.0, t)
        n = t.shape[0]
        t[torch.arange(n, device=M.device), torch.arange(i, i + n, device=M.device)] = 0.0
        rho[i:i + n] = t.amax(dim=1) if cols > 0 else 0.0
    z = torch.empty((cols + 1,), dtype=torch.float64, device=M.device)
    z[:cols] = (sd * torch.sqrt(rho)) * (1.0 + 1e-12)
    use = ok & finite & torch.isfinite(rho).all()
    z[cols] = use.to(torch.float64)
    return z
