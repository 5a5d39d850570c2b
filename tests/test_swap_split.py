"""The "swap" CPU kernel's low-rank-plus-residual bound (csrc/cpu/swap_split.h) on inputs like an
LLM's: outlier channels, a strong common component, a low-rank part (``outlier_layer``).

The op ``dsnot_kernels::refine_mask_swap`` is run with ``search`` 1 (every pair, every cycle), 2
(the bounded search without the split bound), 3 (with it at every width) and 0 (the default: with
it from ``split::kMinCols`` = 2048 columns); all must return the same masks and swap counts, and
``refine_mask(objective="swap")`` must equal the PyTorch reference. Docs: docs/KERNEL_CONTRACT.md,
"Objective 4".
"""
from __future__ import annotations

import pytest
import torch

from correlated_inputs import correlated_layer, outlier_layer
import dsnot_kernels as dk
from dsnot_kernels import _extension, ops
from swap_helpers import BIG, assert_same, initial, op, reference

pytestmark = pytest.mark.skipif(not _extension.has_kernel("CPU", "refine_mask_swap"),
                                reason="extension built without the refine_mask_swap CPU kernel")


@pytest.mark.parametrize("cols,sparsity,seed", [(64, 0.5, 0), (160, 0.6, 1), (256, 0.7, 2), (384, 0.6, 3),
                                                (512, 0.5, 4)])
def test_split_bound_equals_full_search_and_reference(cols, sparsity, seed):
    W, stats, M = outlier_layer(6, cols, seed=seed)
    mask0 = initial(W, stats, sparsity)
    full = op(W, mask0, M, 1)
    plain = op(W, mask0, M, 2)
    split = op(W, mask0, M, 3)
    assert int(full[1].min()) > 0
    assert_same(split, full, "split bound vs full search")
    assert_same(plain, full, "plain bound vs full search")
    assert_same(reference(W, stats, M, sparsity), split, "reference vs split bound")
    # the split bound is in use and tighter here: fewer pairs read than the plain bound
    assert int(split[2].sum()) < int(plain[2].sum())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_split_bound_half_weights(dtype):
    W, stats, M = outlier_layer(4, 256, seed=7, dtype=dtype)
    mask0 = initial(W, stats, 0.6)
    assert_same(op(W, mask0, M, 3), op(W, mask0, M, 1), f"{dtype}")


@pytest.mark.parametrize("cap", [1, 3, 5])
def test_split_bound_capped(cap):
    W, stats, M = outlier_layer(5, 200, seed=11, outliers=8)
    mask0 = initial(W, stats, 0.6)
    split = op(W, mask0, M, 3, cap)
    assert_same(split, op(W, mask0, M, 1, cap), f"cap {cap}")
    free = op(W, mask0, M, 1)[1]
    assert torch.equal(split[1], free.clamp(max=cap)) and int(split[1].max()) == cap


def test_split_bound_on_sampled_moments():
    """A second moment from few tokens (rank-deficient, not exactly PSD after float sums)."""
    for seed, common in [(0, 0.0), (1, 3.0), (2, 10.0)]:
        W, st = correlated_layer(5, 192, seed=seed, common=common, tokens=40)
        M = ops.validate_second_moment(st.hessian, "swap", 192, W.device)
        mask0 = dk.refine_mask(W, st.sum_metric_row, st.var, st.scaler_row, sparsity=0.6, max_cycle_time=0)
        assert_same(op(W, mask0, M, 3), op(W, mask0, M, 1), f"seed {seed} common {common}")


def test_split_bound_degenerate_moments():
    """A zero-variance channel, an indefinite M, an M whose top direction is all of it: the split
    bound is dropped or stays valid; never a different result."""
    W, stats, M = outlier_layer(4, 96, seed=5)
    M0 = M.clone()
    M0[7, :] = 0.0
    M0[:, 7] = 0.0
    v = torch.linspace(0.5, 2.0, 96, dtype=torch.float64)
    cases = {"zero channel": M0, "indefinite": M - 3.0 * torch.diag(torch.diagonal(M)),
             "rank one": torch.outer(v, v)}
    for name, Mc in cases.items():
        mask0 = initial(W, stats, 0.5)
        assert_same(op(W, mask0, Mc, 3), op(W, mask0, Mc, 1), name)


def test_default_search_at_2048_columns_equals_reference():
    """The default search (the split bound is on from 2048 columns) on two rows of a wide layer."""
    W, stats, M = outlier_layer(2, 2048, seed=3, outliers=8)
    got = dk.refine_mask(W, *stats, sparsity=0.6, objective="swap", second_moment=M, backend="cpu",
                         return_swaps=True)
    cap = ops.default_max_cycle_time("swap", 2048)
    assert_same(reference(W, stats, M, 0.6, cap), got, "reference vs cpu at 2048 columns")
    mask0 = initial(W, stats, 0.6)
    assert int(op(W, mask0, M, 0, cap)[2].sum()) < int(op(W, mask0, M, 2, cap)[2].sum())


def test_search_out_of_range():
    W, stats, M = outlier_layer(2, 16, seed=0)
    with pytest.raises(RuntimeError, match="search must be"):
        op(W, initial(W, stats, 0.5), M, 7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_validate_second_moment_by_blocks(dtype):
    """The float64 M of the CPU path is the reference's (M + Mᵀ) * 0.5 bit for bit, built by row
    blocks (1100 columns: a partial second block); a caller's M is never modified; an exactly
    symmetric float64 M is used as it is (no copy)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1100, 1100, generator=g, dtype=dtype)
    keep = x.clone()
    got = ops.validate_second_moment(x, "swap", 1100, x.device)
    assert got.dtype == torch.float64 and torch.equal(got, (x.double() + x.double().t()) * 0.5)
    assert torch.equal(x, keep)
    sym = (x.double() + x.double().t()) * 0.5
    assert ops.validate_second_moment(sym, "cov", 1100, x.device).data_ptr() == sym.data_ptr()
