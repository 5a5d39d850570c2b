"""CalibrationStats (spec §1): formulas, batch invariance, Hessian."""
import pytest
import torch

import dsnot_kernels as dk


def _samples(B=5, T=33, C=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, C, generator=g) * torch.rand(C, generator=g) * 3 + torch.randn(C, generator=g)


def test_formulas_match_definitions():
    x = _samples().double()
    st = dk.CalibrationStats(24, hessian=True)
    st.add_batch(x.float())
    S = x.shape[0]
    torch.testing.assert_close(st.scaler_row.double(), (x ** 2).sum(1).mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st.sum_metric_row.double(), x.sum(1).mean(0), rtol=1e-5, atol=1e-5)
    within = x.var(1, unbiased=False).mean(0)  # equal token counts: pooled = plain mean
    torch.testing.assert_close(st.var.double(), within, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st.mean.double(), x.reshape(-1, 24).mean(0), rtol=1e-5, atol=1e-5)
    flat = x.reshape(-1, 24)
    torch.testing.assert_close(st.hessian.double(), 2.0 / S * flat.t() @ flat, rtol=1e-4, atol=1e-3)
    assert st.nsamples == S
    # between-sample spread is NOT part of var: it is smaller than the all-token variance here
    assert bool((st.var.double() < flat.var(0, unbiased=False) + 1e-6).all())


def test_batch_invariance_is_bitwise():
    x = _samples(B=6)
    one_call = dk.CalibrationStats(24, hessian=True)
    one_call.add_batch(x)
    singles = dk.CalibrationStats(24, hessian=True)
    for b in range(6):
        singles.add_batch(x[b])           # (T, C): one sample
    split = dk.CalibrationStats(24, hessian=True)
    split.add_batch(x[:2])
    split.add_batch(x[2:])
    for other in (singles, split):
        for name in ("scaler_row", "sum_metric_row", "var", "mean", "hessian"):
            assert torch.equal(getattr(one_call, name), getattr(other, name)), name


def test_hessian_really_accumulates():
    st = dk.CalibrationStats(8, hessian=True)
    st.add_batch(_samples(B=1, C=8))
    h1 = st.hessian.clone()
    st.add_batch(_samples(B=1, C=8, seed=1))
    assert not torch.equal(h1, st.hessian) and float(st.hessian.abs().sum()) > 0


def test_sparsegpt_metric_from_stats():
    st = dk.CalibrationStats(16, hessian=True)
    st.add_batch(_samples(B=4, C=16))
    W = torch.randn(8, 16)
    metric = dk.initial_metric("sparsegpt_metric", W, st)
    H = st.hessian.double() + 0.01 * st.hessian.diag().double().mean() * torch.eye(16, dtype=torch.float64)
    d = torch.linalg.cholesky(torch.linalg.inv(H), upper=True).diag()
    torch.testing.assert_close(metric.double(), W.double() ** 2 / d ** 2, rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="hessian=True"):
        dk.initial_metric("sparsegpt_metric", W, dk.CalibrationStats(16))
    with pytest.raises(ValueError, match="sparsegpt_metric"):  # "sparsegpt" is SparseGPT as published, not a metric
        dk.initial_metric("sparsegpt", W, st)


def test_add_batch_rejects_bad_input():
    st = dk.CalibrationStats(4)
    with pytest.raises(ValueError, match="in_features|4"):
        st.add_batch(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="non-finite"):
        st.add_batch(torch.tensor([[float("nan")] * 4]))
    with pytest.raises(TypeError):
        st.add_batch(torch.ones(2, 4, dtype=torch.int64))
