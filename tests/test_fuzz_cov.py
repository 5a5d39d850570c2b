"""Property-based checks of objectives "cov", "cov_window" and "swap" (docs/FUZZING.md).

The cases of ``test_fuzz.py`` (shapes, patterns, dtypes, value kinds, initial metrics and masks,
cycles, thresholds, p, non-contiguous layouts) with a drawn second moment and window:

* the CPU kernels (``refine_mask_cov``, ``refine_mask_swap``) equal the reference byte for byte, mask and swaps, and
  the reference keeps the invariants of spec §3;
* on small shapes the reference equals the per-row oracle (tests/oracle.py).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from test_fuzz import (EXAMPLES, LONG, _label_events, _noncontiguous, _oracle, _serves, _settings, assert_same,
                       build, call, cases, check_invariants, check_output, op_args)

OBJECTIVES = ("cov", "cov_window", "cov_window")
CPU_OBJECTIVES = OBJECTIVES + ("swap",)  # the CPU kernels: refine_mask_cov and refine_mask_swap
M_KINDS = ["gram", "gram", "lowrank_int", "diag", "zero", "wide"]
SHAPE = (8, 400) if not LONG else (24, 1200)
ORACLE_SHAPE = (3, 40) if not LONG else (4, 80)


def moment(kind: str, cols: int, seed: int) -> torch.Tensor:
    """A (cols, cols) second moment of ``kind``: Gram matrices of random inputs (correlated
    channels), integer rank-3 ones (exact ties), diagonal, all zero (no swap lowers L) or wide."""
    g = torch.Generator().manual_seed(seed ^ 0x5EED)
    if kind == "gram":
        x = torch.randn(16, cols, generator=g) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g))
        return x.t() @ x / 16
    if kind == "lowrank_int":
        b = torch.randint(-1, 2, (cols, 3), generator=g).float()
        return b @ b.t() + torch.diag((torch.arange(cols) % 3 == 0).float())
    if kind == "diag":
        return torch.diag(torch.rand(cols, generator=g) * (torch.rand(cols, generator=g) < 0.8))
    if kind == "zero":
        return torch.zeros(cols, cols)
    x = torch.randn(8, cols, generator=g) * torch.exp(3 * torch.randn(cols, generator=g))
    return x.t() @ x


def with_moment(case, mkind, window, plain):
    """The case's arguments plus ``second_moment`` and ``window``. ``plain``: ordinary values, at
    least 96 columns, 30-80 % sparsity, threshold 0 and 50 cycles, so that rows swap many times
    (the drawn kinds are adversarial and often leave no swap to make, which tests little of the
    window bookkeeping)."""
    if plain:
        m = case.prune_m or 1
        cols = max(case.cols, -(-96 // m) * m)  # at least 96 columns, still a multiple of M
        case = dataclasses.replace(case, weight_kind="normal", sum_kind="normal", var_kind="calib",
                                   scaler_kind="positive", update_threshold=0.0, max_cycle_time=50,
                                   initial="wanda", cols=cols,
                                   sparsity=case.sparsity if 0.3 <= case.sparsity <= 0.8 else 0.6)
    kw = build(case)
    kw["second_moment"] = moment(mkind, case.cols, case.seed)
    kw["window"] = window
    return kw


@pytest.mark.skipif(not _serves("cpu", "cpu"), reason="no cpu backend here")
@_settings(EXAMPLES["compiled"])
@given(case=cases(*SHAPE, objectives=CPU_OBJECTIVES), mkind=st.sampled_from(M_KINDS),
       window=st.sampled_from([1, 2, 3, 7, 50, 100]), plain=st.booleans())
def test_fuzz_cov_cpu_equals_reference(case, mkind, window, plain):
    kw = with_moment(case, mkind, window, plain)
    ref = call(kw, "torch")
    check_output(*ref, kw, "cpu")
    if case.objective == "swap":  # a column may be regrown and pruned again: counts only
        _check_swap_counts(*ref, kw)
    else:
        check_invariants(*ref, kw)
    got = call(_noncontiguous(kw) if case.noncontiguous else kw, "cpu")
    check_output(*got, kw, "cpu")
    assert_same(got, ref, f"cpu {case.objective} window {window} M {mkind}")
    _label_events(case, ref[1])


def _check_swap_counts(mask, swaps, kw):
    """Objective "swap": the pruned count per row (N per group) is kept (check_output checks the cap)."""
    init, _ = call(dict(kw, max_cycle_time=0), "torch")
    assert torch.equal(mask.sum(1), init.sum(1))
    if kw["prune_n"]:
        R, C = mask.shape
        assert bool((mask.view(R, C // kw["prune_m"], kw["prune_m"]).sum(-1) == kw["prune_n"]).all())


@pytest.mark.skipif(_oracle is None, reason="tests/oracle.py is not there")
@_settings(EXAMPLES["oracle"])
@given(case=cases(*ORACLE_SHAPE, objectives=OBJECTIVES), mkind=st.sampled_from(M_KINDS),
       window=st.sampled_from([1, 2, 3, 5]), plain=st.booleans())
def test_fuzz_cov_reference_equals_oracle(case, mkind, window, plain):
    kw = with_moment(case, mkind, window, plain)
    ref = call(kw, "torch")
    w, s, v, sc, metric, imask, mean = op_args(kw)[:7]
    got = _oracle(w, s, v, sc, initial_metric=metric, initial_mask=imask, sparsity=kw["sparsity"],
                  prune_n=kw["prune_n"], prune_m=kw["prune_m"], max_cycle_time=kw["max_cycle_time"],
                  update_threshold=kw["update_threshold"], pow_of_var_regrowing=kw["pow_of_var_regrowing"],
                  without_same_sign=kw["without_same_sign"], objective=kw["objective"],
                  second_moment=kw["second_moment"], window=window)
    assert_same(ref, got, f"reference vs oracle ({case.objective}, window {window}, M {mkind})")
    _label_events(case, ref[1])
