"""Initial N:M selection (spec §2): in each group of ``M`` consecutive columns prune the ``N``
smallest composite keys ``(metric, col)`` (contract "Orders"; ties to the lower column).

Each column counts the members of its group that sort before it (M comparisons, linear per row);
it is pruned when that rank is below ``N``.
"""
import triton
import triton.language as tl

from dsnot_kernels.triton._common import composite_key, metric_at, weight_arg


@triton.jit(do_not_specialize=["has_metric"])
def _select_nm_kernel(w_ptr, sqrt_s_ptr, metric_ptr, out_ptr, cols, has_metric,
                      PRUNE_N: tl.constexpr, PRUNE_M: tl.constexpr, CHUNK: tl.constexpr):
    """One program per row. Writes ``out[row, :]`` (uint8): 1 = pruned, 0 = kept."""
    row = tl.program_id(0).to(tl.int64)
    w_row = w_ptr + row * cols
    metric_row = metric_ptr + row * cols
    out_row = out_ptr + row * cols
    idx = tl.arange(0, CHUNK)
    for base in range(0, cols, CHUNK):
        offs = base + idx
        m = offs < cols
        mine = composite_key(metric_at(w_row, sqrt_s_ptr, metric_row, offs, m, has_metric), offs)
        start = offs - offs % PRUNE_M
        rank = tl.zeros([CHUNK], tl.int32)
        for t in tl.static_range(PRUNE_M):
            other = composite_key(metric_at(w_row, sqrt_s_ptr, metric_row, start + t, m, has_metric),
                                  start + t)
            rank += (other < mine).to(tl.int32)
        tl.store(out_row + offs, (rank < PRUNE_N).to(tl.uint8), mask=m)


def select_nm(weight, sqrt_scaler, metric, out, prune_n, prune_m, chunk, num_warps):
    """Launch: weight (rows, cols) fp32/fp16/bf16, cols % prune_m == 0;
    sqrt_scaler (cols,) fp32 = sqrt(scaler_row);
    metric (rows, cols) fp32 or None (wanda); out (rows, cols) uint8, written in full."""
    rows, cols = weight.shape
    _select_nm_kernel[(rows,)](
        weight_arg(weight), sqrt_scaler, metric if metric is not None else sqrt_scaler, out, cols,
        int(metric is not None), PRUNE_N=prune_n, PRUNE_M=prune_m, CHUNK=chunk,
        num_warps=num_warps, enable_fp_fusion=False)
