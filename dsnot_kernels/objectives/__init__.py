"""The objectives of ``refine_mask``: one file each, holding its reference (the executable spec),
and THE TABLE below: what each objective needs and which backends serve it.

| file | objective |
|---|---|
| ``dsnot.py`` | 0 ``"dsnot"``: the authors' rule (the paper) |
| ``mse.py`` | 1 ``"mse"``: the next cursor pair, if it lowers mean² + variance of the output error |
| ``cov.py`` | 2 ``"cov"``: the next cursor pair, if it lowers ``D M Dᵀ`` |
| ``cov_window.py`` | 3 ``"cov_window"``: the best pair among the next ``window`` candidates |
| ``swap.py`` | 4 ``"swap"``: the best pair of the whole row, to a local optimum |

``reference.py`` is the reference backend: the initial selection and the cursor walk that
objectives 0-2 share (``common.py``: what every reference uses). Adding an objective is one file
here, one row in ``OBJECTIVES`` and its kernels (docs/ARCHITECTURE.md), not a branch in
``refine_mask``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from dsnot_kernels.backends import COV_BACKENDS, RULE_BACKENDS, SWAP_BACKENDS
from dsnot_kernels.objectives.swap import swap_default_cycles

# Candidates per list that "cov_window" compares by default: measured on the embedded model (README
# setup), 100 beat 50 at 50/60/70 % and 2:4 (benchmarks/RESULTS.md, "Objective cov_window: window"); 200
# was better again at 70 % but doubles the mask time (the search is K² per cycle).
DEFAULT_WINDOW = 100


class Objective(NamedTuple):
    code: int           # the op's objective id (docs/KERNEL_CONTRACT.md, "Objective <code>")
    needs: tuple        # refine_mask arguments it needs beyond the weight and the three statistics
    backends: dict      # backend name -> Backend, the implementations that serve it
    # max_cycle_time when the caller passes None: an int, or a function of the weight's columns
    default_cycles: "int | Callable[[int], int]" = 50


# THE TABLE: every objective, what it needs and which backends serve it. Adding an objective or a
# backend is one entry here (and its kernel), not a new branch in refine_mask.
OBJECTIVES = {
    #             code  needs                        backends (backends.py)           reference
    "dsnot":      Objective(0, (),                          RULE_BACKENDS),                      # dsnot.py
    "mse":        Objective(1, ("mean",),                   RULE_BACKENDS),                      # mse.py
    "cov":        Objective(2, ("second_moment",),          COV_BACKENDS),                       # cov.py
    "cov_window": Objective(3, ("second_moment", "window"), COV_BACKENDS),                       # cov_window.py
    "swap":       Objective(4, ("second_moment",),          SWAP_BACKENDS, swap_default_cycles),  # swap.py
}
SECOND_MOMENT_OBJECTIVES = tuple(n for n, o in OBJECTIVES.items() if "second_moment" in o.needs)


def default_max_cycle_time(objective: str, cols: int) -> int:
    """The ``max_cycle_time`` that ``refine_mask(..., max_cycle_time=None)`` uses for ``objective``
    on a weight of ``cols`` columns (50 for the cursor objectives; "swap": ``swap_default_cycles``)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")
    d = OBJECTIVES[objective].default_cycles
    return int(d(int(cols))) if callable(d) else int(d)
