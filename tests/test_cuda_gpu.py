"""GPU parity of the CUDA backend: masks and swap counts identical to the PyTorch reference.

Skipped without a CUDA device or without the compiled CUDA kernel. The reference runs on the same
device (and, for small cases, on the CPU too). Run on a GPU machine with
``python -m pytest -q tests/test_cuda_gpu.py`` (benchmarks/gpu_check.sh does).
"""

import pytest
import torch

import dsnot_kernels as dk
from dsnot_kernels import _extension

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(not _extension.has_kernel("CUDA"), reason="extension built without the CUDA kernel"),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_inputs(rows, cols, dtype=torch.float32, seed=0, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g).to(dtype)
    smr = torch.randn(cols, generator=g)
    var = torch.rand(cols, generator=g) + 0.05
    scaler = torch.rand(cols, generator=g) + 0.01
    mean = torch.randn(cols, generator=g)
    return [t.to(device) for t in (W, smr, var, scaler, mean)]


def check(W, smr, var, scaler, cpu_too=False, **kw):
    mask, swaps = dk.refine_mask(W, smr, var, scaler, backend="cuda", return_swaps=True, **kw)
    ref, ref_swaps = dk.refine_mask(W, smr, var, scaler, backend="torch", return_swaps=True, **kw)
    assert mask.dtype == torch.bool and mask.device == W.device and swaps.dtype == torch.int32
    bad = (mask != ref).any(1).nonzero().flatten().tolist()
    assert not bad, f"{len(bad)} rows differ from the reference, first {bad[:8]}"
    assert torch.equal(swaps, ref_swaps), "swap counts differ from the reference"
    if cpu_too:
        kw_cpu = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        ref_cpu = dk.refine_mask(W.cpu(), smr.cpu(), var.cpu(), scaler.cpu(), backend="torch", **kw_cpu)
        assert torch.equal(mask.cpu(), ref_cpu), "CUDA mask differs from the CPU reference"
    return mask, swaps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 41), (41, 341), (33, 256), (16, 4099), (64, 4096)])
@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_unstructured(dtype, shape, sparsity):
    W, smr, var, scaler, _ = make_inputs(*shape, dtype=dtype, seed=shape[1])
    check(W, smr, var, scaler, sparsity=sparsity, cpu_too=shape[0] * shape[1] <= 20000)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nm", [(2, 4), (4, 8), (1, 4), (3, 4)])
@pytest.mark.parametrize("cols", [8, 344, 4096])
def test_nm(dtype, nm, cols):
    W, smr, var, scaler, _ = make_inputs(24, cols, dtype=dtype, seed=cols + nm[0])
    check(W, smr, var, scaler, prune_n=nm[0], prune_m=nm[1], update_threshold=0.01, cpu_too=cols <= 344)


@pytest.mark.parametrize("nm", [(0, 0), (2, 4)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_objective_mse(nm, dtype):
    W, smr, var, scaler, mean = make_inputs(32, 1024, dtype=dtype, seed=3)
    check(W, smr, var, scaler, objective="mse", mean=mean, prune_n=nm[0], prune_m=nm[1],
          update_threshold=0.0, max_cycle_time=120)


@pytest.mark.parametrize("max_cycle_time", [0, 1, 50, 64, 65, 300, 5000])
def test_cycles_and_exhausted_cursors(max_cycle_time):
    # cols < cycle count: cursors run dry; more than 64 cycles: lists are refilled on demand.
    W, smr, var, scaler, _ = make_inputs(12, 200, seed=5)
    check(W, smr, var, scaler, max_cycle_time=max_cycle_time, update_threshold=0.0)
    check(W, smr, var, scaler, max_cycle_time=max_cycle_time, update_threshold=0.0, prune_n=2, prune_m=4)


def test_degenerate_rows():
    W, smr, var, scaler, _ = make_inputs(16, 1000, seed=7)
    var[::3] = 0.0            # growth keys +-inf, no candidate where dm == 0
    smr[5::11] = 0.0          # dm == 0
    W[:, 100:300] = 0.5       # ties everywhere
    W[1] = 0.25               # a constant row
    W[2] = 0.0                # a zero row
    scaler[50:60] = 0.0
    for kw in (dict(), dict(prune_n=2, prune_m=4), dict(objective="mse", mean=torch.ones_like(smr))):
        check(W, smr, var, scaler, update_threshold=0.0, max_cycle_time=150, cpu_too=True, **kw)


def test_initial_metric_and_mask():
    W, smr, var, scaler, _ = make_inputs(8, 512, seed=9)
    metric = torch.randn(8, 512, device="cuda")
    metric[:, ::7] = float("inf")
    metric[:, 3::9] = float("-inf")
    check(W, smr, var, scaler, initial_metric=metric, sparsity=0.3, update_threshold=0.0)
    check(W, smr, var, scaler, initial_metric=metric, prune_n=2, prune_m=4, update_threshold=0.0)
    check(W, smr, var, scaler, initial_mask=torch.rand(8, 512, device="cuda") < 0.4, update_threshold=0.0)


@pytest.mark.parametrize("p", [0.0, 0.5, 2.0])
def test_pow_of_var_and_same_sign(p):
    W, smr, var, scaler, _ = make_inputs(16, 333, seed=10)
    check(W, smr, var, scaler, pow_of_var_regrowing=p, without_same_sign=False, update_threshold=0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_long_rows(dtype):
    W, smr, var, scaler, _ = make_inputs(6, 32768, dtype=dtype, seed=14)
    check(W, smr, var, scaler, sparsity=0.5)
    check(W, smr, var, scaler, prune_n=2, prune_m=4)


def test_llama_shape_rows():
    W, smr, var, scaler, _ = make_inputs(256, 11008, dtype=torch.float16, seed=15)
    check(W, smr, var, scaler, sparsity=0.6)


def test_poisoned_outputs_are_fully_written(monkeypatch):
    monkeypatch.setenv("DSNOT_KERNELS_POISON", "1")
    W, smr, var, scaler, _ = make_inputs(37, 1003, dtype=torch.bfloat16, seed=16)
    mask, swaps = dk.refine_mask(W, smr, var, scaler, backend="cuda", return_swaps=True)
    raw = mask.view(torch.uint8)
    assert bool(((raw == 0) | (raw == 1)).all()), "unwritten mask bytes (0x5A)"
    assert bool((swaps >= 0).all()), "unwritten swap counts (-777)"
    check(W, smr, var, scaler)


@pytest.mark.parametrize("layout", ["0", "1", "2", "3"])
def test_shared_memory_layouts(layout, monkeypatch):
    # Every shared-memory layout the launcher may pick gives the reference's masks.
    monkeypatch.setenv("DSNOT_KERNELS_CUDA_LAYOUT", layout)
    W, smr, var, scaler, mean = make_inputs(40, 2048, dtype=torch.float16, seed=22)
    check(W, smr, var, scaler, sparsity=0.6, update_threshold=0.0, max_cycle_time=150)
    check(W, smr, var, scaler, prune_n=2, prune_m=4, update_threshold=0.0)
    check(W, smr, var, scaler, objective="mse", mean=mean, update_threshold=0.0, max_cycle_time=100)
    W, smr, var, scaler, _ = make_inputs(4, 28672, dtype=torch.float32, seed=23)
    check(W, smr, var, scaler, sparsity=0.5)


def test_runs_on_the_current_stream():
    W, smr, var, scaler, _ = make_inputs(64, 2048, seed=17)
    ref = dk.refine_mask(W, smr, var, scaler, backend="torch")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        mask = dk.refine_mask(W, smr, var, scaler, backend="cuda")
    s.synchronize()
    assert torch.equal(mask, ref)


def test_cuda_is_the_automatic_choice():
    assert dk.available_backends("cuda")[0] == "cuda"


def test_too_long_rows_raise_clearly():
    W, smr, var, scaler, _ = make_inputs(1, (1 << 20) + 4, seed=18)
    with pytest.raises(RuntimeError, match="too long"):
        dk.refine_mask(W, smr, var, scaler, backend="cuda")


def test_checks_at_the_cpp_boundary():
    W, smr, var, scaler, _ = make_inputs(4, 64, seed=19)
    op = torch.ops.dsnot_kernels.refine_mask.default
    args = [W, smr, var, scaler, None, None, None, 0.5, 0, 0, 50, 0.1, 1.0, False, 0]
    with pytest.raises(RuntimeError, match="contiguous"):
        op(*([W.t().contiguous().t()] + args[1:]))
    with pytest.raises(RuntimeError, match="float32"):
        op(*([W, smr.double()] + args[2:]))
    with pytest.raises(RuntimeError):
        op(*([W, smr.cpu()] + args[2:]))


def test_opcheck():
    W, smr, var, scaler, _ = make_inputs(4, 64, seed=20)
    args = (W, smr, var, scaler, None, None, None, 0.5, 0, 0, 50, 0.1, 1.0, False, 0)
    torch.library.opcheck(torch.ops.dsnot_kernels.refine_mask.default, args,
                          test_utils=("test_schema", "test_faketensor"))
