"""Initial unstructured selection (spec §2), linear per row: a threshold select by range search.

Per row, the ``k`` smallest composite keys ``(metric, col)`` are pruned (contract "Orders"). Instead
of sorting, the kernel searches the signed ordered key of the metric: ``T`` = the smallest value
with at least ``k`` metrics ``<= T`` (counting at three pivots per pass: at most 16 passes over the
row, fewer when its keys span a narrower range), then prunes every metric ``< T`` and the first
``k - count(< T)`` columns whose metric equals ``T`` (a running cumulative count: ties go to the
lower column index). Cost O(20 * cols) per row, no sort.
"""
import triton
import triton.language as tl

from dsnot_kernels.triton._common import metric_at, ordered_key, weight_arg


@triton.jit
def _row_keys(w_row, sqrt_s_ptr, metric_row, offs, m, has_metric):
    return ordered_key(metric_at(w_row, sqrt_s_ptr, metric_row, offs, m, has_metric))


@triton.jit(do_not_specialize=["k", "has_metric"])
def _select_unstructured_kernel(w_ptr, sqrt_s_ptr, metric_ptr, out_ptr, cols, k, has_metric,
                                CHUNK: tl.constexpr):
    """One program per row. Writes ``out[row, :]`` (uint8): 1 = pruned, 0 = kept."""
    row = tl.program_id(0).to(tl.int64)
    w_row = w_ptr + row * cols
    metric_row = metric_ptr + row * cols
    out_row = out_ptr + row * cols
    idx = tl.arange(0, CHUNK)

    # bisection range: [min, max] of the row's ordered keys (int64: no overflow at mid)
    vmin = tl.full([CHUNK], 2147483647, tl.int32)
    vmax = tl.full([CHUNK], -2147483648, tl.int32)
    for base in range(0, cols, CHUNK):
        offs = base + idx
        m = offs < cols
        o = _row_keys(w_row, sqrt_s_ptr, metric_row, offs, m, has_metric)
        vmin = tl.minimum(vmin, tl.where(m, o, 2147483647))
        vmax = tl.maximum(vmax, tl.where(m, o, -2147483648))
    lo = tl.min(vmin, axis=0).to(tl.int64)
    hi = tl.max(vmax, axis=0).to(tl.int64)
    # smallest T with count(o <= T) >= k (k == 0: T = min, nothing is below it). Each pass counts
    # at three pivots (quartering the range), so 2**32 values take at most 16 passes.
    while lo < hi:
        d = hi - lo
        m1 = lo + d // 4
        m2 = lo + d // 2
        m3 = lo + (3 * d) // 4  # int64: d < 2**32, no overflow
        c1 = tl.zeros([CHUNK], tl.int32)  # per-lane counts, one reduction per pass
        c2 = tl.zeros([CHUNK], tl.int32)
        c3 = tl.zeros([CHUNK], tl.int32)
        for base in range(0, cols, CHUNK):
            offs = base + idx
            m = offs < cols
            o = tl.where(m, _row_keys(w_row, sqrt_s_ptr, metric_row, offs, m, has_metric).to(tl.int64),
                         hi + 1)  # padding counts nowhere
            c1 += (o <= m1).to(tl.int32)
            c2 += (o <= m2).to(tl.int32)
            c3 += (o <= m3).to(tl.int32)
        in1 = tl.sum(c1, axis=0) >= k
        in2 = tl.sum(c2, axis=0) >= k
        in3 = tl.sum(c3, axis=0) >= k
        new_lo = tl.where(in1, lo, tl.where(in2, m1 + 1, tl.where(in3, m2 + 1, m3 + 1)))
        hi = tl.where(in1, m1, tl.where(in2, m2, tl.where(in3, m3, hi)))
        lo = new_lo
    thr_key = lo.to(tl.int32)

    below = tl.zeros([CHUNK], tl.int32)
    for base in range(0, cols, CHUNK):
        offs = base + idx
        m = offs < cols
        o = _row_keys(w_row, sqrt_s_ptr, metric_row, offs, m, has_metric)
        below += (m & (o < thr_key)).to(tl.int32)
    ties_left = k - tl.sum(below, axis=0)  # ties at T are pruned in column order

    seen = tl.sum(tl.zeros([CHUNK], tl.int32), axis=0)
    for base in range(0, cols, CHUNK):
        offs = base + idx
        m = offs < cols
        o = _row_keys(w_row, sqrt_s_ptr, metric_row, offs, m, has_metric)
        tie = (m & (o == thr_key)).to(tl.int32)
        rank = tl.cumsum(tie, axis=0) + seen  # 1-based rank among the row's ties so far
        pruned = (o < thr_key) | ((tie == 1) & (rank <= ties_left))
        tl.store(out_row + offs, pruned.to(tl.uint8), mask=m)
        seen += tl.sum(tie, axis=0)


def select_unstructured(weight, sqrt_scaler, metric, out, k, chunk, num_warps):
    """Launch: weight (rows, cols) fp32/fp16/bf16; sqrt_scaler (cols,) fp32 = sqrt(scaler_row);
    metric (rows, cols) fp32 or None (wanda); out (rows, cols) uint8, written in full; k = pruned per row."""
    rows, cols = weight.shape
    _select_unstructured_kernel[(rows,)](
        weight_arg(weight), sqrt_scaler, metric if metric is not None else sqrt_scaler, out, cols,
        k,
        int(metric is not None), CHUNK=chunk, num_warps=num_warps, enable_fp_fusion=False)
