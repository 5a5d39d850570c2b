"""The CUDA kernel's logic, run without a GPU: the kernel body (csrc/cuda/dsnot_kernels.cuh)
compiled as host C++ on a SIMT emulation of one thread block per row (csrc/cuda/simt_host.h),
compared mask-for-mask and swap-for-swap with the PyTorch reference.

The emulation runs every thread of the block with its barriers and warp primitives (and reports a
barrier that can deadlock), so selection, the fixed-order error sum, list refills and the swap loop
are all exercised; device-only concerns (real races, memory errors, nvcc code generation) are
covered by tests/test_cuda_gpu.py and compute-sanitizer on a GPU (benchmarks/gpu_check.sh).
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cuda_emulation  # noqa: E402
from dsnot_kernels.objectives.reference import refine_mask_reference  # noqa: E402

pytestmark = pytest.mark.skipif(cuda_emulation.compiler() is None, reason="no C++ compiler")


def make_inputs(rows, cols, dtype=torch.float32, seed=0, mean=False):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g).to(dtype)
    smr = torch.randn(cols, generator=g)
    var = torch.rand(cols, generator=g) + 0.05
    scaler = torch.rand(cols, generator=g) + 0.01
    mu = torch.randn(cols, generator=g) if mean else None
    return W, smr, var, scaler, mu


def run_both(W, smr, var, scaler, *, initial_metric=None, initial_mask=None, mean=None, sparsity=0.5,
             prune_n=0, prune_m=0, max_cycle_time=50, update_threshold=0.1, p=1.0, same_sign=False,
             objective=0, stage_weight=True, cache_keys=True):
    args = (W, smr, var, scaler, initial_metric, initial_mask, mean, sparsity if prune_n == 0 else 0.0,
            prune_n, prune_m, max_cycle_time, update_threshold, p, True if prune_n else same_sign, objective)
    mask, swaps = cuda_emulation.refine_mask_emulated(*args, stage_weight=stage_weight, cache_keys=cache_keys)
    ref_mask, ref_swaps = refine_mask_reference(*args)
    bad = (mask != ref_mask).any(1).nonzero().flatten().tolist()
    assert not bad, f"rows {bad[:8]} differ from the reference"
    assert torch.equal(swaps, ref_swaps), f"swaps {swaps.tolist()} != {ref_swaps.tolist()}"
    return mask, swaps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cols", [1, 7, 255, 256, 257, 1000])
def test_unstructured_shapes_dtypes(dtype, cols):
    W, smr, var, scaler, _ = make_inputs(3, cols, dtype, seed=cols)
    run_both(W, smr, var, scaler, sparsity=0.6, max_cycle_time=50, update_threshold=0.05)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 4), (5, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nm(n, m, dtype):
    W, smr, var, scaler, _ = make_inputs(3, 40 * m // 4 if m != 40 else 400, dtype, seed=n * 10 + m)
    run_both(W, smr, var, scaler, prune_n=n, prune_m=m, update_threshold=0.01)


@pytest.mark.parametrize("nm", [(0, 0), (2, 4)])
def test_objective_mse(nm):
    W, smr, var, scaler, mu = make_inputs(4, 512, seed=3, mean=True)
    run_both(W, smr, var, scaler, mean=mu, prune_n=nm[0], prune_m=nm[1], objective=1, update_threshold=0.0,
             max_cycle_time=80)


@pytest.mark.parametrize("max_cycle_time", [0, 1, 64, 65, 200, 1000])
def test_cycle_counts_and_refills(max_cycle_time):
    # cols < cycle count: every cursor list runs dry; > kListChunk cycles: on-demand refills.
    W, smr, var, scaler, _ = make_inputs(3, 300, seed=5)
    run_both(W, smr, var, scaler, max_cycle_time=max_cycle_time, update_threshold=0.0)


def test_refills_mse_unstructured():
    W, smr, var, scaler, mu = make_inputs(2, 700, seed=6, mean=True)
    run_both(W, smr, var, scaler, mean=mu, objective=1, max_cycle_time=400, update_threshold=0.0)


def test_degenerate_var_zero_and_ties():
    W, smr, var, scaler, _ = make_inputs(4, 520, seed=7)
    var[::3] = 0.0                      # growth keys +-inf, or no candidate where dm == 0
    smr[5::11] = 0.0                    # dm == 0: never a candidate
    W[:, 100:200] = 0.5                 # ties in every metric
    W[1] = 0.25                         # a row of equal weights
    scaler[50:60] = 0.0                 # wanda 0 ties
    run_both(W, smr, var, scaler, update_threshold=0.0, max_cycle_time=120)
    run_both(W, smr, var, scaler, prune_n=2, prune_m=4, update_threshold=0.0, max_cycle_time=120)


def test_negative_zero_and_zero_weights():
    W, smr, var, scaler, _ = make_inputs(3, 256, seed=8)
    W[0, ::2] = -0.0
    W[1, ::3] = 0.0
    run_both(W, smr, var, scaler, update_threshold=0.0)


def test_initial_metric_with_infinities_and_initial_mask():
    W, smr, var, scaler, _ = make_inputs(3, 400, seed=9)
    g = torch.Generator().manual_seed(1)
    metric = torch.randn(3, 400, generator=g)
    metric[:, ::7] = float("inf")
    metric[:, 3::9] = float("-inf")
    metric[0, :50] = -0.0
    run_both(W, smr, var, scaler, initial_metric=metric, sparsity=0.3, update_threshold=0.0)
    run_both(W, smr, var, scaler, initial_metric=metric, prune_n=2, prune_m=4, update_threshold=0.0)
    imask = torch.rand(3, 400, generator=g) < 0.4
    run_both(W, smr, var, scaler, initial_mask=imask, update_threshold=0.0)
    nm_mask = torch.zeros(3, 400, dtype=torch.bool)
    nm_mask.view(3, 100, 4)[..., 1:3] = True
    run_both(W, smr, var, scaler, initial_mask=nm_mask, prune_n=2, prune_m=4, update_threshold=0.0)


@pytest.mark.parametrize("p", [0.0, 0.5, 2.0])
def test_pow_of_var_and_same_sign(p):
    W, smr, var, scaler, _ = make_inputs(4, 333, seed=10)
    run_both(W, smr, var, scaler, p=p, same_sign=True, update_threshold=0.0)
    run_both(W, smr, var, scaler, p=p, same_sign=False, update_threshold=0.2)


@pytest.mark.parametrize("sparsity", [0.0, 0.01, 0.999])
def test_extreme_sparsity(sparsity):
    W, smr, var, scaler, _ = make_inputs(2, 600, seed=11)
    run_both(W, smr, var, scaler, sparsity=sparsity, update_threshold=0.0)


def test_weight_read_from_global_memory():
    # The launcher reads the row from global memory when staging does not fit in shared memory.
    W, smr, var, scaler, _ = make_inputs(3, 776, torch.float16, seed=12)
    run_both(W, smr, var, scaler, stage_weight=False, update_threshold=0.0)
    run_both(W, smr, var, scaler, stage_weight=False, prune_n=2, prune_m=4, update_threshold=0.0)


@pytest.mark.parametrize("stage_weight,cache_keys", [(True, False), (False, True), (False, False)])
def test_shared_memory_options(stage_weight, cache_keys):
    # The launcher picks per device whether the row and the key cache live in shared memory;
    # every choice must give the same masks (the default, both on, runs in every other test).
    opts = dict(stage_weight=stage_weight, cache_keys=cache_keys, update_threshold=0.0)
    W, smr, var, scaler, mu = make_inputs(3, 300, torch.bfloat16, seed=21, mean=True)
    run_both(W, smr, var, scaler, max_cycle_time=150, **opts)
    run_both(W, smr, var, scaler, prune_n=2, prune_m=4, max_cycle_time=150, **opts)
    run_both(W, smr, var, scaler, mean=mu, objective=1, max_cycle_time=150, **opts)
    run_both(W, smr, var, scaler, mean=mu, objective=1, prune_n=2, prune_m=4, **opts)
    g = torch.Generator().manual_seed(2)
    metric = torch.randn(3, 300, generator=g)
    metric[:, ::5] = float("inf")
    run_both(W, smr, var, scaler, initial_metric=metric, prune_n=2, prune_m=4, **opts)
    run_both(W, smr, var, scaler, initial_mask=torch.rand(3, 300, generator=g) < 0.5, **opts)


def test_misaligned_rows():
    # cols * elem_size not a multiple of 16: the 16-byte staging/store paths fall back per row.
    W, smr, var, scaler, _ = make_inputs(5, 4099, torch.bfloat16, seed=13)
    run_both(W, smr, var, scaler, sparsity=0.7)


@pytest.mark.slow
def test_long_row():
    W, smr, var, scaler, _ = make_inputs(1, 32768, torch.float16, seed=14)
    run_both(W, smr, var, scaler, sparsity=0.5)
    run_both(W, smr, var, scaler, prune_n=2, prune_m=4)


@pytest.mark.parametrize("seed", range(6))
def test_random_configurations(seed):
    g = torch.Generator().manual_seed(100 + seed)
    cols = int(torch.randint(1, 900, (1,), generator=g))
    nm = seed % 3 == 0
    m = 4 if nm else 0
    if nm:
        cols = max(4, cols - cols % 4)
    dtype = [torch.float32, torch.float16, torch.bfloat16][seed % 3]
    W, smr, var, scaler, mu = make_inputs(3, cols, dtype, seed=seed, mean=True)
    objective = seed % 2
    run_both(W, smr, var, scaler, mean=mu if objective else None, sparsity=float(torch.rand(1, generator=g)) * 0.9,
             prune_n=2 if nm else 0, prune_m=m, objective=objective,
             max_cycle_time=int(torch.randint(0, 150, (1,), generator=g)),
             update_threshold=float(torch.rand(1, generator=g)) * 0.1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100))
def test_fuzz(seed):
    """Wide random inputs: patterns, dtypes, quantised weights (ties), dead channels, metrics, masks,
    p, thresholds, cycle counts, both objectives, every shared-memory layout."""
    import random

    rnd = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    m = rnd.choice([0, 0, 4, 8, 2])
    n = rnd.randint(1, m - 1) if m else 0
    cols = rnd.randint(1, 1500)
    if m:
        cols = max(m, cols - cols % m)
    rows = rnd.randint(1, 4)
    W = (torch.randn(rows, cols, generator=g) * rnd.choice([0.02, 1.0])).to(
        rnd.choice([torch.float32, torch.float16, torch.bfloat16]))
    if rnd.random() < 0.3:
        W = (W * 4).round() / 4
    smr = torch.randn(cols, generator=g) * rnd.choice([0.1, 1, 5])
    var = torch.rand(cols, generator=g) * rnd.choice([0.1, 2])
    if rnd.random() < 0.3:
        var[torch.rand(cols, generator=g) < 0.2] = 0
    scaler = torch.rand(cols, generator=g)
    objective = rnd.choice([0, 0, 1])
    kw = {}
    r = rnd.random()
    if r < 0.2:
        kw["initial_metric"] = torch.randn(rows, cols, generator=g)
    elif r < 0.35 and not m:
        kw["initial_mask"] = torch.rand(rows, cols, generator=g) < rnd.random()
    run_both(W, smr, var, scaler, mean=torch.randn(cols, generator=g) if objective else None,
             sparsity=rnd.random() * 0.95, prune_n=n, prune_m=m, max_cycle_time=rnd.choice([0, 1, 10, 50, 70, 200]),
             update_threshold=rnd.choice([0.0, 0.01, 0.1, 1.0]), p=rnd.choice([1.0, 1.0, 0.0, 0.5, 2.0]),
             same_sign=rnd.random() < 0.5, objective=objective, stage_weight=rnd.random() < 0.7,
             cache_keys=rnd.random() < 0.7, **kw)
