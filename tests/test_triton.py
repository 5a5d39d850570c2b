"""Triton backend == PyTorch reference, bit for bit (masks and swap counts), under the interpreter.

Without a GPU, conftest.py sets TRITON_INTERPRET=1 and the kernels run on CPU tensors; with one,
the same tests run on CUDA. The interpreter is slow: a handful of rows, <= 256 columns; heavier
cases are marked slow.
"""
import os

import pytest
import torch

import dsnot_kernels as dk

pytest.importorskip("triton")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.skipif(DEV == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                       reason="no GPU and the Triton interpreter is off"),
    # the interpreter evaluates 0/0 growth keys (var == 0, dm == 0) with numpy, which warns
    pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning"),
]


def make(rows, cols, dtype=torch.float32, seed=0, ties=False, dead_var=False, zero_dm=False):
    """Random layer: weight (rows, cols) in ``dtype``; statistics (cols,) float32."""
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct magnitudes: equal metrics, equal keys, -0.0 and +0.0
        w = torch.randint(-3, 4, (rows, cols), generator=g).float() * 0.5
        w[w == 0] = -0.0
    else:
        w = torch.randn(rows, cols, generator=g)
    smr = torch.randn(cols, generator=g) * 2
    var = torch.rand(cols, generator=g) + 0.05
    scaler = torch.rand(cols, generator=g) + 0.1
    if ties:
        scaler = torch.ones(cols)
        smr = torch.randint(-2, 3, (cols,), generator=g).float()
    if dead_var:
        var[::3] = 0.0
    if zero_dm:
        smr[1::4] = 0.0
    mean = torch.randn(cols, generator=g)
    return (w.to(dtype).to(DEV), smr.to(DEV), var.to(DEV), scaler.to(DEV)), mean.to(DEV)


def check(args, **kw):
    """Runs both backends and asserts identical (mask, swaps); returns the swaps."""
    ref_mask, ref_swaps = dk.refine_mask(*args, backend="torch", return_swaps=True, **kw)
    mask, swaps = dk.refine_mask(*args, backend="triton", return_swaps=True, **kw)
    assert mask.dtype == torch.bool and mask.shape == ref_mask.shape
    assert swaps.dtype == torch.int32 and swaps.shape == ref_swaps.shape
    bad = (mask != ref_mask).nonzero()
    assert bad.numel() == 0, f"{bad.shape[0]} mask entries differ, first at {bad[0].tolist()}"
    assert torch.equal(swaps, ref_swaps), (swaps.tolist(), ref_swaps.tolist())
    return ref_swaps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(7, 100), (1, 64)])
def test_unstructured(dtype, shape):
    args, _ = make(*shape, dtype=dtype, seed=1)
    swaps = check(args, sparsity=0.5, update_threshold=0.01)
    assert int(swaps.sum()) > 0  # the swap loop really ran


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nm(n, m, dtype):
    args, _ = make(5, 96, dtype=dtype, seed=2)
    swaps = check(args, prune_n=n, prune_m=m, update_threshold=0.01)
    assert int(swaps.sum()) > 0


@pytest.mark.parametrize("kw", [dict(), dict(prune_n=2, prune_m=4)], ids=["unstructured", "2:4"])
def test_mse(kw):
    args, mean = make(4, 128, seed=3)
    swaps = check(args, objective="mse", mean=mean, update_threshold=0.0, **kw)
    assert int(swaps.sum()) > 0


@pytest.mark.parametrize("case", ["ties", "dead_var", "zero_dm"])
def test_degenerate_rows(case):
    args, mean = make(4, 64, seed=4, **{case: True})
    check(args, sparsity=0.6, update_threshold=0.0)
    check(args, prune_n=2, prune_m=4, update_threshold=0.0)
    check(args, objective="mse", mean=mean, update_threshold=0.0)


def test_fewer_columns_than_cycles_and_exhausted_cursors():
    # 8 columns, 50 cycles, threshold 0: every row runs its cursors dry (or hits err == 0)
    args, mean = make(6, 8, seed=5)
    check(args, sparsity=0.5, update_threshold=0.0, max_cycle_time=50)
    check(args, prune_n=2, prune_m=4, update_threshold=0.0, max_cycle_time=50)
    check(args, prune_n=3, prune_m=4, update_threshold=0.0, max_cycle_time=50)
    check(args, objective="mse", mean=mean, prune_n=2, prune_m=4, update_threshold=0.0)


def test_same_sign_pow_and_sparsity_edges():
    args, _ = make(3, 100, seed=6)
    check(args, sparsity=0.37, without_same_sign=False, update_threshold=0.01)
    check(args, sparsity=0.5, pow_of_var_regrowing=0.0, update_threshold=0.01)
    check(args, sparsity=0.5, pow_of_var_regrowing=0.5, update_threshold=0.01)
    check(args, sparsity=0.0)           # nothing pruned, err == 0: no swap
    check(args, sparsity=0.99, update_threshold=0.01)
    check(args, sparsity=0.5, max_cycle_time=0)


def test_initial_mask_and_metric():
    args, mean = make(4, 64, seed=7, ties=True)
    g = torch.Generator().manual_seed(8)
    metric = torch.randint(0, 4, (4, 64), generator=g).float()   # heavy ties
    metric[0, :5] = -0.0
    metric[1, :3] = float("inf")
    metric[2, 3:7] = float("-inf")
    metric = metric.to(DEV)
    check(args, initial_metric=metric, sparsity=0.5, update_threshold=0.0)
    check(args, initial_metric=metric, prune_n=2, prune_m=4, update_threshold=0.0)
    check(args, initial_metric=metric, prune_n=4, prune_m=8, objective="mse", mean=mean,
          update_threshold=0.0)
    init = torch.rand(4, 64, generator=g) < 0.4
    check(args, initial_mask=init.to(DEV), update_threshold=0.0)
    check(args, initial_mask=init.to(DEV), max_cycle_time=0)
    nm = dk.refine_mask(*args, prune_n=2, prune_m=4, max_cycle_time=0, backend="torch")
    check(args, initial_mask=nm, prune_n=2, prune_m=4, update_threshold=0.0)


def test_initial_selection_only():
    # the threshold select alone: signed metrics, heavy ties, +-inf, -0.0, awkward k
    args, _ = make(3, 50, seed=14)
    g = torch.Generator().manual_seed(15)
    metric = (torch.randint(-4, 5, (3, 50), generator=g).float() * 1e30)
    metric[0, ::7] = float("-inf")
    metric[1, ::5] = float("inf")
    metric[2, metric[2] == 0] = -0.0
    metric[2, :4] = torch.tensor([1e-45, -1e-45, 3.4e38, -3.4e38])  # subnormal and huge
    for sparsity in (0.02, 0.37, 0.5, 0.73, 0.98):
        check(args, initial_metric=metric.to(DEV), sparsity=sparsity, max_cycle_time=0)


def test_poison_every_element_written(monkeypatch):
    from dsnot_kernels.triton import refine_mask_triton

    monkeypatch.setenv("DSNOT_KERNELS_POISON", "1")
    args, _ = make(3, 40, seed=9)
    seen = {}

    def spy(*a):
        mask, swaps = refine_mask_triton(*a)
        seen["bytes"], seen["swaps"] = mask.view(torch.uint8).clone(), swaps.clone()
        return mask, swaps

    import dsnot_kernels.ops as ops

    monkeypatch.setitem(ops.BACKENDS, "triton", ops.BACKENDS["triton"]._replace(fn=spy))
    for kw in (dict(sparsity=0.5), dict(prune_n=2, prune_m=4)):
        check(args, update_threshold=0.01, **kw)
        assert bool(((seen["bytes"] == 0) | (seen["bytes"] == 1)).all())
        assert bool((seen["swaps"] >= 0).all())


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_wider_rows(dtype):
    args, mean = make(13, 256, dtype=dtype, seed=10)
    check(args, sparsity=0.6, update_threshold=0.001)
    check(args, prune_n=4, prune_m=8, update_threshold=0.001)
    check(args, objective="mse", mean=mean, update_threshold=0.0, max_cycle_time=80)


@pytest.mark.parametrize("chunk", [32, pytest.param(16, marks=pytest.mark.slow)])
def test_multi_chunk_rows(monkeypatch, chunk):
    """Real rows span many CHUNK-column chunks (1024 columns each); force small chunks so the
    carries across chunks (tie ranks, cursor reductions, group loads) are exercised here."""
    monkeypatch.setenv("DSNOT_TRITON_LAUNCH", f"{chunk}:1")
    args, mean = make(2, 96, seed=11, ties=True)
    check(args, sparsity=0.5, update_threshold=0.0, max_cycle_time=20)
    check(args, prune_n=2, prune_m=4, update_threshold=0.0, max_cycle_time=20)
    check(args, prune_n=4, prune_m=8, objective="mse", mean=mean, update_threshold=0.0,
          max_cycle_time=20)


def test_more_than_256_columns():
    # several steps of the 256-lane error sum, a partial last lane block
    args, mean = make(2, 300, seed=12)
    check(args, sparsity=0.5, update_threshold=0.01, max_cycle_time=20)
    check(args, objective="mse", mean=mean, update_threshold=0.0, max_cycle_time=20)


@pytest.mark.slow
def test_llama3_70b_width():
    # one row as wide as Llama-3-70B's down_proj input (28672) rounded up to 32768: 64 chunks
    args, mean = make(1, 32768, dtype=torch.bfloat16, seed=13)
    check(args, sparsity=0.6, update_threshold=0.01)
    check(args, prune_n=2, prune_m=4, update_threshold=0.01)
    check(args, objective="mse", mean=mean, update_threshold=0.0)


def test_bfloat16_subnormal_weights():
    # Triton 3.9's interpreter widens bf16 subnormals wrongly; the kernels widen the bits themselves
    args, mean = make(3, 48, dtype=torch.float32, seed=16)
    w = args[0].clone()
    w[:, ::3] *= 1e-39  # bf16 subnormals (and some that round to zero)
    args = (w.to(torch.bfloat16),) + args[1:]
    check(args, sparsity=0.5, update_threshold=0.0, max_cycle_time=10)
    check(args, prune_n=1, prune_m=3, update_threshold=0.0, max_cycle_time=10)
    check(args, objective="mse", mean=mean, update_threshold=0.0, max_cycle_time=10)
