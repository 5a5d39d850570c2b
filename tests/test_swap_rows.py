"""The "swap" CPU kernel's row blocks (csrc/cpu/swap_row_block.h): rows of a block sweep M in tiles
together and scan candidates in another order than one row alone; the pair each row takes, its
mask and its swap count must not change.

The op ``dsnot_kernels::refine_mask_swap`` runs with ``search`` 3 (row blocks at every width), 4
(one row at a time), 1 (every pair, every cycle) and 0 (the default: blocks from 2048 columns);
all must return the same masks and swap counts, equal to the PyTorch reference. Inputs are fresh
seeded layers (tests/correlated_inputs.py), layers whose deltas tie exactly (twin channels), row
counts that leave a partial block, 1 and 2 threads. Docs: docs/KERNEL_CONTRACT.md, "Objective 4".
"""
from __future__ import annotations

import pytest
import torch

from correlated_inputs import outlier_layer
import dsnot_kernels as dk
from dsnot_kernels import _extension, ops
from dsnot_kernels.objectives.cov_window import cov_g0
from swap_helpers import BIG, assert_same, initial, op, reference, torch_threads, twin_layer

pytestmark = pytest.mark.skipif(not _extension.has_kernel("CPU", "refine_mask_swap"),
                                reason="extension built without the refine_mask_swap CPU kernel")


def first_cycle_ties(W, mask0, M):
    """Rows whose first cycle's smallest delta (the reference's formula) is reached by 2+ pairs."""
    g = cov_g0(W, mask0, M)
    w = W.double()
    d = M.diagonal()
    A = 2 * w * g + w * w * d
    B = w * w * d - 2 * w * g
    delta = (A.unsqueeze(2) - (2 * w).unsqueeze(2) * w.unsqueeze(1) * M) + B.unsqueeze(1)
    ok = (~mask0).unsqueeze(2) & mask0.unsqueeze(1)
    delta = torch.where(ok, delta, torch.full_like(delta, float("inf")))
    low = delta.flatten(1).min(1).values
    return int(((delta.flatten(1) == low.unsqueeze(1)).sum(1) > 1).sum())


@pytest.mark.parametrize("rows,cols,sparsity,seed", [(70, 96, 0.6, 21), (9, 256, 0.5, 22), (33, 160, 0.7, 23)])
def test_row_blocks_equal_one_row_and_reference(rows, cols, sparsity, seed):
    W, stats, M = outlier_layer(rows, cols, seed=seed)
    mask0 = initial(W, stats, sparsity)
    blocks = op(W, mask0, M, 3)
    assert int(blocks[1].min()) > 0
    assert_same(blocks, op(W, mask0, M, 4), "row blocks vs one row at a time")
    assert_same(blocks, op(W, mask0, M, 1), "row blocks vs full scan")
    assert_same(reference(W, stats, M, sparsity), blocks, "reference vs row blocks")


def test_row_blocks_on_ties():
    W, stats, M = twin_layer(40, 128, seed=24)
    mask0 = initial(W, stats, 0.5)
    assert first_cycle_ties(W, mask0, M) > 0  # the test is about ties: there are some
    # a twin swap's delta rounds to a tiny negative on some rows, which then swap twins back and
    # forth to the cap (the reference does the same): the cap bounds the run time
    cap = 60
    blocks = op(W, mask0, M, 3, cap)
    assert int(blocks[1].max()) > 0
    assert_same(blocks, op(W, mask0, M, 1, cap), "ties: row blocks vs full scan")
    assert_same(reference(W, stats, M, 0.5, cap), blocks, "ties: reference vs row blocks")


def test_row_blocks_identical_rows():
    """Every row of a block the same: they want the same rows of M at the same time."""
    W, stats, M = outlier_layer(1, 192, seed=25)
    W = W.repeat(12, 1).contiguous()
    mask0 = initial(W, stats, 0.6)
    blocks = op(W, mask0, M, 3)
    assert torch.equal(blocks[0], blocks[0][:1].expand_as(blocks[0]))
    assert_same(blocks, op(W, mask0, M, 1), "identical rows")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cap", [1, 4])
def test_row_blocks_threads_and_cap(threads, cap):
    W, stats, M = outlier_layer(67, 128, seed=26 + cap)
    mask0 = initial(W, stats, 0.6)
    with torch_threads(threads):
        blocks = op(W, mask0, M, 3, cap)
    assert_same(blocks, op(W, mask0, M, 4, cap), f"{threads} threads, cap {cap}")
    assert int(blocks[1].max()) == cap


def test_default_search_blocks_at_2048_columns():
    """The default search runs row blocks from 2048 columns: equal to one row at a time and (two
    rows) to the reference."""
    W, stats, M = outlier_layer(5, 2048, seed=27, outliers=8)
    mask0 = initial(W, stats, 0.6)
    cap = ops.default_max_cycle_time("swap", 2048)
    default = op(W, mask0, M, 0, cap)
    assert_same(default, op(W, mask0, M, 4, cap), "default vs one row at a time at 2048 columns")
    assert_same(reference(W[:2].contiguous(), stats, M, 0.6, cap), (default[0][:2], default[1][:2]),
                "reference vs default at 2048 columns")
