"""What the swap kernel tests share: the compiled op called directly, the initial mask, the
reference's swap, and the exact comparison of two ``(mask, swaps)`` results."""
import contextlib

import torch

from correlated_inputs import outlier_layer
import dsnot_kernels as dk
from dsnot_kernels.objectives.cov_window import cov_g0

BIG = 10**6


def op(W, mask0, M, search, cap=BIG):
    return torch.ops.dsnot_kernels.refine_mask_swap.default(W, mask0, M, cov_g0(W, mask0, M), 0, cap, search)


def initial(W, stats, sparsity):
    return dk.refine_mask(W, *stats, sparsity=sparsity, max_cycle_time=0)


def reference(W, stats, M, sparsity, cap=BIG):
    return dk.refine_mask(W, *stats, sparsity=sparsity, objective="swap", second_moment=M, backend="torch",
                          max_cycle_time=cap, return_swaps=True)


def assert_same(a, b, what):
    bad = (a[0] != b[0]).any(1).nonzero().flatten().tolist()
    assert not bad, f"{what}: masks differ in rows {bad[:10]}"
    assert torch.equal(a[1], b[1]), f"{what}: swap counts differ"


def twin_layer(rows, cols, seed):
    """A layer whose channels come in identical pairs (same column of M, same weight): every pair
    (q, r) has a twin with the same delta, so ties decide. Weights are multiples of 2^-8 (exact)."""
    W, stats, M = outlier_layer(rows, cols // 2, seed=seed)
    W = (torch.round(W * 256) / 256).repeat_interleave(2, dim=1).contiguous()
    M = M.repeat_interleave(2, 0).repeat_interleave(2, 1)  # PSD; a twin swap changes nothing (delta 0)
    stats = tuple(s.repeat_interleave(2) for s in stats)
    return W, stats, M


@contextlib.contextmanager
def torch_threads(n):
    """torch's thread count set to n inside the block, restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
