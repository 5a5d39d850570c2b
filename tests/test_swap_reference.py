"""Objective 4, "swap" (docs/KERNEL_CONTRACT.md): the reference against the per-row oracle, and
the rule's invariants checked from scratch.

* reference == oracle (tests/oracle.py ``_swap_cycles``: plain Python floats, no shared code), mask
  and swap counts, on small odd shapes, unstructured and N:M, every initial method, fp32/fp16/bf16,
  planted exact ties (and a wrong tie order is caught), strongly correlated M, a dead input channel
  (a zero row/column of M), exact-zero weights, small caps;
* on every row ``L = D M Dᵀ`` (float64, from scratch) never rises;
* at the end no pair has delta < 0 (an independent brute force from a fresh ``g = D M``) unless the
  row hit the cap; the pruned count per row and N per group hold.
"""
from __future__ import annotations

import pytest
import torch

import dsnot_kernels as dk
from dsnot_kernels import ops
from dsnot_kernels.metrics import magnitude_metric, sparsegpt_metric
from oracle import _swap_cycles, oracle

ROWS_COLS = [(7, 41), (5, 36), (3, 40), (2, 13), (4, 24)]


# --- inputs ---------------------------------------------------------------------------------------

def calib(cols, seed, kind="gram"):
    """(stats, M): statistics of random inputs and their second moment of ``kind``: "gram" (mixed
    channels), "corr" (pairs of almost identical channels), "dead" (channels 0 and 5 always 0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(48, cols, generator=g) @ (torch.eye(cols) + 0.4 * torch.randn(cols, cols, generator=g))
    if kind == "corr":
        x[:, 1::2] = x[:, 0::2][:, :cols // 2] + 1e-3 * torch.randn(48, cols // 2, generator=g)
    if kind == "dead":
        x[:, [0, 5 % cols]] = 0.0
    stats = dk.CalibrationStats(cols, hessian=True)
    stats.add_batch(x.unsqueeze(0))
    return stats, stats.hessian


def planted(rows, cols, seed):
    """Integer weights in [-2, 2] (some exact zeros) and an integer rank-2 M: deltas are exact small
    integers, so many pairs tie exactly and the tie order decides the mask."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randint(-2, 3, (rows, cols), generator=g).float()
    Bm = torch.randint(-1, 2, (cols, 2), generator=g).float()
    M = Bm @ Bm.t() + torch.eye(cols)
    s = torch.ones(cols)
    return W, s, s, s, M


def run(W, stats_or_vectors, M, **kw):
    if isinstance(stats_or_vectors, dk.CalibrationStats):
        st = stats_or_vectors
        vec = (st.sum_metric_row, st.var, st.scaler_row)
    else:
        vec = stats_or_vectors
    ref = dk.refine_mask(W, *vec, objective="swap", second_moment=M, backend="torch", return_swaps=True, **kw)
    got = oracle(W, *vec, objective="swap", second_moment=M, **kw)
    return ref, got, vec


def assert_same(ref, got, label=""):
    assert torch.equal(ref[0], got[0]), f"{label}: masks differ in rows {(ref[0] != got[0]).any(1).nonzero().flatten().tolist()}"
    assert torch.equal(ref[1], got[1]), f"{label}: swaps {ref[1].tolist()} vs {got[1].tolist()}"


# --- independent checks ---------------------------------------------------------------------------

def sym(M):
    M = M.double()
    return (M + M.t()) * 0.5


def row_loss(W, mask, M):
    """Per row ``D M Dᵀ`` in float64 from scratch, (rows,)."""
    D = torch.where(mask, W.float().double(), torch.zeros((), dtype=torch.float64))
    return ((D @ M) * D).sum(1)


def all_deltas(W, mask, M, prune_m=0):
    """(rows, cols, cols): the exact change of ``D M Dᵀ`` for pruning q and regrowing r, from a fresh
    ``g = D M`` (independent of the package's incremental g); +inf where (q, r) is no pair."""
    w = W.float().double()
    D = torch.where(mask, w, torch.zeros((), dtype=torch.float64))
    g = D @ M
    dg = torch.diagonal(M)
    A = 2 * w * g + w * w * dg
    B = w * w * dg - 2 * w * g
    d = A.unsqueeze(2) + B.unsqueeze(1) - 2 * w.unsqueeze(2) * w.unsqueeze(1) * M
    pair = (~mask).unsqueeze(2) & mask.unsqueeze(1)
    if prune_m:
        grp = torch.arange(W.shape[1]) // prune_m
        pair &= (grp.unsqueeze(1) == grp.unsqueeze(0))
    return torch.where(pair, d, torch.full((), float("inf"), dtype=torch.float64))


def check_rule(W, M, init, mask, swaps, cap, prune_n=0, prune_m=0):
    """L never rises; a local optimum unless the cap was hit; counts per row / group kept."""
    M = sym(M)
    rows, cols = W.shape
    assert torch.equal(mask.sum(1), init.sum(1))
    if prune_n:
        assert bool((mask.view(rows, cols // prune_m, prune_m).sum(-1) == prune_n).all())
    assert bool((swaps >= 0).all()) and bool((swaps <= cap).all())
    assert bool(((init != mask).sum(1) <= 2 * swaps).all())   # a swap changes two columns
    scale = (W.float().double().abs() @ M.abs() * W.float().double().abs()).sum(1) + 1e-300
    L0, L1 = row_loss(W, init, M), row_loss(W, mask, M)
    assert bool((L1 <= L0 + 1e-12 * scale).all()), (L0, L1)
    assert bool((L1[swaps > 0] < L0[swaps > 0] + 1e-12 * scale[swaps > 0]).all())
    best = all_deltas(W, mask, M, prune_m).view(rows, -1).amin(1)
    done = swaps < cap
    assert bool((best[done] >= -1e-9 * scale[done]).all()), (best, swaps)


# --- reference == oracle --------------------------------------------------------------------------

@pytest.mark.parametrize("rows,cols", ROWS_COLS)
@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.3])
def test_unstructured_equals_oracle(rows, cols, sparsity):
    W = torch.randn(rows, cols, generator=torch.Generator().manual_seed(cols))
    st, M = calib(cols, rows * 100 + cols)
    (ref, got, _) = run(W, st, M, sparsity=sparsity, max_cycle_time=1000)
    assert_same(ref, got, f"{rows}x{cols} {sparsity}")
    if cols >= 20:
        assert bool((ref[1] > 0).any())  # the case exercises swaps
    init = dk.refine_mask(W, st.sum_metric_row, st.var, st.scaler_row, sparsity=sparsity, max_cycle_time=0)
    check_rule(W, M, init, *ref, cap=1000)


@pytest.mark.parametrize("n,m,cols", [(2, 4, 36), (4, 8, 40), (1, 3, 21), (3, 5, 25)])
def test_nm_equals_oracle(n, m, cols):
    W = torch.randn(5, cols, generator=torch.Generator().manual_seed(m))
    st, M = calib(cols, 7 + cols)
    ref, got, _ = run(W, st, M, prune_n=n, prune_m=m, max_cycle_time=1000)
    assert_same(ref, got, f"{n}:{m}")
    assert bool((ref[1] > 0).any())
    init = dk.refine_mask(W, st.sum_metric_row, st.var, st.scaler_row, prune_n=n, prune_m=m, max_cycle_time=0)
    check_rule(W, M, init, *ref, cap=1000, prune_n=n, prune_m=m)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pattern", [(0, 0), (2, 4)])
def test_dtypes(dtype, pattern):
    n, m = pattern
    W = (torch.randn(6, 40, generator=torch.Generator().manual_seed(3)) * 0.05).to(dtype)
    st, M = calib(40, 11)
    ref, got, _ = run(W, st, M, sparsity=0.6, prune_n=n, prune_m=m, max_cycle_time=500)
    assert_same(ref, got, str(dtype))
    init = dk.refine_mask(W, st.sum_metric_row, st.var, st.scaler_row, sparsity=0.6, prune_n=n, prune_m=m,
                          max_cycle_time=0)
    check_rule(W, M, init, *ref, cap=500, prune_n=n, prune_m=m)


@pytest.mark.parametrize("initial", ["wanda", "magnitude", "metric", "sparsegpt", "mask"])
@pytest.mark.parametrize("pattern", [(0, 0), (4, 8)])
def test_initial_methods(initial, pattern):
    n, m = pattern
    rows, cols = 5, 40
    g = torch.Generator().manual_seed(21)
    W = torch.randn(rows, cols, generator=g)
    st, M = calib(cols, 22)
    kw = dict(sparsity=0.6, prune_n=n, prune_m=m, max_cycle_time=800)
    if initial == "magnitude":
        kw["initial_metric"] = magnitude_metric(W)
    elif initial == "metric":
        kw["initial_metric"] = torch.randint(0, 3, (rows, cols), generator=g).float()
    elif initial == "sparsegpt":
        kw["initial_metric"] = sparsegpt_metric(W, st.hessian)
    elif initial == "mask":
        if n:
            kw["initial_mask"] = (torch.rand(rows, cols // m, m, generator=g).argsort(-1) < n).reshape(rows, cols)
        else:  # a caller's mask may prune a different count in every row
            kw["initial_mask"] = torch.rand(rows, cols, generator=g) < torch.rand(rows, 1, generator=g)
    ref, got, vec = run(W, st, M, **kw)
    assert_same(ref, got, initial)
    init = dk.refine_mask(W, *vec, **dict(kw, max_cycle_time=0))
    check_rule(W, M, init, *ref, cap=800, prune_n=n, prune_m=m)


@pytest.mark.parametrize("kind", ["corr", "dead"])
@pytest.mark.parametrize("pattern", [(0, 0), (2, 4)])
def test_correlated_and_dead_channels(kind, pattern):
    n, m = pattern
    W = torch.randn(6, 36, generator=torch.Generator().manual_seed(5))
    W[:, 3] = 0.0  # exact-zero weights too
    W[2, :7] = 0.0
    st, M = calib(36, 6, kind)
    if kind == "dead":
        assert float(M[0].abs().sum()) == 0.0 and float(M[:, 5].abs().sum()) == 0.0
    ref, got, _ = run(W, st, M, sparsity=0.6, prune_n=n, prune_m=m, max_cycle_time=600)
    assert_same(ref, got, kind)
    init = dk.refine_mask(W, st.sum_metric_row, st.var, st.scaler_row, sparsity=0.6, prune_n=n, prune_m=m,
                          max_cycle_time=0)
    check_rule(W, M, init, *ref, cap=600, prune_n=n, prune_m=m)


@pytest.mark.parametrize("cap", [1, 2, 5])
def test_cap_stops_rows(cap):
    W = torch.randn(6, 41, generator=torch.Generator().manual_seed(8))
    st, M = calib(41, 9)
    ref, got, _ = run(W, st, M, sparsity=0.5, max_cycle_time=cap)
    assert_same(ref, got, f"cap {cap}")
    assert int(ref[1].max()) == cap  # some row needs more: the cap binds
    full = dk.refine_mask(W, st.sum_metric_row, st.var, st.scaler_row, objective="swap", second_moment=M,
                          sparsity=0.5, max_cycle_time=1000, backend="torch", return_swaps=True)
    assert bool((full[1] >= ref[1]).all())
    stopped = ref[1] < cap  # rows that finished below the cap are at their optimum already
    assert torch.equal(full[0][stopped], ref[0][stopped])


# --- ties -----------------------------------------------------------------------------------------

def _oracle_last_tie(W, M, init, prune_m):
    """The swap rule with the WRONG tie order (the last minimum: highest q, then highest r), via the
    oracle on column-reversed inputs (the loss is the same; the column order is reversed)."""
    rev = torch.arange(W.shape[1] - 1, -1, -1)
    Wr, Mr, ir = W[:, rev], sym(M)[rev][:, rev], init[:, rev]
    g0 = (torch.where(ir, Wr.double(), torch.zeros((), dtype=torch.float64)) @ Mr).tolist()
    masks, swaps = [], []
    for i in range(W.shape[0]):
        pr, sw = _swap_cycles(Wr[i].tolist(), ir[i].tolist(), g0[i], Mr.numpy(), prune_m, 1000)
        masks.append(pr)
        swaps.append(sw)
    return torch.tensor(masks)[:, rev], torch.tensor(swaps, dtype=torch.int32)


@pytest.mark.parametrize("pattern", [(0, 0), (2, 4), (4, 8)])
def test_planted_ties(pattern):
    n, m = pattern
    differs = 0
    for seed in range(6):
        W, s, v, sc, M = planted(6, 24, seed)
        ref, got, _ = run(W, (s, v, sc), M, sparsity=0.5, prune_n=n, prune_m=m, max_cycle_time=1000)
        assert_same(ref, got, f"planted seed {seed}")
        init = dk.refine_mask(W, s, v, sc, sparsity=0.5, prune_n=n, prune_m=m, max_cycle_time=0)
        check_rule(W, M, init, *ref, cap=1000, prune_n=n, prune_m=m)
        # exact ties exist in these cases: the first cycle's best delta is reached by several pairs
        d0 = all_deltas(W, init, sym(M), m).view(6, -1)
        assert bool(((d0 == d0.amin(1, keepdim=True)).sum(1) > 1).any())
        wrong = _oracle_last_tie(W, M, init, m)
        differs += int(not torch.equal(wrong[0], ref[0]))
    assert differs > 0, "the tie order never mattered: these cases do not test it"


def test_wrong_tie_order_is_caught():
    """The planted-tie check fails for a rule that breaks ties the other way."""
    W, s, v, sc, M = planted(6, 24, 1)
    ref, _, _ = run(W, (s, v, sc), M, sparsity=0.5, max_cycle_time=1000)
    init = dk.refine_mask(W, s, v, sc, sparsity=0.5, max_cycle_time=0)
    wrong = _oracle_last_tie(W, M, init, 0)
    with pytest.raises(AssertionError):
        assert_same(ref, wrong, "wrong tie order")


# --- the op's surface -----------------------------------------------------------------------------

def test_default_cap_is_the_objectives():
    W = torch.randn(4, 96, generator=torch.Generator().manual_seed(2))
    st, M = calib(96, 3)
    vec = (st.sum_metric_row, st.var, st.scaler_row)
    for objective, cap in (("swap", ops.swap_default_cycles(96)), ("cov", 50)):
        assert ops.default_max_cycle_time(objective, 96) == cap
        a = dk.refine_mask(W, *vec, objective=objective, second_moment=M, backend="torch", return_swaps=True)
        b = dk.refine_mask(W, *vec, objective=objective, second_moment=M, backend="torch", return_swaps=True,
                           max_cycle_time=cap)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert ops.swap_default_cycles(4096) >= 4096 // 8  # grows with the width (benchmarks/RESULTS.md)
    with pytest.raises(ValueError, match="objective"):
        ops.default_max_cycle_time("nope", 10)


def test_needs_second_moment_and_table_row():
    W = torch.randn(2, 8)
    s = torch.ones(8)
    with pytest.raises(ValueError, match="second_moment"):
        dk.refine_mask(W, s, s, s, objective="swap")
    assert ops.OBJECTIVES["swap"].code == 4 and "swap" in ops.SECOND_MOMENT_OBJECTIVES
    assert "torch" in dk.available_backends("cpu", "swap")


def test_no_pairs_and_empty():
    st, M = calib(10, 1)
    vec = (st.sum_metric_row, st.var, st.scaler_row)
    W = torch.randn(3, 10)
    for sp in (0.0, 0.95):  # nothing pruned / everything but... (int(10 * 0.95) = 9 pruned)
        mask, sw = dk.refine_mask(W, *vec, objective="swap", second_moment=M, sparsity=sp, backend="torch",
                                  return_swaps=True)
        assert torch.equal(mask.sum(1), torch.full((3,), int(10 * sp)))
    mask, sw = dk.refine_mask(W, *vec, objective="swap", second_moment=M, sparsity=0.0, backend="torch",
                              return_swaps=True)
    assert not bool(mask.any()) and not bool(sw.any())
    z = torch.zeros(0, 10)
    mask, sw = dk.refine_mask(z, *vec, objective="swap", second_moment=M, backend="torch", return_swaps=True)
    assert mask.shape == (0, 10) and sw.shape == (0,)
    # an all-zero M: no swap lowers L
    mask, sw = dk.refine_mask(W, *vec, objective="swap", second_moment=torch.zeros(10, 10), backend="torch",
                              return_swaps=True)
    assert not bool(sw.any())


def test_chunks_do_not_change_the_result(monkeypatch):
    """Rows run in memory-bounded chunks: one-row chunks give the same masks and swaps."""
    from dsnot_kernels.objectives import swap as reference_swap
    W = torch.randn(9, 40, generator=torch.Generator().manual_seed(4))
    st, M = calib(40, 4)
    vec = (st.sum_metric_row, st.var, st.scaler_row)
    for n, m in ((0, 0), (2, 4)):
        kw = dict(objective="swap", second_moment=M, sparsity=0.6, prune_n=n, prune_m=m, backend="torch",
                  return_swaps=True, max_cycle_time=400)
        a = dk.refine_mask(W, *vec, **kw)
        monkeypatch.setattr(reference_swap, "CHUNK_BYTES", 1)
        b = dk.refine_mask(W, *vec, **kw)
        monkeypatch.undo()
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_fully_kept_row_does_not_stop_the_others():
    """A caller's mask where one row keeps every column (no pair) and one prunes every column (no
    pair), in the same chunk as rows that swap: those two make no swap, the others are refined as
    alone (the reference once returned early for the whole chunk when one row kept every column)."""
    W = torch.randn(4, 24, generator=torch.Generator().manual_seed(5))
    st, M = calib(24, 17)
    init = torch.rand(4, 24, generator=torch.Generator().manual_seed(6)) < 0.5
    init[1] = False
    init[3] = True
    ref, got, _ = run(W, st, M, initial_mask=init, max_cycle_time=1000)
    assert_same(ref, got, "fully kept row")
    assert int(ref[1][1]) == 0 and int(ref[1][3]) == 0 and int(ref[1][0]) > 0 and int(ref[1][2]) > 0
    for r in (0, 2):  # each row refined alone gives the same
        alone = dk.refine_mask(W[r:r + 1], st.sum_metric_row, st.var, st.scaler_row, objective="swap",
                               second_moment=M, backend="torch", return_swaps=True, initial_mask=init[r:r + 1],
                               max_cycle_time=1000)
        assert torch.equal(alone[0][0], ref[0][r]) and int(alone[1][0]) == int(ref[1][r])
