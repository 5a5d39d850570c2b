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
