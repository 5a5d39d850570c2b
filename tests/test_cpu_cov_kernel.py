"""The CPU kernel of objectives 2 ("cov") and 3 ("cov_window") against the PyTorch reference.

docs/KERNEL_CONTRACT.md "Objective 2" / "Objective 3". Every case runs ``refine_mask`` with
``backend="torch"`` and ``backend="cpu"`` on the same inputs and compares (mask, swaps) exactly;
the reference itself is checked against tests/oracle.py in test_reference.py. Skipped cleanly when
the extension has no ``refine_mask_cov`` kernel.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import dsnot_kernels as dk
from dsnot_kernels import _extension

pytestmark = pytest.mark.skipif(not _extension.has_kernel("CPU", "refine_mask_cov"),
                                reason="extension built without the refine_mask_cov CPU kernel")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
OBJECTIVES = [("cov", 50), ("cov_window", 1), ("cov_window", 5), ("cov_window", 50)]


def correlated(rows, cols, dtype=torch.float32, seed=0):
    """Weight and statistics (with the second moment) of inputs with correlated channels."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(cols) + 0.2 * torch.randn(cols, cols, generator=g)
    x = (torch.randn(2, 48, cols, generator=g) @ mix) * torch.exp(0.5 * torch.randn(cols, generator=g)) \
        + 0.3 * torch.randn(cols, generator=g)
    st = dk.CalibrationStats(cols, hessian=True)
    st.add_batch(x)
    W = (0.05 * torch.randn(rows, cols, generator=g)).to(dtype)
    return W, st


def check(W, st, **kw):
    """Both backends on the same inputs; identical (mask, swaps); returns the swaps."""
    args = (W, st.sum_metric_row, st.var, st.scaler_row)
    ref = dk.refine_mask(*args, second_moment=st.hessian, backend="torch", return_swaps=True, **kw)
    got = dk.refine_mask(*args, second_moment=st.hessian, backend="cpu", return_swaps=True, **kw)
    assert got[0].dtype == torch.bool and got[1].dtype == torch.int32
    bad = (ref[0] != got[0]).any(1).nonzero().flatten().tolist()
    assert not bad, f"masks differ in rows {bad[:10]} ({kw})"
    assert torch.equal(ref[1], got[1]), f"swaps differ: {ref[1].tolist()[:10]} vs {got[1].tolist()[:10]}"
    return got[1]


@pytest.mark.parametrize("objective,window", OBJECTIVES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pattern", [dict(sparsity=0.5), dict(sparsity=0.7), dict(prune_n=2, prune_m=4),
                                     dict(prune_n=4, prune_m=8)], ids=str)
def test_equals_reference(objective, window, dtype, pattern):
    W, st = correlated(13, 256, dtype, seed=window + len(pattern))
    swaps = check(W, st, objective=objective, window=window, **pattern)
    assert int(swaps.sum()) > 0


@pytest.mark.parametrize("objective,window", OBJECTIVES)
@pytest.mark.parametrize("cfg", [dict(max_cycle_time=0), dict(max_cycle_time=1), dict(max_cycle_time=300, update_threshold=0.0),
                                 dict(pow_of_var_regrowing=0.0), dict(pow_of_var_regrowing=2.0),
                                 dict(prune_n=1, prune_m=4), dict(prune_n=3, prune_m=4)], ids=str)
def test_options(objective, window, cfg):
    W, st = correlated(7, 100, seed=3)
    check(W, st, objective=objective, window=window, **cfg)


@pytest.mark.parametrize("objective,window", OBJECTIVES)
@pytest.mark.parametrize("initial", ["magnitude", "custom", "custom_inf", "mask", "mask_nm"])
def test_initial_metric_and_mask(objective, window, initial):
    W, st = correlated(9, 64, seed=5)
    g = torch.Generator().manual_seed(6)
    kw = dict(prune_n=2, prune_m=4) if initial in ("custom", "custom_inf", "mask_nm") else dict(sparsity=0.6)
    if initial == "magnitude":
        kw["initial_metric"] = W.float().abs()
    elif initial.startswith("custom"):
        metric = torch.rand(W.shape, generator=g)
        if initial == "custom_inf":  # +inf metric: never a q of the "cov" N:M rule
            metric[torch.rand(W.shape, generator=g) < 0.3] = float("inf")
        kw["initial_metric"] = metric
    elif initial == "mask":
        kw["initial_mask"] = torch.rand(W.shape, generator=g) < 0.5
    else:
        kw["initial_mask"] = torch.zeros(W.shape, dtype=torch.bool).view(9, 16, 4)
        kw["initial_mask"][..., :2] = True
        kw["initial_mask"] = kw["initial_mask"].view(9, 64)
    check(W, st, objective=objective, window=window, **kw)


@pytest.mark.parametrize("seed", range(8))
def test_exact_ties(seed):
    """Integer weights with zeros, integer statistics and a rank-3 integer second moment with dead
    channels: many exactly equal deltas, keys and metrics, so every tie rule is exercised."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = 5, 48
    W = torch.randint(-2, 3, (rows, cols), generator=g).float()
    B = torch.randint(-1, 2, (cols, 3), generator=g).float()
    st = SimpleNamespace(hessian=B @ B.t() + torch.diag((torch.arange(cols) % 3 == 0).float()),
                         sum_metric_row=torch.randint(-2, 3, (cols,), generator=g).float(),
                         var=torch.randint(0, 2, (cols,), generator=g).float(),
                         scaler_row=torch.randint(0, 3, (cols,), generator=g).float())
    for objective, window in OBJECTIVES:
        for kw in (dict(sparsity=0.5), dict(sparsity=0.6, update_threshold=0.0), dict(prune_n=2, prune_m=4)):
            check(W, st, objective=objective, window=window, **kw)


def test_real_layer_shape():
    W, st = correlated(64, 1536, seed=9)
    for objective, window in (("cov", 50), ("cov_window", 50), ("cov_window", dk.ops.DEFAULT_WINDOW)):
        assert int(check(W, st, objective=objective, window=window, sparsity=0.6).sum()) > 0


def test_backend_choice():
    W, st = correlated(4, 64)
    args = (W, st.sum_metric_row, st.var, st.scaler_row)
    for objective in ("cov", "cov_window"):
        with pytest.raises(ValueError, match="'cpu' and 'torch' and 'triton' backends only, not 'cuda'"):
            dk.refine_mask(*args, objective=objective, second_moment=st.hessian, backend="cuda")
        auto = dk.refine_mask(*args, objective=objective, second_moment=st.hessian, return_swaps=True)
        cpu = dk.refine_mask(*args, objective=objective, second_moment=st.hessian, backend="cpu", return_swaps=True)
        assert torch.equal(auto[0], cpu[0]) and torch.equal(auto[1], cpu[1])


def test_checks_at_the_cpp_boundary():
    """The op itself refuses malformed tensors with a clear error (no crash, no out-of-bounds)."""
    W, st = correlated(3, 16)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    M = st.hessian.double()
    g0 = torch.zeros(3, 16, dtype=torch.float64)
    op = torch.ops.dsnot_kernels.refine_mask_cov.default
    base = [W, st.sum_metric_row, st.var, st.scaler_row, None, mask, M, g0, 0, 50, 0.1, 1.0, 5]
    for index, bad, word in [(6, M[:8, :8].contiguous(), "second_moment"), (6, M.float(), "second_moment"),
                             (7, g0[:2], "g0"), (5, mask[:, :8].contiguous(), "initial_mask"),
                             (8, 5, "prune_m"), (12, -1, "window"), (1, st.sum_metric_row[:8], "sum_metric_row")]:
        args = list(base)
        args[index] = bad
        with pytest.raises(RuntimeError, match=word):
            op(*args)
