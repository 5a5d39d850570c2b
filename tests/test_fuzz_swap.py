"""Property-based checks of objective "swap" (docs/FUZZING.md, the cases of ``test_fuzz_cov.py``).

* on small shapes the reference equals the per-row oracle (tests/oracle.py), mask and swaps;
* on larger ones the reference keeps the rule's invariants, checked from scratch
  (``test_swap_reference.check_rule``): pruned count per row and N per group, L never rises, and
  no improving pair is left unless the row hit the cap.
"""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from test_fuzz import EXAMPLES, LONG, _label_events, _oracle, _settings, assert_same, call, cases, check_output, op_args
from test_fuzz_cov import M_KINDS, with_moment
from test_swap_reference import check_rule

SHAPE = (6, 200) if not LONG else (24, 1200)
ORACLE_SHAPE = (3, 40) if not LONG else (4, 80)


def _kw(case, mkind, plain):
    return with_moment(case, mkind, 1, plain)  # (the window is not used by "swap")


@_settings(max(20, EXAMPLES["reference"] // 2))
@given(case=cases(*SHAPE, objectives=("swap",)), mkind=st.sampled_from(M_KINDS), plain=st.booleans())
def test_fuzz_swap_reference_invariants(case, mkind, plain):
    kw = _kw(case, mkind, plain)
    mask, swaps = call(kw, "torch")
    check_output(mask, swaps, kw, "cpu")
    init, _ = call(dict(kw, max_cycle_time=0), "torch")
    check_rule(kw["weight"], kw["second_moment"], init, mask, swaps, kw["max_cycle_time"],
               kw["prune_n"], kw["prune_m"])
    _label_events(case, swaps)


@pytest.mark.skipif(_oracle is None, reason="tests/oracle.py is not there")
@_settings(max(20, EXAMPLES["oracle"] // 2))
@given(case=cases(*ORACLE_SHAPE, objectives=("swap",)), mkind=st.sampled_from(M_KINDS), plain=st.booleans())
def test_fuzz_swap_reference_equals_oracle(case, mkind, plain):
    kw = _kw(case, mkind, plain)
    ref = call(kw, "torch")
    w, s, v, sc, metric, imask, mean = op_args(kw)[:7]
    got = _oracle(w, s, v, sc, initial_metric=metric, initial_mask=imask, sparsity=kw["sparsity"],
                  prune_n=kw["prune_n"], prune_m=kw["prune_m"], max_cycle_time=kw["max_cycle_time"],
                  objective="swap", second_moment=kw["second_moment"])
    assert_same(ref, got, f"reference vs oracle (swap, M {mkind})")
    _label_events(case, ref[1])
