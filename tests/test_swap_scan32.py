"""The "swap" CPU kernel's float32 row scans (csrc/cpu/swap_scan32.h) and its buckets of the split
bound (csrc/cpu/swap_split.h).

A row of the pair matrix is scanned in float32 from a float32 copy of M, each delta with a bound of
its distance to the float64 delta; the candidates that bound cannot rule out are computed again in
float64, so the pair must be the float64 scan's, bit for bit. ``search`` 3 uses the float32 scans
(and the split bound, and row blocks) at every width, 6 is the default with float64 scans, 1 the
full float64 scan: all must return the same masks and swap counts, on inputs where float32 alone
would pick another pair (cancellation: a large A_q against large B_r - C_qr), exact ties (twin
channels), a constant M (every delta of a row tied), scales near float32's subnormal range and
past its overflow guard (the float64 scan is then used). Docs: docs/KERNEL_CONTRACT.md "Objective 4".
"""
from __future__ import annotations

import pytest
import torch

from correlated_inputs import outlier_layer
from dsnot_kernels import _extension
from swap_helpers import BIG, assert_same, initial, op, reference, twin_layer

pytestmark = pytest.mark.skipif(not _extension.has_kernel("CPU", "refine_mask_swap"),
                                reason="extension built without the refine_mask_swap CPU kernel")


def same_three(W, mask0, M, what, cap=BIG):
    full, f64, f32 = op(W, mask0, M, 1, cap), op(W, mask0, M, 6, cap), op(W, mask0, M, 3, cap)
    assert_same(f64, full, f"{what}: float64 bounded search vs full scan")
    assert_same(f32, full, f"{what}: float32 scans vs full scan")
    return full


@pytest.mark.parametrize("cols,sparsity,seed", [(48, 0.5, 10), (200, 0.6, 11), (333, 0.7, 12), (520, 0.6, 13)])
def test_float32_scans_equal_the_float64_search(cols, sparsity, seed):
    W, stats, M = outlier_layer(5, cols, seed=seed)
    mask0 = initial(W, stats, sparsity)
    full = same_three(W, mask0, M, f"outlier layer {cols}")
    assert int(full[1].min()) > 0  # every row swapped: the scans decided something
    assert_same(reference(W, stats, M, sparsity), op(W, mask0, M, 3), "reference vs float32 scans")


def test_float32_scans_with_cancellation():
    """Outlier channels 1000x: A_q and B_r - C_qr of a pair are ~1e6 times their sum, far below
    float32's resolution of either; the float64 recheck must still find the float64 pair."""
    W, stats, M = outlier_layer(4, 160, seed=21, outliers=12, outlier_scale=1000.0)
    same_three(W, initial(W, stats, 0.6), M, "outliers 1000x")


@pytest.mark.parametrize("seed", [31, 32])
def test_float32_scans_break_ties_as_float64(seed):
    W, stats, M = twin_layer(4, 192, seed=seed)
    # a twin swap's delta can round to a tiny negative, and such rows swap twins back and forth to
    # the cap (the reference does the same): the cap bounds the run time
    same_three(W, initial(W, stats, 0.5), M, "twin channels", cap=60)


@pytest.mark.parametrize("seed", [33, 34])
def test_float32_scans_order_near_ties(seed):
    """Twin channels whose weights differ by one float32 ulp: each pair (q, r) has a twin whose
    float64 delta differs from its own by about float32's resolution, so float32 alone orders them
    wrongly about as often as rightly; the float64 recheck of the candidates must order them."""
    W, stats, M = twin_layer(16, 160, seed=seed)
    W = W.clone()
    W[:, 1::2] = torch.nextafter(W[:, 1::2], torch.full_like(W[:, 1::2], float("inf")))
    same_three(W, initial(W, stats, 0.5), M, "near-twin channels", cap=60)


def test_float32_scans_all_deltas_tied():
    """A constant M (plus a tiny diagonal) and equal |w|: a row's deltas are all equal or nearly,
    so every column is a float32 candidate; the first float64 minimum must win."""
    cols = 96
    g = torch.Generator().manual_seed(41)
    W = (torch.randint(0, 2, (3, cols), generator=g).float() * 2 - 1) * 0.125
    W[:, ::7] *= 2
    M = torch.full((cols, cols), 3.0, dtype=torch.float64) + 1e-3 * torch.eye(cols, dtype=torch.float64)
    d = torch.diagonal(M).float()
    stats = (torch.zeros(cols), d, 512 * d)
    same_three(W, initial(W, stats, 0.5), M, "constant M")


@pytest.mark.parametrize("scale", [1e-33, 1e-20, 1e20, 1e33], ids=lambda s: f"{s:.0e}")
def test_float32_scans_at_extreme_scales(scale):
    """M scaled so that products fall near float32's subnormal range (1e-33: w^2 M ~ 1e-36), or past
    the float32 guard (1e33: the float64 scan is used instead); the pair is the float64 one."""
    W, stats, M = outlier_layer(3, 128, seed=51)
    mask0 = initial(W, stats, 0.6)
    full = same_three(W, mask0, M * scale, f"M x {scale:.0e}")
    assert int(full[1].min()) > 0


def test_buckets_of_the_split_bound_cover_heavy_tails():
    """Weights with a few huge entries and M with 20x outlier channels: b = |w| zR spans many
    decades, so the split bound gets buckets beyond its equal-count ones (the ratio rule); its
    pair must stay the full scan's, and it must read fewer pairs than the plain bound."""
    W, stats, M = outlier_layer(4, 384, seed=61, outliers=8)
    W = W.clone()
    W[:, ::37] *= 40.0
    mask0 = initial(W, stats, 0.6)
    full, plain, split = op(W, mask0, M, 1), op(W, mask0, M, 2), op(W, mask0, M, 3)
    assert_same(split, full, "split bound (ratio buckets) vs full scan")
    assert_same(plain, full, "plain bound vs full scan")
    assert int(split[2].sum()) < int(plain[2].sum())
