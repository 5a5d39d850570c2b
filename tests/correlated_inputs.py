"""Synthetic layers whose inputs have correlated channels, shared by the second-moment kernel tests
(tests/test_triton_cov.py, tests/test_triton_swap.py, tests/test_swap_cpu_kernel.py)."""
from types import SimpleNamespace

import torch

import dsnot_kernels as dk


def correlated_layer(rows, cols, dtype=torch.float32, seed=0, common=None, mixing=0.2, tokens=48):
    """(W, stats): a (rows, cols) weight and ``CalibrationStats(hessian=True)`` of 2 x ``tokens``
    inputs whose channels are mixed (``mixing``) and scaled log-normally. ``common`` (None = not
    drawn, which keeps the generator's sequence of the tests that never use it) adds a component
    shared by every channel: LLM-like, off-diagonal |M_qr| / sqrt(M_qq M_rr) near 1."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(cols) + mixing * torch.randn(cols, cols, generator=g)
    x = (torch.randn(2, tokens, cols, generator=g) @ mix) * torch.exp(0.5 * torch.randn(cols, generator=g)) \
        + 0.3 * torch.randn(cols, generator=g)
    if common is not None:
        x = x + common * torch.randn(2, tokens, 1, generator=g)
    st = dk.CalibrationStats(cols, hessian=True)
    st.add_batch(x)
    return (0.05 * torch.randn(rows, cols, generator=g)).to(dtype), st


def on_device(W, st, dev):
    """``(W, stats)`` on ``dev``, the second moment made exactly symmetric (kept as it is by the
    triton backend)."""
    ns = SimpleNamespace(**{k: getattr(st, k).to(dev) for k in ("hessian", "sum_metric_row", "var", "scaler_row")})
    ns.hessian = (ns.hessian + ns.hessian.t()) * 0.5
    return W.to(dev), ns


def outlier_layer(rows, cols, seed=0, common=4.0, rank=16, outliers=4, outlier_scale=20.0, dtype=torch.float32):
    """(W, (sum_metric_row, var, scaler_row), M): inputs like an LLM's, as benchmarks/bench_wide.py
    models them: ``M = S (common mu muᵀ + FᵀF / rank + I) S`` (float64, exactly symmetric) with
    log-normal channel scales S, ``outliers`` channels ``outlier_scale`` times larger and a strong
    common component (every channel pair correlates at 0.6-0.9); Student-t(3) weights."""
    g = torch.Generator().manual_seed(seed)
    s = torch.exp(0.5 * torch.randn(cols, generator=g, dtype=torch.float64))
    s[torch.randperm(cols, generator=g)[:outliers]] *= outlier_scale
    mu = (1.0 + 0.3 * torch.randn(cols, generator=g, dtype=torch.float64)) * common ** 0.5
    F = torch.randn(rank, cols, generator=g, dtype=torch.float64) / rank ** 0.5
    M = (F.t() @ F + torch.outer(mu, mu) + torch.eye(cols, dtype=torch.float64)) * torch.outer(s, s)
    M = torch.triu(M) + torch.triu(M, 1).t()
    d = torch.diagonal(M).float()
    mean = (s * mu).float()
    z = torch.randn(rows, cols, generator=g, dtype=torch.float64)  # Student-t(3): N(0, 1) / sqrt(chi2(3) / 3)
    t3 = z / ((torch.randn(3, rows, cols, generator=g, dtype=torch.float64) ** 2).sum(0) / 3).sqrt()
    W = (0.02 * t3).to(dtype)
    return W, (64 * mean, (d - mean * mean).clamp(min=1e-12), 64 * d), M
