"""The CPU (C++/OpenMP) kernel against the PyTorch reference: identical masks AND swap counts.

Spec docs/ALGORITHM.md §2-§3, numerics docs/KERNEL_CONTRACT.md. Every case runs ``refine_mask`` with
``backend="torch"`` and ``backend="cpu"`` on the same inputs and compares (mask bool (rows, cols),
swaps int32 (rows,)) exactly. Skipped cleanly when the extension has no CPU kernel.
"""
from __future__ import annotations

import random

import pytest
import torch

import dsnot_kernels as dk
from dsnot_kernels import _extension

pytestmark = pytest.mark.skipif(not _extension.has_kernel("CPU"), reason="extension built without the CPU kernel")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_inputs(rows, cols, dtype=torch.float32, seed=0, realistic=True):
    """Weight (rows, cols) in ``dtype`` and (cols,) float32 statistics.

    realistic: statistics from synthetic token inputs with per-channel nonzero means (as
    ``CalibrationStats`` computes them), so the reconstruction error is large and rows swap.
    """
    g = torch.Generator().manual_seed(seed)
    if realistic:
        scale = torch.exp(0.5 * torch.randn(cols, generator=g))
        mu = 0.3 * torch.randn(cols, generator=g) * scale
        st = dk.CalibrationStats(cols)
        st.add_batch(mu + scale * torch.randn(2, 16, cols, generator=g))
        smr, var, scaler, mean = st.sum_metric_row, st.var, st.scaler_row, st.mean
    else:
        smr = torch.randn(cols, generator=g) * 2 + 0.5
        var = torch.rand(cols, generator=g) + 0.05
        scaler = torch.rand(cols, generator=g) * 3
        mean = torch.randn(cols, generator=g) * 0.3
    W = (0.05 * torch.randn(rows, cols, generator=g)).to(dtype)
    return W, smr, var, scaler, mean


def check(W, smr, var, scaler, **kw):
    """Run both backends; assert identical (mask, swaps); return the swaps."""
    ref = dk.refine_mask(W, smr, var, scaler, backend="torch", return_swaps=True, **kw)
    got = dk.refine_mask(W, smr, var, scaler, backend="cpu", return_swaps=True, **kw)
    assert got[0].dtype == torch.bool and got[1].dtype == torch.int32
    bad = (ref[0] != got[0]).any(1).nonzero().flatten().tolist()
    assert not bad, f"masks differ in rows {bad[:10]} ({kw})"
    assert torch.equal(ref[1], got[1]), f"swaps differ: {ref[1].tolist()[:10]} vs {got[1].tolist()[:10]} ({kw})"
    return got


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 300), (7, 100), (13, 256), (16, 1000)], ids=str)
@pytest.mark.parametrize("sparsity", [0.5, 0.6, 0.7, 0.8])
def test_unstructured(dtype, shape, sparsity):
    W, smr, var, scaler, _ = make_inputs(*shape, dtype=dtype, seed=shape[1] + int(sparsity * 10))
    mask, swaps = check(W, smr, var, scaler, sparsity=sparsity)
    assert (mask.sum(1) == int(shape[1] * sparsity)).all()   # swaps keep the row's pruned count
    assert int(swaps.sum()) > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nm", [(2, 4), (4, 8), (1, 4), (3, 4), (5, 16)], ids=str)
@pytest.mark.parametrize("cols", [16, 96, 512])
def test_nm(dtype, nm, cols):
    n, m = nm
    W, smr, var, scaler, _ = make_inputs(9, cols, dtype=dtype, seed=cols + m)
    mask, swaps = check(W, smr, var, scaler, prune_n=n, prune_m=m)
    assert (mask.view(9, cols // m, m).sum(-1) == n).all()
    if cols >= 96 and n <= m // 2:
        assert int(swaps.sum()) > 0


@pytest.mark.parametrize("initial", ["magnitude", "custom", "custom_inf", "mask", "mask_nm"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_initial_metric_and_mask(initial, dtype):
    W, smr, var, scaler, _ = make_inputs(11, 240, dtype=dtype, seed=7)
    g = torch.Generator().manual_seed(3)
    kw = {}
    if initial == "magnitude":
        kw["initial_metric"] = W.float().abs()
    elif initial.startswith("custom"):
        metric = torch.randn(11, 240, generator=g)
        if initial == "custom_inf":
            metric[:, ::7] = float("inf")
            metric[:, 3::11] = -float("inf")
            metric[:, 5::13] = -0.0
        kw["initial_metric"] = metric
    elif initial == "mask":
        kw["initial_mask"] = torch.rand(11, 240, generator=g) < torch.linspace(0.05, 0.95, 11).unsqueeze(1)
    else:
        order = torch.rand(11, 60, 4, generator=g).argsort(-1)
        kw["initial_mask"] = (order < 2).view(11, 240)
        kw.update(prune_n=2, prune_m=4)
    for extra in ({}, {"prune_n": 2, "prune_m": 4} if initial.startswith("custom") else {}):
        check(W, smr, var, scaler, **kw, **extra)


@pytest.mark.parametrize("max_cycle_time", [0, 1, 2, 50, 10**6])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_cycle_counts(max_cycle_time, pattern):
    W, smr, var, scaler, _ = make_inputs(12, 512, seed=max_cycle_time % 97)
    kw = dict(prune_n=2, prune_m=4) if pattern == "2:4" else dict(sparsity=0.6)
    mask, swaps = check(W, smr, var, scaler, max_cycle_time=max_cycle_time, **kw)
    assert int(swaps.max()) <= max_cycle_time


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("without_same_sign", [True, False])
def test_pow_of_var_and_same_sign(p, without_same_sign):
    W, smr, var, scaler, _ = make_inputs(10, 384, seed=int(p * 4))
    check(W, smr, var, scaler, pow_of_var_regrowing=p, without_same_sign=without_same_sign, sparsity=0.6)
    check(W, smr, var, scaler, pow_of_var_regrowing=p, prune_n=2, prune_m=4)


@pytest.mark.parametrize("pattern", [{}, {"sparsity": 0.7}, {"prune_n": 2, "prune_m": 4}, {"prune_n": 4, "prune_m": 8}])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_objective_mse(pattern, dtype):
    W, smr, var, scaler, mean = make_inputs(10, 512, dtype=dtype, seed=5)
    for mc in (1, 50, 1000):
        check(W, smr, var, scaler, objective="mse", mean=mean, max_cycle_time=mc, **pattern)


def test_degenerate_rows():
    """var == 0 columns (+-inf keys), dm == 0 (NaN keys there), zero rows, quantised ties, all-equal rows."""
    rows, cols = 12, 200
    W, smr, var, scaler, mean = make_inputs(rows, cols, seed=11)
    var = var.clone()
    var[::5] = 0.0
    smr = smr.clone()
    smr[::7] = 0.0
    W = W.clone()
    W[1] = 0.0                                   # dm == 0 everywhere
    W[2] = 0.03                                  # all-equal row
    W[3] = torch.round(W[3] * 40) / 40           # heavy ties
    W[4, ::3] = -0.0
    W[5] = torch.round(W[5] * 8) / 8
    scaler = scaler.clone()
    scaler[::9] = 0.0                            # wanda ties at zero
    for kw in ({}, {"sparsity": 0.8}, {"prune_n": 2, "prune_m": 4}, {"max_cycle_time": 10**4},
               {"pow_of_var_regrowing": 0.0}, {"pow_of_var_regrowing": 2.0}, {"without_same_sign": False},
               {"objective": "mse", "mean": mean}, {"update_threshold": 0.0}):
        mask, _ = check(W, smr, var, scaler, **kw)
        if "prune_n" not in kw:
            assert (mask.sum(1) == int(cols * kw.get("sparsity", 0.5))).all()


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("cols", [4, 20, 36, 100])
def test_groups_of_4_vector_and_tail(n, cols):
    """M = 4 runs 16 columns at a time plus a scalar tail (select.h); ties inside a group go to the
    smaller column in both, for the built-in wanda metric and a given one."""
    W, smr, var, scaler, _ = make_inputs(11, cols, seed=100 + cols + n)
    W = torch.round(W * 30) / 30                   # many equal |w| inside a group
    W[0] = 0.02                                    # whole row tied
    W[1, 1::4] = -W[1, 0::4]                       # pairs tied in |w| (opposite signs)
    metric = torch.round(torch.rand(11, cols, generator=torch.Generator().manual_seed(cols)) * 3)
    for kw in ({}, {"initial_metric": metric}):
        mask, _ = check(W, smr, var, scaler, prune_n=n, prune_m=4, **kw)
        assert (mask.view(11, cols // 4, 4).sum(-1) == n).all()


@pytest.mark.parametrize("cols", [1, 2, 3, 5, 10, 49])
def test_cols_smaller_than_cycles(cols):
    W, smr, var, scaler, mean = make_inputs(6, cols, seed=cols)
    for kw in ({}, {"sparsity": 0.9}, {"sparsity": 0.0}, {"objective": "mse", "mean": mean}):
        mask, _ = check(W, smr, var, scaler, max_cycle_time=50, **kw)
        assert (mask.sum(1) == int(cols * kw.get("sparsity", 0.5))).all()
    if cols % 4 == 0:
        check(W, smr, var, scaler, prune_n=2, prune_m=4)


def test_long_rows_wide_histograms():
    """cols >= 65536 takes the 32-bit counter path of the candidate histograms."""
    W, smr, var, scaler, _ = make_inputs(2, 70000, seed=2)
    check(W, smr, var, scaler, sparsity=0.6)
    check(W, smr, var, scaler, prune_n=2, prune_m=4, max_cycle_time=300)


@pytest.mark.parametrize("pattern", [{"sparsity": 0.6}, {"prune_n": 2, "prune_m": 4}])
def test_rows_of_very_different_scales(pattern):
    """The kernel carries each list's cut-off from row to row (lists.h); rows whose scales jump by
    orders of magnitude make the carried cut-off far too tight or too loose, which must only cost
    time (resampling, extending a list), never change a mask."""
    W, smr, var, scaler, mean = make_inputs(40, 2048, seed=9)
    scale = torch.tensor([10.0 ** ((i * 7) % 5 - 2) for i in range(40)]).unsqueeze(1)
    W = W * scale
    for kw in ({}, {"max_cycle_time": 200}, {"max_cycle_time": 5}, {"objective": "mse", "mean": mean}):
        check(W, smr, var, scaler, update_threshold=0.0, **pattern, **kw)


def test_realistic_statistics_swap():
    W, smr, var, scaler, _ = make_inputs(64, 1024, seed=1)
    for kw in ({"sparsity": 0.6}, {"prune_n": 2, "prune_m": 4}):
        _, swaps = check(W, smr, var, scaler, **kw)
        assert (swaps > 0).float().mean() > 0.5, f"too few rows swap: {swaps.tolist()}"


@pytest.mark.parametrize("seed", range(40))
def test_random_cases(seed):
    rnd = random.Random(seed)
    rows, cols = rnd.choice([1, 3, 8, 17]), rnd.choice([8, 24, 64, 100, 256, 257, 520])
    dtype = rnd.choice(DTYPES)
    W, smr, var, scaler, mean = make_inputs(rows, cols, dtype=dtype, seed=seed, realistic=rnd.random() < 0.7)
    kw = {"max_cycle_time": rnd.choice([0, 1, 3, 50, 500]),
          "update_threshold": rnd.choice([0.0, 0.1, 1.0]),
          "pow_of_var_regrowing": rnd.choice([0.0, 0.5, 1.0, 2.0])}
    if cols % 8 == 0 and rnd.random() < 0.4:
        kw["prune_n"], kw["prune_m"] = rnd.choice([(2, 4), (4, 8), (1, 8), (6, 8)])
    else:
        kw["sparsity"] = rnd.choice([0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.95])
        kw["without_same_sign"] = rnd.random() < 0.5
    if rnd.random() < 0.3:
        kw["initial_metric"] = torch.round(torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed)) * 6)
    if rnd.random() < 0.3:
        kw["objective"], kw["mean"] = "mse", mean
    if rnd.random() < 0.3:
        var = var.clone()
        var[rnd.randrange(cols)::rnd.randrange(2, 6)] = 0.0
    check(W, smr, var, scaler, **kw)


def test_poison_every_element_written(monkeypatch):
    monkeypatch.setenv("DSNOT_KERNELS_POISON", "1")
    W, smr, var, scaler, mean = make_inputs(9, 320, seed=4)
    for kw in ({}, {"max_cycle_time": 0}, {"prune_n": 2, "prune_m": 4}, {"objective": "mse", "mean": mean}):
        mask, swaps = check(W, smr, var, scaler, **kw)
        assert int(mask.view(torch.uint8).max()) <= 1 and int(swaps.min()) >= 0
    op = torch.ops.dsnot_kernels.refine_mask.default
    mask, swaps = op(W, smr, var, scaler, None, None, None, 0.5, 0, 0, 50, 0.1, 1.0, False, 0)
    assert int(mask.view(torch.uint8).max()) <= 1 and int(swaps.min()) >= 0


def test_poison_sentinel_is_visible_on_empty_work(monkeypatch):
    """The sentinel really is written (so the test above proves something): rows == 0 returns at once."""
    monkeypatch.setenv("DSNOT_KERNELS_POISON", "1")
    op = torch.ops.dsnot_kernels.refine_mask.default
    z = torch.zeros(4)
    mask, swaps = op(torch.zeros(0, 4), z, z, z, None, None, None, 0.5, 0, 0, 50, 0.1, 1.0, False, 0)
    assert mask.shape == (0, 4) and swaps.shape == (0,)


@pytest.mark.parametrize("shape", [(0, 4), (0, 0), (3, 0)], ids=str)
def test_poison_on_empty_shapes(monkeypatch, shape):
    """Regression (UBSan, benchmarks/sanitize_cpu.sh): with poison on, an empty mask (data pointer
    null) was memset: ``memset(nullptr, 0x5A, 0)`` is undefined behaviour (nonnull-attribute). Only a
    sanitized build sees it; every build checks the outputs."""
    monkeypatch.setenv("DSNOT_KERNELS_POISON", "1")
    op = torch.ops.dsnot_kernels.refine_mask.default
    rows, cols = shape
    z = torch.zeros(cols)
    for nm in ((0, 0), (2, 4)):
        mask, swaps = op(torch.zeros(rows, cols), z, z, z, None, None, None, 0.5, *nm, 50, 0.1, 1.0, False, 0)
        assert mask.shape == shape and mask.dtype == torch.bool
        assert swaps.shape == (rows,) and swaps.tolist() == [0] * rows


def test_thread_pool_path():
    """Enough weights (>= 2**21) that run_rows splits the rows over 2 threads (below it the call runs
    on the calling thread alone): same masks and swaps as the reference and as one thread."""
    W, smr, var, scaler, mean = make_inputs(1040, 2048, seed=3)
    n = torch.get_num_threads()
    try:
        for kw in ({"sparsity": 0.6}, {"prune_n": 2, "prune_m": 4}, {"objective": "mse", "mean": mean}):
            torch.set_num_threads(2)
            many = check(W, smr, var, scaler, **kw)
            torch.set_num_threads(1)
            one = dk.refine_mask(W, smr, var, scaler, backend="cpu", return_swaps=True, **kw)
            assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1]), kw
    finally:
        torch.set_num_threads(n)


def test_cpu_is_the_automatic_choice():
    assert dk.available_backends("cpu")[0] == "cpu"


def test_checks_at_the_cpp_boundary():
    op = torch.ops.dsnot_kernels.refine_mask.default
    W = torch.randn(4, 8)
    s = torch.ones(8)
    args = [W, s, s, s, None, None, None, 0.5, 0, 0, 50, 0.1, 1.0, False, 0]

    def expect(msg, **change):
        a = list(args)
        names = ["weight", "sum_metric_row", "var", "scaler_row", "initial_metric", "initial_mask", "mean",
                 "sparsity", "prune_n", "prune_m", "max_cycle_time", "update_threshold", "pow", "same_sign",
                 "objective"]
        for k, v in change.items():
            a[names.index(k)] = v
        with pytest.raises(RuntimeError, match=msg):
            op(*a)

    expect("weight must be 2-D", weight=torch.randn(8))
    expect("weight must be float32", weight=W.double())
    expect("weight must be contiguous", weight=torch.randn(8, 4).t())
    expect("sum_metric_row must have shape", sum_metric_row=torch.ones(7))
    expect("var must be float32", var=torch.ones(8, dtype=torch.float64))
    expect("scaler_row must be contiguous", scaler_row=torch.ones(16)[::2])
    expect("initial_metric must have shape", initial_metric=torch.ones(4, 7))
    expect("initial_mask must be bool", initial_mask=torch.ones(4, 8))
    expect("mean", objective=1)
    expect("objective must be", objective=2)
    expect("sparsity must be", sparsity=1.0)
    expect("N:M needs", prune_n=4, prune_m=4)
    expect("divisible", prune_n=2, prune_m=3)
    expect("max_cycle_time", max_cycle_time=-1)
    expect("update_threshold", update_threshold=-0.5)
