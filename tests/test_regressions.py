"""Regression cases from real layers (issue 21): inputs on which two backends once disagreed.

Issue 21: on the embedded SmolLM2-135M at 60 % unstructured, the ``torch`` and ``cpu`` backends
gave different masks. First difference: block 11, ``self_attn.q_proj``, row 34 (32 x 512
calibration tokens): the reference made 26 swaps, the CPU kernel (and the oracle) 50. Cause: the
reference computed ``sqrt(scaler_row)`` with ATen's float32 CPU ``torch.sqrt``, which is not
correctly rounded (one ulp off on ~15 % of inputs with torch 2.13 / AVX-512), while the contract
says ``sqrtf`` correctly rounded. Columns 64 and 128 of that row have wanda metrics one ulp apart
(0.29148623 and 0.29148626) under the correct ``sqrtf``; the misrounded square root made them tie,
the tie went to the lower column, and the ``phi`` prune order changed at swap 26. Quantised weights
(Q4_1: a few values per block) make such near-ties common in real layers.

The fix: ``reference.sqrt_rn`` (float64 square root, one rounding), used by the reference's wanda
metric and by the Triton launcher. These tests fail on the old reference.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dsnot_kernels as dk
from dsnot_kernels.objectives.reference import sqrt_rn, wanda_metric

sys.path.insert(0, str(Path(__file__).parent))
from oracle import oracle_row  # noqa: E402

DATA = Path(__file__).parent / "data" / "issue21_q_proj_row.pt"

# Two (weight, scaler_row) columns of that row: correctly rounded, B's wanda metric is one ulp
# below A's; with the old reference's square root they tied (and A, the lower column, came first).
A = (0.134765625, 4.678191184997559)
B = (0.15130615234375, 3.711273670196533)


def _cpu_backends():
    return list(dk.available_backends("cpu"))


def _np_wanda(w, s):
    """Correctly rounded |w| * sqrtf(s) in float32 (numpy's float32 sqrt is IEEE)."""
    w = np.asarray(w, dtype=np.float32)
    s = np.asarray(s, dtype=np.float32)
    return np.abs(w) * np.sqrt(s)


def test_sqrt_rn_is_correctly_rounded():
    g = torch.Generator().manual_seed(21)
    x = torch.cat([torch.rand(200_000, generator=g) * 10,
                   torch.pow(10.0, torch.empty(50_000).uniform_(-40, 38, generator=g)),
                   torch.tensor([0.0, -0.0, 1.0, 4.0, float("inf"), 1e-45, B[1]])])
    want = torch.from_numpy(np.sqrt(x.numpy()))
    got = sqrt_rn(x)
    assert got.dtype == torch.float32
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_wanda_metric_uses_correct_sqrt():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(64, 300, generator=g)
    s = torch.rand(300, generator=g) * 8
    want = torch.from_numpy(_np_wanda(w.numpy(), s.numpy()[None, :]))
    assert torch.equal(wanda_metric(w, s), want)


def test_the_two_columns_are_one_ulp_apart():
    wa, wb = _np_wanda([A[0], B[0]], [A[1], B[1]])
    assert wb < wa and np.nextafter(wb, np.float32(1)) == wa


@pytest.mark.parametrize("backend", _cpu_backends())
def test_near_tie_initial_selection(backend):
    """Unstructured 50 % of [A, B]: B (smaller metric) is pruned, not A (the old tie)."""
    w = torch.tensor([[A[0], B[0]]])
    s = torch.tensor([A[1], B[1]])
    mask = dk.refine_mask(w, torch.ones(2), torch.ones(2), s, sparsity=0.5, max_cycle_time=0, backend=backend)
    assert mask.tolist() == [[False, True]]


@pytest.mark.parametrize("backend", _cpu_backends())
def test_near_tie_nm_selection(backend):
    """2:4 group [A, B, small, large]: the small one and B are pruned."""
    w = torch.tensor([[A[0], B[0], 0.01, 1.0]])
    s = torch.tensor([A[1], B[1], 1.0, 1.0])
    mask = dk.refine_mask(w, torch.ones(4), torch.ones(4), s, prune_n=2, prune_m=4, max_cycle_time=0,
                          backend=backend)
    assert mask.tolist() == [[False, True, True, False]]


@pytest.mark.parametrize("backend", _cpu_backends())
@pytest.mark.parametrize("objective", ["dsnot", "mse"])
def test_near_tie_prune_order(backend, objective):
    """A and B kept with dm > 0, err < 0: the first q from ``phi`` is B (lower wanda), not A."""
    # columns: A, B (kept, dm > 0), then two tiny pruned columns with dm < 0 (err < 0, lo cursor)
    w = torch.tensor([[A[0], B[0], -1e-3, -2e-3]])
    s = torch.tensor([A[1], B[1], 1.0, 1.0])
    smr = torch.tensor([1.0, 1.0, 300.0, 300.0])
    kw = dict(sparsity=0.5, max_cycle_time=1, update_threshold=0.1, objective=objective, backend=backend,
              return_swaps=True)
    if objective == "mse":  # mean == sum_metric_row and no variance: the swap lowers (sum a)^2
        kw["mean"] = smr
    mask, swaps = dk.refine_mask(w, smr, torch.full((4,), 1e-6), s, **kw)
    assert swaps.tolist() == [1]
    assert mask.tolist() == [[False, True, True, False]]  # pruned B, regrew column 3 (lo: key -6e5 first)


def _real_row():
    d = torch.load(DATA)
    return d["weight"].unsqueeze(0), d["sum_metric_row"], d["var"], d["scaler_row"]


def _oracle(w, smr, var, sc, **kw):
    pruned, swaps = oracle_row(w[0].tolist(), smr.tolist(), var.tolist(), sc.tolist(), **kw)
    return torch.tensor([pruned]), swaps


def test_real_row_reference_equals_oracle_and_cpu():
    """The real row of issue 21 at the issue's settings: 50 swaps on every backend and the oracle."""
    w, smr, var, sc = _real_row()
    want, want_swaps = _oracle(w, smr, var, sc, sparsity=0.6, max_cycle_time=50, update_threshold=0.1)
    assert want_swaps == 50
    for backend in _cpu_backends():
        mask, swaps = dk.refine_mask(w, smr, var, sc, sparsity=0.6, backend=backend, return_swaps=True)
        assert swaps.tolist() == [want_swaps], backend
        assert torch.equal(mask, want), backend


@pytest.mark.parametrize("sparsity,n,m", [(0.5, 0, 0), (0.7, 0, 0), (0.5, 2, 4), (0.5, 4, 8)])
@pytest.mark.parametrize("objective", ["dsnot", "mse"])
def test_real_row_other_settings(sparsity, n, m, objective):
    """The same row, other patterns and objectives: every CPU backend equals the oracle."""
    w, smr, var, sc = _real_row()
    mean = smr / 512.0
    want, want_swaps = _oracle(w, smr, var, sc, mean=mean.tolist(), sparsity=sparsity, prune_n=n, prune_m=m,
                               max_cycle_time=50, update_threshold=0.1, same_sign=n > 0, objective=objective)
    for backend in _cpu_backends():
        mask, swaps = dk.refine_mask(w, smr, var, sc, sparsity=sparsity, prune_n=n, prune_m=m, objective=objective,
                                     mean=mean if objective == "mse" else None, backend=backend, return_swaps=True)
        assert torch.equal(mask, want) and swaps.tolist() == [want_swaps], backend


def test_real_row_is_the_recorded_one():
    """The stored row still shows the property: a one-ulp wanda near-tie between columns 64 and 128."""
    w, _, _, sc = _real_row()
    wan = _np_wanda(w[0].numpy(), sc.numpy())
    assert float(w[0, 64]) == A[0] and float(sc[64]) == A[1] and float(w[0, 128]) == B[0] and float(sc[128]) == B[1]
    assert np.nextafter(wan[128], np.float32(1)) == wan[64]
    assert math.isfinite(float(sc.sum()))
