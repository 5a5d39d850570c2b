"""The registered op ``dsnot_kernels::refine_mask``: ``torch.library.opcheck`` on sample inputs,
and its fake (meta) kernel under ``torch.compile(fullgraph=True)`` (issue 9, item 3).

The op is deterministic (same inputs, same mask and swaps), which opcheck's comparisons need.
Skipped where the compiled extension has no kernel for the device.
"""
from __future__ import annotations

import time

import pytest
import torch

from dsnot_kernels import _extension
from test_fuzz import Case, build, fixed_case
from test_fuzz import op_args as fuzz_op_args

OP_NAME = "dsnot_kernels::refine_mask"


def _devices():
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    return out


def _need_kernel(device):
    key = "CPU" if device == "cpu" else "CUDA"
    if not _extension.has_kernel(key):
        pytest.skip(f"the compiled extension has no {key} kernel here ({_extension.EXTENSION_ERROR})")


_case = fixed_case


SAMPLES = {
    "unstructured": _case(),
    "same_sign_p2": _case(without_same_sign=False, pow_of_var_regrowing=2.0, sparsity=0.6),
    "nm_2_4_fp16": _case(prune_n=2, prune_m=4, dtype="float16"),
    "metric_bf16": _case(initial="metric", dtype="bfloat16"),
    "initial_mask": _case(initial="mask"),
    "mse": _case(objective="mse"),
    "one_row": _case(rows=1, cols=8, max_cycle_time=3),
}


def op_args(case: Case, device="cpu"):
    """The op's 15 positional arguments for ``case`` on ``device``, canonicalised as ``dk.refine_mask`` does."""
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in fuzz_op_args(build(case)))


def _op():
    return torch.ops.dsnot_kernels.refine_mask.default


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("device", _devices())
def test_opcheck(device, name):
    _need_kernel(device)
    args = op_args(SAMPLES[name], device)
    first = _op()(*args)
    again = _op()(*args)  # opcheck compares runs: the op must be deterministic
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    torch.library.opcheck(_op(), args)


@pytest.mark.parametrize("device", _devices())
def test_opcheck_weight_requiring_grad(device):
    """An nn.Parameter weight: no autograd formula, outputs are integer/bool (no grad)."""
    _need_kernel(device)
    args = list(op_args(SAMPLES["unstructured"], device))
    args[0] = args[0].clone().requires_grad_()
    torch.library.opcheck(_op(), tuple(args))
    mask, swaps = _op()(*args)
    assert not mask.requires_grad and not swaps.requires_grad


def test_fake_kernel_shapes():
    """The fake kernel alone: shape/dtype/device of both outputs under FakeTensorMode."""
    _need_kernel("cpu")
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = op_args(SAMPLES["nm_2_4_fp16"])
    with FakeTensorMode() as mode:
        fake_args = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        mask, swaps = _op()(*fake_args)
    assert tuple(mask.shape) == tuple(args[0].shape) and mask.dtype == torch.bool
    assert tuple(swaps.shape) == (args[0].shape[0],) and swaps.dtype == torch.int32


def _compiled_equals_eager(backend, device):
    args = op_args(SAMPLES["unstructured"], device)
    tensors, scalars = args[:7], args[7:]

    def f(w, s, v, sc, metric, imask, mean):
        mask, swaps = torch.ops.dsnot_kernels.refine_mask.default(w, s, v, sc, metric, imask, mean, *scalars)
        return mask, swaps

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    start = time.perf_counter()
    got = compiled(*tensors)
    elapsed = time.perf_counter() - start
    ref = f(*tensors)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    # a second shape goes through the fake kernel again (recompile or dynamic shapes)
    args2 = op_args(SAMPLES["one_row"], device)
    assert torch.equal(compiled(*args2[:7])[0], torch.ops.dsnot_kernels.refine_mask.default(*args2[:7], *scalars)[0])
    return elapsed


@pytest.mark.parametrize("device", _devices())
def test_torch_compile_fullgraph_aot_eager(device):
    """fullgraph tracing through the fake kernel (aot_eager: no code generation, a few seconds)."""
    _need_kernel(device)
    _compiled_equals_eager("aot_eager", device)


@pytest.mark.parametrize("device", _devices())
def test_torch_compile_fullgraph_inductor(device):
    """The same through Inductor (needs a C++ compiler on CPU, as the extension does; ~4 s)."""
    _need_kernel(device)
    _compiled_equals_eager("inductor", device)


@pytest.mark.parametrize("window", [0, 3, 100])
@pytest.mark.parametrize("pattern", [dict(sparsity=0.6), dict(prune_n=2, prune_m=4)], ids=["unstructured", "2:4"])
def test_opcheck_refine_mask_cov(window, pattern):
    """``dsnot_kernels::refine_mask_cov`` (objectives 2 and 3 on the CPU): schema, fake kernel,
    autograd registration and AOT dispatch, on the arguments ``refine_mask`` gives it."""
    if not _extension.has_kernel("CPU", "refine_mask_cov"):
        pytest.skip("the compiled extension has no refine_mask_cov CPU kernel here")
    import dsnot_kernels as dk
    from dsnot_kernels.objectives.cov_window import cov_g0

    g = torch.Generator().manual_seed(3)
    rows, cols = 5, 32
    W = torch.randn(rows, cols, generator=g)
    x = torch.randn(40, cols, generator=g) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g))
    M = (x.t() @ x / 40).double()
    s, var, sc = torch.randn(cols, generator=g), torch.rand(cols, generator=g) + 0.1, torch.rand(cols, generator=g)
    mask0 = dk.refine_mask(W, s, var, sc, max_cycle_time=0, **pattern)
    args = (W, s, var, sc, None, mask0, M, cov_g0(W, mask0, M), pattern.get("prune_m", 0), 50, 0.0, 1.0, window)
    op = torch.ops.dsnot_kernels.refine_mask_cov.default
    first, again = op(*args), op(*args)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert int(first[1].sum()) > 0
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("search", [0, 1])
@pytest.mark.parametrize("pattern", [dict(sparsity=0.6), dict(prune_n=2, prune_m=4)], ids=["unstructured", "2:4"])
def test_opcheck_refine_mask_swap(search, pattern):
    """``dsnot_kernels::refine_mask_swap`` (objective 4 on the CPU): schema, fake kernel, autograd
    registration and AOT dispatch, on the arguments ``refine_mask`` gives it."""
    if not _extension.has_kernel("CPU", "refine_mask_swap"):
        pytest.skip("the compiled extension has no refine_mask_swap CPU kernel here")
    import dsnot_kernels as dk
    from dsnot_kernels.objectives.cov_window import cov_g0

    g = torch.Generator().manual_seed(4)
    rows, cols = 5, 32
    W = torch.randn(rows, cols, generator=g)
    x = torch.randn(40, cols, generator=g) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g))
    M = (x.t() @ x / 40).double()
    M = (M + M.t()) / 2
    s, var, sc = torch.randn(cols, generator=g), torch.rand(cols, generator=g) + 0.1, torch.rand(cols, generator=g)
    mask0 = dk.refine_mask(W, s, var, sc, max_cycle_time=0, **pattern)
    args = (W, mask0, M, cov_g0(W, mask0, M), pattern.get("prune_m", 0), 1000, search)
    op = torch.ops.dsnot_kernels.refine_mask_swap.default
    first, again = op(*args), op(*args)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert int(first[1].sum()) > 0
    torch.library.opcheck(op, args)
