"""Triton kernels of objectives 2 ("cov"), 3 ("cov_window") and 4 ("swap") == the PyTorch
reference, bit for bit.

docs/KERNEL_CONTRACT.md "Objective 2" / "Objective 3" / "Objective 4". Each case runs ``refine_mask`` with
``backend="torch"`` and ``backend="triton"`` on the same inputs and compares (mask, swaps)
exactly. Without a GPU the kernels run under ``TRITON_INTERPRET=1`` (conftest.py), which is slow:
a few rows, <= 100 columns, small windows; wider cases are marked slow.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from correlated_inputs import correlated_layer, on_device
import dsnot_kernels as dk

pytest.importorskip("triton")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.skipif(DEV == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                       reason="no GPU and the Triton interpreter is off"),
    pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning"),
]


def correlated(rows, cols, dtype=torch.float32, seed=0):
    """Weight and statistics (with the second moment) of inputs with correlated channels."""
    return on_device(*correlated_layer(rows, cols, dtype, seed, tokens=32), DEV)

def check(W, st, M=None, **kw):
    """Both backends on the same inputs; identical (mask, swaps); returns the swaps."""
    args = (W, st.sum_metric_row, st.var, st.scaler_row)
    M = st.hessian if M is None else M
    ref = dk.refine_mask(*args, second_moment=M, backend="torch", return_swaps=True, **kw)
    got = dk.refine_mask(*args, second_moment=M, backend="triton", return_swaps=True, **kw)
    assert got[0].dtype == torch.bool and got[1].dtype == torch.int32
    bad = (ref[0] != got[0]).any(1).nonzero().flatten().tolist()
    assert not bad, f"masks differ in rows {bad[:10]} ({kw})"
    assert torch.equal(ref[1], got[1]), f"swaps differ: {ref[1].tolist()} vs {got[1].tolist()}"
    return got[1]


OBJECTIVES = [("cov", 1), ("cov_window", 2), ("cov_window", 6), ("swap", 1)]
PATTERNS = [dict(sparsity=0.5), dict(prune_n=2, prune_m=4)]


@pytest.mark.parametrize("objective,window", OBJECTIVES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("pattern", PATTERNS, ids=["unstructured", "2:4"])
def test_equals_reference(objective, window, dtype, pattern):
    W, st = correlated(3, 48, dtype, seed=window + len(pattern))
    swaps = check(W, st, objective=objective, window=window, max_cycle_time=12, update_threshold=0.0, **pattern)
    assert int(swaps.sum()) > 0  # the swap loop really ran


@pytest.mark.parametrize("objective,window", [("cov", 1), ("cov_window", 4)], ids=str)
def test_odd_shapes_and_options(objective, window):
    W, st = correlated(2, 37, seed=3)   # a partial chunk, cols not a power of two
    check(W, st, objective=objective, window=window, sparsity=0.6, max_cycle_time=8)
    check(W, st, objective=objective, window=window, sparsity=0.5, pow_of_var_regrowing=0.0, max_cycle_time=6)
    check(W, st, objective=objective, window=window, sparsity=0.5, pow_of_var_regrowing=2.0, max_cycle_time=6)
    check(W, st, objective=objective, window=window, sparsity=0.5, max_cycle_time=0)
    W, st = correlated(2, 36, seed=4)
    check(W, st, objective=objective, window=window, prune_n=1, prune_m=3, max_cycle_time=8)


@pytest.mark.parametrize("objective,window", [("cov", 1), ("cov_window", 3), ("swap", 1)], ids=str)
def test_degenerate_rows(objective, window):
    """An all-zero row, var == 0 channels (+-inf growth keys), a zero channel of M, a zero metric."""
    W, st = correlated(4, 32, seed=5)
    W = W.clone()
    W[1] = 0.0                          # all-zero row: err == 0, inactive
    var = st.var.clone()
    var[::5] = 0.0
    M = st.hessian.clone()
    M[7, :] = 0.0
    M[:, 7] = 0.0                       # a dead input channel
    st = SimpleNamespace(hessian=M, sum_metric_row=st.sum_metric_row, var=var, scaler_row=st.scaler_row)
    for kw in (dict(sparsity=0.5, update_threshold=0.0), dict(prune_n=2, prune_m=4, update_threshold=0.0)):
        check(W, st, objective=objective, window=window, max_cycle_time=10, **kw)


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_exact_ties(seed):
    """Integer weights, statistics and a low-rank integer M: many exactly equal deltas, keys and
    metrics, so every tie rule (first minimum in slot order, column order in lists) is used."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = 2, 24
    W = torch.randint(-2, 3, (rows, cols), generator=g).float()
    B = torch.randint(-1, 2, (cols, 3), generator=g).float()
    st = SimpleNamespace(hessian=(B @ B.t() + torch.diag((torch.arange(cols) % 3 == 0).float())).to(DEV),
                         sum_metric_row=torch.randint(-2, 3, (cols,), generator=g).float().to(DEV),
                         var=torch.randint(0, 2, (cols,), generator=g).float().to(DEV),
                         scaler_row=torch.randint(0, 3, (cols,), generator=g).float().to(DEV))
    W = W.to(DEV)
    for objective, window in (("cov", 1), ("cov_window", 4), ("swap", 1)):
        for kw in (dict(sparsity=0.5, update_threshold=0.0), dict(prune_n=2, prune_m=4, update_threshold=0.0)):
            check(W, st, objective=objective, window=window, max_cycle_time=8, **kw)


def test_initial_metric_and_mask():
    W, st = correlated(2, 32, seed=6)
    g = torch.Generator().manual_seed(7)
    metric = torch.rand(W.shape, generator=g)
    metric[torch.rand(W.shape, generator=g) < 0.3] = float("inf")  # never a q of the "cov" N:M rule
    metric = metric.to(DEV)
    init = (torch.rand(W.shape, generator=g) < 0.5).to(DEV)
    for objective, window in (("cov", 1), ("cov_window", 3), ("swap", 1)):
        check(W, st, objective=objective, window=window, initial_metric=metric, prune_n=2, prune_m=4,
              max_cycle_time=6)
        check(W, st, objective=objective, window=window, initial_mask=init, max_cycle_time=6)
    check(W, st, objective="cov_window", window=3, initial_mask=init, max_cycle_time=0)


def test_second_moment_dtypes():
    """M as float32 (kept, widened per element in the kernel), float64, and a non-symmetric float32
    (symmetrised in float64 as the reference does): the same masks as the reference."""
    W, st = correlated(2, 32, seed=8)
    M32 = st.hessian.float()
    g = torch.Generator().manual_seed(9)
    skew = M32 + 1e-3 * torch.randn(M32.shape, generator=g).to(DEV)
    from dsnot_kernels.triton.cov_launch import second_moment_for_triton

    assert second_moment_for_triton(M32).data_ptr() == M32.data_ptr()  # no copy
    assert second_moment_for_triton(skew).dtype == torch.float64
    for M in (M32, skew, M32.half()):
        check(W, st, M=M, objective="cov_window", window=3, sparsity=0.5, max_cycle_time=6)
    check(W, st, M=skew, objective="cov", sparsity=0.5, max_cycle_time=6)
    check(W, st, M=M32.double(), objective="swap", sparsity=0.5, max_cycle_time=6)


def test_window_larger_than_lists_and_cycles_past_exhaustion():
    # 12 columns, window 20 > cols, 40 cycles at threshold 0: windows with empty slots, lists dry
    W, st = correlated(2, 12, seed=10)
    for objective in ("cov", "cov_window"):
        for kw in (dict(sparsity=0.5), dict(prune_n=3, prune_m=4)):
            check(W, st, objective=objective, window=20, update_threshold=0.0, max_cycle_time=40, **kw)
    # swap to its local optimum (the default cap), and a cap that stops rows before it
    for kw in (dict(sparsity=0.5), dict(prune_n=2, prune_m=4), dict(sparsity=0.5, max_cycle_time=1)):
        check(W, st, objective="swap", **dict(dict(max_cycle_time=None), **kw))


def test_memory_check_refuses_before_allocating(monkeypatch):
    from dsnot_kernels.triton import cov_launch

    W, st = correlated(2, 16, seed=11)
    args = (W, st.sum_metric_row, st.var, st.scaler_row)
    need = cov_launch.layer_bytes(2, 16, torch.float32, 5)
    assert need["peak"] == 8 * 2 * 16 * 2 + 8 * 16 * 16 + (2 * 16 + 8)
    allocated = []
    real_empty = torch.empty

    def spy_empty(*a, **k):
        if tuple(a[0] if len(a) == 1 else a) in ((2, 16), (2,), (2, 4, 5)):
            allocated.append(a)  # the launcher's outputs and scratch
        return real_empty(*a, **k)

    monkeypatch.setattr(cov_launch, "free_bytes", lambda device: need["peak"] - 1)
    monkeypatch.setattr(cov_launch.torch, "empty", spy_empty)
    with pytest.raises(torch.OutOfMemoryError, match=r"needs .* GiB .* free"):
        dk.refine_mask(*args, objective="cov_window", window=5, second_moment=st.hessian, backend="triton")
    assert not allocated  # refused before the first allocation
    monkeypatch.setattr(cov_launch.torch, "empty", real_empty)
    # enough for everything but the float64 copy of a float32 M: g0 by blocks of 5 columns of M
    monkeypatch.setattr(cov_launch, "free_bytes", lambda device: need["peak"] - need["m64_copy"] + 8 * 16 * 5)
    monkeypatch.setattr(cov_launch, "G0_BLOCK", 5)
    modes = []
    real_g0 = cov_launch._g0
    monkeypatch.setattr(cov_launch, "_g0", lambda w, m, M, blocked=False: modes.append(blocked) or real_g0(w, m, M, blocked))
    check(W, st, objective="cov_window", window=5, sparsity=0.5, max_cycle_time=6)
    assert modes == [True]
    # a non-symmetric M needs its float64 symmetrised copy: refused when it does not fit
    monkeypatch.setattr(cov_launch, "free_bytes", lambda device: 8 * 16 * 16 - 1)
    skew = st.hessian.clone()
    skew[0, 1] += 1.0
    with pytest.raises(torch.OutOfMemoryError, match="symmetrised"):
        dk.refine_mask(*args, objective="cov", second_moment=skew, backend="triton")


def test_backend_choice():
    W, st = correlated(2, 16, seed=12)
    args = (W, st.sum_metric_row, st.var, st.scaler_row)
    for objective in ("cov", "cov_window", "swap"):
        assert "triton" in dk.available_backends(DEV, objective)
        with pytest.raises(ValueError, match="not 'cuda'"):
            dk.refine_mask(*args, objective=objective, second_moment=st.hessian, backend="cuda")
    if DEV == "cuda":  # the automatic choice on CUDA tensors: triton (no CUDA C++ for these)
        from dsnot_kernels import ops

        assert ops._choose_backend(None, torch.device("cuda"), "cov_window").name == "triton"


def test_poison_every_element_written(monkeypatch):
    monkeypatch.setenv("DSNOT_KERNELS_POISON", "1")
    from dsnot_kernels.triton import cov_launch

    W, st = correlated(2, 24, seed=13)
    seen = {}
    real = cov_launch.refine_mask_cov_triton

    def spy(*a, **k):
        mask, swaps = real(*a, **k)
        seen["bytes"], seen["swaps"] = mask.view(torch.uint8).clone(), swaps.clone()
        return mask, swaps

    monkeypatch.setattr(cov_launch, "refine_mask_cov_triton", spy)
    for kw in (dict(sparsity=0.5), dict(prune_n=2, prune_m=4)):
        check(W, st, objective="cov_window", window=3, max_cycle_time=6, **kw)
        assert bool(((seen["bytes"] == 0) | (seen["bytes"] == 1)).all())
        assert bool((seen["swaps"] >= 0).all())


@pytest.mark.slow
@pytest.mark.parametrize("pattern", PATTERNS + [dict(sparsity=0.7), dict(prune_n=4, prune_m=8)], ids=str)
def test_wider_rows_default_window(pattern):
    W, st = correlated(4, 160, torch.float16, seed=14)
    for objective, window in (("cov", 1), ("cov_window", 20), ("cov_window", dk.ops.DEFAULT_WINDOW), ("swap", 1)):
        assert int(check(W, st, objective=objective, window=window, max_cycle_time=30, **pattern).sum()) > 0


@pytest.mark.slow
def test_multi_chunk_rows(monkeypatch):
    """Rows over several CHUNK-column chunks and several pair tiles (forced small)."""
    monkeypatch.setenv("DSNOT_TRITON_LAUNCH", "16:1")
    from dsnot_kernels.triton import cov_launch

    monkeypatch.setattr(cov_launch, "tile_config", lambda window, prune_m, interpreting: (4, 8))
    monkeypatch.setattr(cov_launch, "swap_tile_config", lambda cols, prune_m, interpreting: (8, 16))
    W, st = correlated(2, 80, seed=15)
    for objective, window in (("cov", 1), ("cov_window", 13), ("swap", 1)):
        for kw in PATTERNS:
            check(W, st, objective=objective, window=window, max_cycle_time=20, update_threshold=0.0, **kw)


@pytest.mark.slow
def test_wide_row():
    """One row of 2048 columns: many chunks, window 100 of several tiles, int64 offsets into M."""
    W, st = correlated(1, 2048, torch.bfloat16, seed=16)
    for objective, window, cycles in (("cov", 1, 50), ("cov_window", 100, 20), ("swap", 1, 3)):
        check(W, st, objective=objective, window=window, max_cycle_time=cycles, sparsity=0.6)
    check(W, st, objective="swap", prune_n=2, prune_m=4, max_cycle_time=None)
