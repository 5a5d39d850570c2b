"""The "swap" CPU kernel's block scans (csrc/cpu/swap_block_scan.h, ``search`` 5): a row of the pair
matrix is scanned by blocks of 16 columns, skipping the blocks two bounds rule out (the exact rank-1
part plus a stored residual minimum, and a drift bound carried across swaps). The pair each row
takes, its mask and its swap count must be those of the full scan (``search`` 1), of the default
search (0) and of the PyTorch reference; only the pairs read differ.

Inputs: fresh seeded layers like an LLM's (tests/correlated_inputs.py), widths that leave a short
last block and a partial group of blocks, layers whose deltas tie exactly (twin channels), dead
channels (zero rows and columns of M), statistics gathered from samples with half-precision
weights, cycle caps and 2 threads. Docs: docs/KERNEL_CONTRACT.md, "Objective 4".
"""
from __future__ import annotations

import pytest
import torch

from correlated_inputs import correlated_layer, outlier_layer
from dsnot_kernels import _extension, ops
from swap_helpers import assert_same, initial, op, reference, torch_threads, twin_layer

pytestmark = [pytest.mark.skipif(not _extension.has_kernel("CPU", "refine_mask_swap"),
                                 reason="extension built without the refine_mask_swap CPU kernel")]

BLOCKS = 5


@pytest.mark.parametrize("rows,cols,sparsity,seed", [
    (12, 96, 0.6, 31),    # less than one group of 8 blocks
    (9, 200, 0.5, 32),    # a short last block (200 = 12 x 16 + 8)
    (7, 300, 0.7, 33),    # 300 = 2 groups + 44 columns
    (6, 129, 0.9, 34),    # a last block of one column
    (4, 1000, 0.3, 35),
])
def test_block_scans_equal_full_search_and_reference(rows, cols, sparsity, seed):
    W, stats, M = outlier_layer(rows, cols, seed=seed, outliers=8)
    mask0 = initial(W, stats, sparsity)
    blocks = op(W, mask0, M, BLOCKS)
    assert int(blocks[1].min()) > 0
    assert_same(blocks, op(W, mask0, M, 1), "block scans vs full scan")
    assert_same(blocks, op(W, mask0, M, 0), "block scans vs default search")
    assert_same(reference(W, stats, M, sparsity), blocks, "reference vs block scans")


def test_block_scans_read_fewer_pairs():
    """On inputs with a strong common component the bounds rule out most blocks: fewer than half the
    pairs the default search reads (measured: 7x fewer at 1000 columns), for the same swaps."""
    W, stats, M = outlier_layer(6, 1000, seed=36, outliers=8)
    mask0 = initial(W, stats, 0.6)
    blocks, default = op(W, mask0, M, BLOCKS), op(W, mask0, M, 0)
    assert_same(blocks, default, "block scans vs default search")
    assert int(blocks[2].sum()) * 2 < int(default[2].sum())


def test_block_scans_on_ties():
    W, stats, M = twin_layer(24, 160, seed=37)
    mask0 = initial(W, stats, 0.5)
    cap = 60  # twin swaps can alternate to the cap (the reference does the same)
    blocks = op(W, mask0, M, BLOCKS, cap)
    assert int(blocks[1].max()) > 0
    assert_same(blocks, op(W, mask0, M, 1, cap), "ties: block scans vs full scan")
    assert_same(reference(W, stats, M, 0.5, cap), blocks, "ties: reference vs block scans")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_block_scans_half_weights_and_other_statistics(dtype):
    """Statistics gathered from samples (CalibrationStats, with a common component), half weights."""
    W, st = correlated_layer(10, 176, dtype=dtype, seed=38, common=2.0, tokens=256)
    M = ops.validate_second_moment(st.hessian, "swap", 176, W.device)
    stats = (st.sum_metric_row, st.var, st.scaler_row)
    mask0 = initial(W, stats, 0.6)
    blocks = op(W, mask0, M, BLOCKS)
    assert int(blocks[1].min()) > 0
    assert_same(blocks, op(W, mask0, M, 1), f"{dtype}: block scans vs full scan")


def test_block_scans_dead_channels():
    """Zero channels (a zero row and column of M, zero statistics): their residual scale is 0."""
    W, stats, M = outlier_layer(8, 144, seed=40)
    dead = torch.tensor([3, 77, 143])
    M[dead, :] = 0.0
    M[:, dead] = 0.0
    stats = tuple(s.clone() for s in stats)
    for s in stats:
        s[dead] = 0.0
    mask0 = initial(W, stats, 0.6)
    blocks = op(W, mask0, M, BLOCKS)
    assert_same(blocks, op(W, mask0, M, 1), "dead channels: block scans vs full scan")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cap", [1, 4])
def test_block_scans_threads_and_cap(threads, cap):
    W, stats, M = outlier_layer(21, 208, seed=41 + cap)
    mask0 = initial(W, stats, 0.6)
    with torch_threads(threads):
        blocks = op(W, mask0, M, BLOCKS, cap)
    assert_same(blocks, op(W, mask0, M, 1, cap), f"{threads} threads, cap {cap}")
    assert int(blocks[1].max()) == cap


def test_block_scans_at_2048_columns():
    """A width where the default search uses the split bound and row blocks: equal to it on every
    row, and to the reference on one."""
    W, stats, M = outlier_layer(3, 2048, seed=42, outliers=8)
    mask0 = initial(W, stats, 0.6)
    blocks = op(W, mask0, M, BLOCKS)
    assert_same(blocks, op(W, mask0, M, 0), "block scans vs default at 2048 columns")
    assert_same(reference(W[:1].contiguous(), stats, M, 0.6), (blocks[0][:1], blocks[1][:1]),
                "reference vs block scans at 2048 columns")
