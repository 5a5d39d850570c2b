"""The direct solves of ``dk.reconstruct`` (``reconstruct_direct.py``): each form equals a float64
dense per-row solve of the damped system, with rows whose kept set is empty or full, with every row
keeping the same count (no padding) and with a rank-deficient M (fewer tokens than columns); their
row losses are never above PCG's; the mask is untouched; the caller's thread count is restored."""
import pytest
import torch

import dsnot_kernels as dk
from dsnot_kernels.weights.reconstruct import row_losses
from dsnot_kernels.weights.reconstruct_direct import (kept_order, low_rank_factor, one_thread, solve_kept_block,
                                              solve_low_rank)
from dsnot_kernels.weights.sparsegpt import damped_hessian


def _inputs(rows, cols, tokens, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, cols, dtype=torch.float64, generator=g) * (0.2 + torch.rand(cols, generator=g) * 2)
    M = X.t() @ X / tokens                                # exactly PSD, rank min(tokens, cols)
    return torch.randn(rows, cols, dtype=torch.float64, generator=g), M


def _mask(rows, cols, seed, equal):
    """True = pruned; ``equal``: every row prunes cols // 2, else random counts with row 0 keeping
    nothing and row 1 keeping everything."""
    g = torch.Generator().manual_seed(seed)
    rank = torch.rand(rows, cols, generator=g).argsort(1).argsort(1)
    if equal:
        return rank < cols // 2
    k = torch.randint(1, cols, (rows,), generator=g)
    k[0], k[1] = cols, 0
    return rank < k.unsqueeze(1)


def _dense(W, mask, Md):
    """float64 per-row solve of M'_KK ŵ_K = (w M')_K."""
    out = torch.zeros_like(W)
    for r in range(W.shape[0]):
        K = ~mask[r]
        if K.any():
            out[r, K] = torch.linalg.solve(Md[K][:, K], Md[K] @ W[r])
    return out


@pytest.mark.parametrize("equal", [True, False])
@pytest.mark.parametrize("tokens", [12, 200])
def test_both_forms_equal_the_dense_solve(equal, tokens):
    rows, cols = 20, 48
    W, M = _inputs(rows, cols, tokens, seed=31 + tokens)
    mask = _mask(rows, cols, seed=7, equal=equal)
    Md, _ = damped_hessian(M, 0.01, dtype=torch.float64)
    shift = torch.diagonal(Md) - torch.diagonal(M)
    exp = _dense(W, mask, Md)
    order, valid, _ = kept_order(~mask)
    idx = torch.arange(rows)
    x, ok = solve_kept_block(W, Md, order, valid, idx)
    assert bool(ok.all())
    torch.testing.assert_close(x, exp, rtol=1e-9, atol=1e-11)
    F = low_rank_factor(M, shift, cols // 2)
    if tokens < cols // 2:                                 # rank 12 of 48: the low-rank form exists
        assert F is not None and F.shape[1] <= tokens
        x, ok = solve_low_rank(W, ~mask, F, shift, order, valid, idx)
        assert bool(ok.all())
        torch.testing.assert_close(x, exp, rtol=1e-7, atol=1e-9)
    else:
        assert F is None                                   # full rank: more than cols // 2 columns


@pytest.mark.parametrize("tokens", [12, 200])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_direct_and_auto_losses_never_above_pcg(tokens, dtype):
    rows, cols = 40, 64
    W, M = _inputs(rows, cols, tokens, seed=40 + tokens)
    mask = _mask(rows, cols, seed=9, equal=False)
    Md, _ = damped_hessian(M, 0.01, dtype=torch.float64)
    Wd, Mt = W.to(dtype), M.to(dtype)
    pcg = dk.reconstruct(Wd, mask, Mt, method="pcg", max_iter=2000, warn=False)
    l_pcg = row_losses(Wd, pcg, Md)
    for method in ("direct", "auto"):
        out, info = dk.reconstruct(Wd, mask, Mt, method=method, return_info=True)
        assert info["converged"], method
        assert bool((out[mask] == 0).all())
        l_new = row_losses(Wd, out, Md)
        assert bool((l_new <= l_pcg * (1 + 1e-6) + 1e-12).all()), method
        if dtype == torch.float64 and method == "direct":   # auto may stop PCG within tol of it
            torch.testing.assert_close(out, _dense(W, mask, Md), rtol=1e-7, atol=1e-9)
    assert info["rows_direct"] > 0 or tokens > cols      # auto: rank-deficient M is solved directly


def test_one_thread_restores_the_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="inside"):
            with one_thread():
                raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
        W, M = _inputs(16, 32, 8, seed=3)
        dk.reconstruct(W, _mask(16, 32, seed=4, equal=True), M, method="direct")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
