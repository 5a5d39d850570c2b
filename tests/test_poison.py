"""Poisoned outputs: with ``DSNOT_KERNELS_POISON=1`` the compiled backends fill freshly allocated
outputs with a sentinel (mask bytes 0x5A through a uint8 view, swaps -777) before the kernel runs,
so an element a kernel forgets to write cannot pass as a plausible 0/False (issue 9, item 3).

A bool tensor holding byte 0x5A still reads as True, so every mask is checked through its uint8
view; the comparison with the reference is byte-wise too.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from test_fuzz import _serves, build, call, cases, fixed_case

POISON_ENV = "DSNOT_KERNELS_POISON"


def _targets():
    out = [("cpu", "cpu"), ("triton", "cpu")]
    if torch.cuda.is_available():
        out += [("cuda", "cuda"), ("triton", "cuda")]
    return out


def check_poison_free(got, ref, label):
    """No sentinel survives, and the result is byte-for-byte the reference's."""
    mask, swaps = got[0].cpu(), got[1].cpu()
    rmask, rswaps = ref
    bad = int((mask.view(torch.uint8) > 1).sum())
    assert bad == 0, f"{label}: {bad} mask bytes are not 0/1 (0x5A = never written)"
    assert bool((swaps >= 0).all()), f"{label}: negative swap counts {swaps.tolist()} (-777 = never written)"
    assert torch.equal(mask.view(torch.uint8), rmask.view(torch.uint8)), f"{label}: mask differs from the reference"
    assert torch.equal(swaps, rswaps), f"{label}: swaps {swaps.tolist()} != reference {rswaps.tolist()}"


def _case(**kw):
    return fixed_case(**{"rows": 5, "cols": 24, "seed": 11, **kw})


# Shapes and options where a kernel could skip writing something: one row, one column, columns
# not a multiple of anything, more than 256 columns (several lane chunks), rows more than a
# parallel grain, no refinement (max_cycle_time = 0), an explicit initial mask, N:M, mse.
CASES = {
    "unstructured": _case(),
    "one_row_one_col": _case(rows=1, cols=1),
    "odd_cols": _case(rows=3, cols=37, sparsity=0.7),
    "wide": _case(rows=2, cols=300),
    "many_rows": _case(rows=40, cols=16),
    "no_cycles": _case(max_cycle_time=0),
    "sparsity_zero": _case(sparsity=0.0),
    "initial_mask": _case(initial="mask"),
    "nm_2_4": _case(prune_n=2, prune_m=4),
    "nm_1_2_one_group": _case(rows=2, cols=2, prune_n=1, prune_m=2),
    "nm_4_8_fp16": _case(prune_n=4, prune_m=8, cols=32, dtype="float16"),
    "mse_bf16": _case(objective="mse", dtype="bfloat16", sum_kind="ties"),
    "var_zero": _case(var_kind="all_zero"),
}
INTERP_TOO_BIG = {"wide", "many_rows"}  # the Triton interpreter is slow: keep it to small cases


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("backend,device", _targets(), ids=lambda x: str(x))
def test_poisoned_outputs_are_fully_written(backend, device, name, monkeypatch):
    if not _serves(backend, device):
        pytest.skip(f"{backend!r} does not serve {device} tensors here")
    if backend == "triton" and device == "cpu" and name in INTERP_TOO_BIG:
        pytest.skip("too large for the Triton interpreter")
    kw = build(CASES[name])
    ref = call(kw, "torch")  # the reference allocates with zeros; poison does not apply to it
    monkeypatch.setenv(POISON_ENV, "1")
    dkw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    got = call(dkw, backend)
    assert got[0].device.type == device and got[0].dtype == torch.bool
    check_poison_free(got, ref, f"{backend} on {device}, case {name}")


@pytest.mark.parametrize("backend,device", [t for t in _targets() if t != ("triton", "cpu")], ids=str)
def test_poisoned_outputs_fuzz(backend, device, monkeypatch):
    """A short random sweep with poison on (compiled backends only; not the slow interpreter)."""
    if not _serves(backend, device):
        pytest.skip(f"{backend!r} does not serve {device} tensors here")
    monkeypatch.setenv(POISON_ENV, "1")

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=cases(6, 300))
    def inner(case):
        kw = build(case)
        with monkeypatch.context() as m:
            m.delenv(POISON_ENV)
            ref = call(kw, "torch")
        dkw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        check_poison_free(call(dkw, backend), ref, f"{backend} on {device}, {case}")
    inner()


def test_the_poison_check_bites():
    """A mask byte 0x5A (reads as True!) or a swap count -777 left unwritten fails the check."""
    kw = build(CASES["unstructured"])
    mask, swaps = call(kw, "torch")
    poisoned = mask.clone()
    idx = int(poisoned.view(-1).nonzero()[0])  # a True entry: as a bool, 0x5A would still equal it
    poisoned.view(torch.uint8).view(-1)[idx] = 0x5A
    assert bool(poisoned.view(-1)[idx])
    with pytest.raises(AssertionError, match="not 0/1"):
        check_poison_free((poisoned, swaps), (mask, swaps), "planted")
    unwritten = swaps.clone()
    unwritten[-1] = -777
    with pytest.raises(AssertionError, match="never written"):
        check_poison_free((mask, unwritten), (mask, swaps), "planted")
