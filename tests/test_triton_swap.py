"""The Triton kernel of objective 4 ("swap"): its bounded search == its full scan == the PyTorch
reference == the CPU kernel, bit for bit (masks and swap counts).

docs/KERNEL_CONTRACT.md "Objective 4"; dsnot_kernels/triton/swap.py. Each case runs
``refine_mask(objective="swap")`` with ``backend="torch"``, ``backend="cpu"`` (when the extension
has the kernel) and ``backend="triton"`` twice: the bounded search (``swap_search=0``, the
launcher's default) and the full scan of every pair (``swap_search=1``). The bounded search must
return the full scan's pair cycle after cycle, reading no more pairs than it (beyond the one new
column of pairs per swap that keeps its bounds valid). Without a GPU the kernels run under
``TRITON_INTERPRET=1`` (conftest.py): a few rows, <= 64 columns.
"""
from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import pytest
import torch

from correlated_inputs import correlated_layer, on_device
import dsnot_kernels as dk
from dsnot_kernels import _extension

pytest.importorskip("triton")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
HAS_CPU = _extension.has_kernel("CPU", "refine_mask_swap")
pytestmark = [
    pytest.mark.skipif(DEV == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                       reason="no GPU and the Triton interpreter is off"),
    pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning"),
]
BIG = 10**6  # a cap no row reaches: rows run to their local optimum


def correlated(rows, cols, dtype=torch.float32, seed=0, common=0.0, mixing=0.2, tokens=48):
    """Weight and statistics of inputs with correlated channels (``correlated_inputs.correlated_layer``)."""
    return on_device(*correlated_layer(rows, cols, dtype, seed, common, mixing, tokens), DEV)

def triton_run(monkeypatch, args, M, search, **kw):
    """``refine_mask(backend="triton")`` with the swap kernel's search forced; (mask, swaps, pairs)."""
    from dsnot_kernels.triton import cov_launch

    pairs = torch.full((args[0].shape[0],), -1, dtype=torch.int64, device=args[0].device)
    real = cov_launch.refine_mask_cov_triton
    with monkeypatch.context() as mp:
        mp.setattr(cov_launch, "refine_mask_cov_triton",
                   functools.partial(real, swap_search=search, swap_pairs=pairs))
        mask, swaps = dk.refine_mask(*args, second_moment=M, objective="swap", backend="triton",
                                     return_swaps=True, **kw)
    return mask, swaps, pairs


def same(ref, got, what, kw):
    bad = (ref[0] != got[0]).any(1).nonzero().flatten().tolist()
    assert not bad, f"{what}: masks differ in rows {bad[:10]} ({kw})"
    assert torch.equal(ref[1].cpu(), got[1].cpu()), f"{what}: swaps differ: {ref[1].tolist()} vs {got[1].tolist()}"


def check(monkeypatch, W, st, M=None, **kw):
    """torch == cpu == triton bounded == triton full scan; returns (swaps, pairs bounded, pairs full)."""
    args = (W, st.sum_metric_row, st.var, st.scaler_row)
    M = st.hessian if M is None else M
    kw.setdefault("max_cycle_time", BIG)
    ref = dk.refine_mask(*args, second_moment=M, objective="swap", backend="torch", return_swaps=True, **kw)
    if HAS_CPU:
        cpu_args = tuple(a.cpu() for a in args)
        cpu_kw = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in kw.items()}
        got = dk.refine_mask(*cpu_args, second_moment=M.cpu(), objective="swap", backend="cpu",
                             return_swaps=True, **cpu_kw)
        same((ref[0].cpu(), ref[1].cpu()), got, "cpu", kw)
    fast = triton_run(monkeypatch, args, M, 0, **kw)
    full = triton_run(monkeypatch, args, M, 1, **kw)
    same(ref, fast, "triton bounded", kw)
    same(ref, full, "triton full scan", kw)
    swaps, pf, pu = fast[1].long(), fast[2], full[2]
    assert bool((pf >= 0).all()) and bool((pu >= 0).all())
    cols = W.shape[1]
    assert bool((pf <= pu + swaps * cols).all()), f"bounded read more pairs: {pf.tolist()} vs {pu.tolist()}"
    return fast[1], pf, pu


DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m_dtype", [torch.float32, torch.float64], ids=str)
def test_correlated_dtypes(monkeypatch, dtype, m_dtype):
    """Strongly correlated channels (a shared component and strong mixing), every weight dtype,
    M kept float32 or given float64, to the local optimum."""
    W, st = correlated(3, 48, dtype, seed=1, common=1.0, mixing=0.5)
    swaps, pf, pu = check(monkeypatch, W, st, M=st.hessian.to(m_dtype), sparsity=0.5)
    assert int(swaps.min()) > 2  # several cycles: the carried bounds are used


@pytest.mark.parametrize("pattern", [dict(sparsity=0.3), dict(sparsity=0.7), dict(prune_n=2, prune_m=4)], ids=str)
def test_patterns(monkeypatch, pattern):
    W, st = correlated(3, 40, torch.float16, seed=2)
    swaps, _, _ = check(monkeypatch, W, st, **pattern)
    assert int(swaps.sum()) > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_ties(monkeypatch, seed):
    """Integer weights and a low-rank integer M: many exactly equal deltas and bounds, so the tie
    rule (lowest q, then lowest r) decides most cycles."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = 3, 24
    W = torch.randint(-2, 3, (rows, cols), generator=g).float().to(DEV)
    B = torch.randint(-1, 2, (cols, 3), generator=g).float()
    st = SimpleNamespace(hessian=(B @ B.t() + torch.diag((torch.arange(cols) % 3 == 0).float())).to(DEV),
                         sum_metric_row=torch.randint(-2, 3, (cols,), generator=g).float().to(DEV),
                         var=torch.randint(0, 2, (cols,), generator=g).float().to(DEV),
                         scaler_row=torch.randint(0, 3, (cols,), generator=g).float().to(DEV))
    for kw in (dict(sparsity=0.5), dict(sparsity=0.25), dict(prune_n=2, prune_m=4)):
        check(monkeypatch, W, st, **kw)
    # a caller's random mask: other kept/pruned patterns, the same ties
    init = (torch.rand((rows, cols), generator=g) < 0.5).to(DEV)
    check(monkeypatch, W, st, initial_mask=init)


def test_zero_channel_and_degenerate_rows(monkeypatch):
    """A dead input channel (zero row and column of M), an all-zero weight row, a zero diagonal."""
    W, st = correlated(4, 32, seed=5, common=0.5)
    W = W.clone()
    W[1] = 0.0
    M = st.hessian.clone()
    M[7, :] = 0.0
    M[:, 7] = 0.0
    M[11, 11] = 0.0  # not PSD: M_qr != 0 next to a zero diagonal
    for kw in (dict(sparsity=0.5), dict(sparsity=0.6), dict(prune_n=2, prune_m=4)):
        check(monkeypatch, W, st, M=M, **kw)


def test_cycle_cap(monkeypatch):
    """Rows stopped by the cap (their bounds mid-flight), and the cap 1."""
    W, st = correlated(4, 48, seed=6, common=1.0)
    swaps, _, _ = check(monkeypatch, W, st, sparsity=0.5, max_cycle_time=3)
    assert bool((swaps == 3).any())
    swaps, _, _ = check(monkeypatch, W, st, sparsity=0.5, max_cycle_time=1)
    assert bool((swaps == 1).all())
    check(monkeypatch, W, st, sparsity=0.5, max_cycle_time=None)  # the default cap


@pytest.mark.parametrize("cols", [37, 53])
def test_odd_widths_partial_tiles(monkeypatch, cols):
    """Widths that are not powers of two, in several CHUNK-column tiles with a partial last one."""
    monkeypatch.setenv("DSNOT_TRITON_LAUNCH", "16:1")
    W, st = correlated(3, cols, torch.bfloat16, seed=cols, common=0.7)
    swaps, _, _ = check(monkeypatch, W, st, sparsity=0.5)
    assert int(swaps.min()) > 0
    check(monkeypatch, W, st, sparsity=0.6, max_cycle_time=4)


def test_initial_masks_all_kept_and_all_pruned(monkeypatch):
    """A caller's mask with a fully pruned row (no kept q) and a fully kept one (no pruned r):
    those rows make no swap, the others are unaffected (rows are independent)."""
    W, st = correlated(3, 24, seed=7)
    g = torch.Generator().manual_seed(8)
    init = (torch.rand(W.shape, generator=g) < 0.5).to(DEV)
    init[0] = True
    swaps, _, _ = check(monkeypatch, W, st, initial_mask=init)
    assert int(swaps[0]) == 0 and int(swaps[2]) > 0
    # a fully kept row next to rows that still swap, in one chunk of the reference (its chunk loop
    # once returned early for every row of the chunk when one row kept every column)
    init[1] = False
    args = (W, st.sum_metric_row, st.var, st.scaler_row)
    ref = dk.refine_mask(*args, second_moment=st.hessian, objective="swap", backend="torch", return_swaps=True,
                         initial_mask=init, max_cycle_time=BIG)
    assert int(ref[1][2]) > 0
    for search in (0, 1):
        mask, swaps, pairs = triton_run(monkeypatch, args, st.hessian, search, initial_mask=init, max_cycle_time=BIG)
        assert not bool(mask[1].any()) and int(swaps[1]) == 0 and int(pairs[1]) == 0
        same(ref, (mask, swaps), f"triton search={search}", {})
    if HAS_CPU:
        got = dk.refine_mask(*(a.cpu() for a in args), second_moment=st.hessian.cpu(), objective="swap",
                             backend="cpu", return_swaps=True, initial_mask=init.cpu(), max_cycle_time=BIG)
        same((mask.cpu(), swaps.cpu()), got, "cpu", {})


def test_bounded_search_reads_fewer_pairs(monkeypatch):
    """On a correlated layer run to its local optimum the bounded search reads a fraction of the
    pairs of the full scan (the first cycle reads them all)."""
    W, st = correlated(4, 96, torch.float16, seed=9, common=1.0)
    swaps, pf, pu = check(monkeypatch, W, st, sparsity=0.5)
    assert int(swaps.sum()) >= 10
    assert int(pf.sum()) < 0.7 * int(pu.sum()), (pf.tolist(), pu.tolist())


def test_mask_bytes_are_0_or_1(monkeypatch):
    """The working marks (2: kept and scanned this cycle) never reach the result, whether a row
    stops at its local optimum or at the cap; poisoned outputs are all written."""
    monkeypatch.setenv("DSNOT_KERNELS_POISON", "1")
    from dsnot_kernels.triton import cov_launch

    W, st = correlated(3, 32, seed=10, common=1.0)
    args = (W, st.sum_metric_row, st.var, st.scaler_row)
    for cap in (BIG, 2):
        mask, swaps, pairs = triton_run(monkeypatch, args, st.hessian, 0, sparsity=0.5, max_cycle_time=cap)
        b = mask.view(torch.uint8)
        assert bool(((b == 0) | (b == 1)).all()) and bool((swaps >= 0).all()) and bool((pairs > 0).all())
    assert cov_launch.layer_bytes(3, 32, torch.float32, 0, swap_bounds=True)["bounds"] == 8 * 3 * 32 + 8 * 3 + 8 + 8 * 33


def without_cs(monkeypatch, args, M, **kw):
    """The bounded search with the Cauchy-Schwarz bound off (CS_K = 0): (mask, swaps, pairs)."""
    from dsnot_kernels.triton import cov_launch, swap

    with monkeypatch.context() as mp:
        mp.setattr(cov_launch, "swap_refine", functools.partial(swap.swap_refine, cs_k=0))
        return triton_run(monkeypatch, args, M, 0, **kw)


def test_cs_factors_match_the_cpu_definition():
    """z_j = s_j sqrt(rho_j) (1 + 1e-12) and its use flag: a zero channel keeps the bound, a
    nonzero entry next to a zero diagonal (rho infinite) or a negative diagonal turns it off."""
    from dsnot_kernels.triton.swap import cs_factors

    _, st = correlated(1, 24, seed=11)
    M = st.hessian.double()
    z = cs_factors(M)
    s = torch.sqrt(torch.diagonal(M))
    off = ~torch.eye(24, dtype=torch.bool, device=M.device)
    rho = torch.where(off, M.abs() / (s[:, None] * s[None, :]), torch.zeros((), dtype=M.dtype, device=M.device)).amax(1)
    assert torch.allclose(z[:24], s * torch.sqrt(rho), rtol=1e-11) and float(z[24]) == 1.0
    assert bool((M.abs() <= z[:24, None] * z[None, :24])[off].all())  # q != r
    Z = M.clone()
    Z[7, :] = 0.0
    Z[:, 7] = 0.0
    z = cs_factors(Z)
    assert float(z[24]) == 1.0 and float(z[7]) == 0.0
    Z[11, 11] = 0.0
    assert float(cs_factors(Z)[24]) == 0.0
    Z = M.clone()
    Z[3, 3] = -1.0
    assert float(cs_factors(Z)[24]) == 0.0


def weak(rows, cols, seed):
    """Weakly correlated channels: many tokens, little mixing (most rho_j small)."""
    return correlated(rows, cols, torch.float16, seed=seed, mixing=0.02, tokens=512)


def test_cauchy_schwarz_prunes_weakly_correlated(monkeypatch):
    """Weakly correlated channels: the Cauchy-Schwarz bound does most of the pruning; exact, and
    far fewer pairs than without it."""
    W, st = weak(3, 64, seed=12)
    swaps, pf, pu = check(monkeypatch, W, st, sparsity=0.5)
    assert int(swaps.sum()) >= 3
    args = (W, st.sum_metric_row, st.var, st.scaler_row)
    mask, sw, p0 = without_cs(monkeypatch, args, st.hessian, sparsity=0.5, max_cycle_time=BIG)
    assert torch.equal(sw.cpu(), swaps.cpu())
    assert int(pf.sum()) < 0.6 * int(p0.sum()), (pf.tolist(), p0.tolist())


def test_cauchy_schwarz_zero_channel(monkeypatch):
    """A dead channel (z = 0) with the bound on, and a weakly correlated layer with a zero weight row."""
    W, st = weak(3, 40, seed=13)
    W = W.clone()
    W[2] = 0.0
    M = st.hessian.clone()
    M[5, :] = 0.0
    M[:, 5] = 0.0
    for kw in (dict(sparsity=0.5), dict(sparsity=0.3)):
        check(monkeypatch, W, st, M=M, **kw)


def test_cauchy_schwarz_off_with_infinite_rho(monkeypatch):
    """A nonzero entry next to a zero diagonal: rho infinite, no Cauchy-Schwarz bound (the pairs
    read are those without it), still exact."""
    W, st = weak(3, 40, seed=14)
    M = st.hessian.clone()
    M[9, 9] = 0.0
    swaps, pf, _ = check(monkeypatch, W, st, M=M, sparsity=0.5)
    args = (W, st.sum_metric_row, st.var, st.scaler_row)
    _, _, p0 = without_cs(monkeypatch, args, M, sparsity=0.5, max_cycle_time=BIG)
    assert torch.equal(pf.cpu(), p0.cpu())


def test_cauchy_schwarz_reads_fewer_pairs_correlated(monkeypatch):
    """The correlated layer of test_bounded_search_reads_fewer_pairs: the Cauchy-Schwarz bound
    reads fewer pairs than the carried bounds alone."""
    W, st = correlated(4, 96, torch.float16, seed=9, common=1.0)
    swaps, pf, pu = check(monkeypatch, W, st, sparsity=0.5)
    args = (W, st.sum_metric_row, st.var, st.scaler_row)
    _, sw, p0 = without_cs(monkeypatch, args, st.hessian, sparsity=0.5, max_cycle_time=BIG)
    assert torch.equal(sw.cpu(), swaps.cpu())
    assert int(pf.sum()) < int(p0.sum()), (pf.tolist(), p0.tolist())
