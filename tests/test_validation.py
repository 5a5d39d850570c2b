"""Every bad input to the public boundary is answered by a TypeError/ValueError that names it.

One test per kind of bad input (issue 9, item 1): the exception type AND a message naming the
argument are asserted. The good-but-awkward inputs (non-contiguous tensors, zero variance, other
float dtypes of the statistics, empty weights) must give a defined result: the reference's, on
every backend that serves CPU tensors.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import dsnot_kernels as dk
from dsnot_kernels.objectives.reference import refine_mask_reference

ROWS, COLS = 3, 8
META = torch.device("meta")  # a second device on any machine: tensors without data


def _inputs(rows=ROWS, cols=COLS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        weight=torch.randn(rows, cols, generator=g),
        sum_metric_row=torch.randn(cols, generator=g) * 4,
        var=torch.rand(cols, generator=g) + 0.1,
        scaler_row=torch.rand(cols, generator=g) * 3,
    )


def _call(**overrides):
    kw = _inputs()
    kw.update(overrides)
    tensors = [kw.pop(k) for k in ("weight", "sum_metric_row", "var", "scaler_row")]
    return dk.refine_mask(*tensors, **kw)


def _raises(exc, *words):
    """pytest.raises(exc) whose message must contain every word (as a whole word)."""
    pattern = "".join(rf"(?=.*\b{re.escape(w)}\b)" for w in words)
    return pytest.raises(exc, match=re.compile(pattern, re.S))


def _cpu_backends():
    return dk.available_backends("cpu")


# --- weight -------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.zeros((ROWS, COLS), np.float32), [[0.0] * COLS] * ROWS, 1.0, None])
def test_weight_not_a_tensor(bad):
    with _raises(TypeError, "weight", "torch.Tensor"):
        _call(weight=bad)


def test_weight_sparse_layout():
    with _raises(TypeError, "weight", "dense"):
        _call(weight=_inputs()["weight"].to_sparse())


@pytest.mark.parametrize("shape", [(), (COLS,), (1, ROWS, COLS), (1, 1, ROWS, COLS)])
def test_weight_not_2d(shape):
    with _raises(ValueError, "weight", "2-D"):
        _call(weight=torch.zeros(shape))


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.int8, torch.bool, torch.complex64, torch.uint8])
def test_weight_dtype(dtype):
    with _raises(ValueError, "weight", "dtype"):
        _call(weight=_inputs()["weight"].to(dtype))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_weight_non_finite(value, dtype):
    w = _inputs()["weight"].to(dtype)
    w[1, 5] = value
    with _raises(ValueError, "weight", "non-finite"):
        _call(weight=w)


def test_weight_meta_device():
    kw = {k: v.to(META) for k, v in _inputs().items()}
    with _raises(ValueError, "weight", "meta"):
        _call(**kw)


# --- statistics ---------------------------------------------------------------------------------

STATS = ("sum_metric_row", "var", "scaler_row")


@pytest.mark.parametrize("name", STATS)
def test_stat_not_a_tensor(name):
    with _raises(TypeError, name, "torch.Tensor"):
        _call(**{name: _inputs()[name].numpy()})


@pytest.mark.parametrize("name", STATS)
def test_stat_sparse_layout(name):
    with _raises(TypeError, name, "dense"):
        _call(**{name: _inputs()[name].to_sparse()})


@pytest.mark.parametrize("name", STATS)
@pytest.mark.parametrize("shape", [(), (COLS - 1,), (COLS + 1,), (1, COLS), (COLS, 1)])
def test_stat_shape(name, shape):
    with _raises(ValueError, name, "shape"):
        _call(**{name: torch.ones(shape)})


@pytest.mark.parametrize("name", STATS)
def test_stat_other_device(name):
    with _raises(ValueError, name, "device"):
        _call(**{name: _inputs()[name].to(META)})


@pytest.mark.parametrize("name", STATS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.uint8])
def test_stat_dtype(name, dtype):
    with _raises(ValueError, name, "floating"):
        _call(**{name: torch.ones(COLS, dtype=dtype)})


@pytest.mark.parametrize("name", STATS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_stat_non_finite(name, value):
    t = _inputs()[name].clone()
    t[3] = value
    with _raises(ValueError, name, "non-finite"):
        _call(**{name: t})


@pytest.mark.parametrize("name", STATS)
def test_stat_overflows_float32(name):
    # finite in float64, inf once converted to float32: the conversion must not hide it
    t = _inputs()[name].double()
    t[0] = 1e300
    with _raises(ValueError, name, "non-finite"):
        _call(**{name: t})


@pytest.mark.parametrize("name", ["var", "scaler_row"])
def test_stat_negative(name):
    t = _inputs()[name].clone()
    t[2] = -1e-3
    with _raises(ValueError, name, "negative"):
        _call(**{name: t})


# --- mean (objective="mse") ---------------------------------------------------------------------

def test_mse_without_mean():
    with _raises(ValueError, "mean", "mse"):
        _call(objective="mse")


@pytest.mark.parametrize("bad,exc,word", [
    (np.zeros(COLS, np.float32), TypeError, "torch.Tensor"),
    (torch.zeros(COLS + 1), ValueError, "shape"),
    (torch.zeros(COLS, dtype=torch.int32), ValueError, "floating"),
    (torch.full((COLS,), float("nan")), ValueError, "non-finite"),
    (torch.zeros(COLS, device=META), ValueError, "device"),
])
def test_mse_bad_mean(bad, exc, word):
    with _raises(exc, "mean", word):
        _call(objective="mse", mean=bad)


# --- second_moment (objective="cov") -----------------------------------------------------------

@pytest.mark.parametrize("objective", ["cov", "cov_window"])
def test_cov_without_second_moment(objective):
    with _raises(ValueError, "second_moment", objective):
        _call(objective=objective)


@pytest.mark.parametrize("bad,exc,word", [(0, ValueError, "got 0"), (-3, ValueError, "got -3"),
                                          (2.0, TypeError, "int"), (True, TypeError, "int"),
                                          ("8", TypeError, "int")])
def test_cov_window_bad_window(bad, exc, word):
    with _raises(exc, "window", word):
        _call(objective="cov_window", second_moment=torch.eye(COLS), window=bad)


@pytest.mark.parametrize("bad,exc,word", [
    (np.zeros((COLS, COLS), np.float32), TypeError, "torch.Tensor"),
    (torch.zeros(COLS, COLS + 1), ValueError, "shape"),
    (torch.zeros(COLS), ValueError, "shape"),
    (torch.zeros(COLS, COLS, dtype=torch.int32), ValueError, "floating"),
    (torch.full((COLS, COLS), float("inf")), ValueError, "non-finite"),
    (torch.zeros(COLS, COLS, device=META), ValueError, "device"),
])
def test_cov_bad_second_moment(bad, exc, word):
    for objective in ("cov", "cov_window"):
        with _raises(exc, "second_moment", word):
            _call(objective=objective, second_moment=bad)


# --- initial_metric / initial_mask --------------------------------------------------------------

@pytest.mark.parametrize("bad,exc,word", [
    (np.zeros((ROWS, COLS), np.float32), TypeError, "torch.Tensor"),
    (torch.zeros(ROWS, COLS).to_sparse(), TypeError, "dense"),
    (torch.zeros(ROWS, COLS + 1), ValueError, "shape"),
    (torch.zeros(COLS), ValueError, "shape"),
    (torch.zeros(ROWS, COLS, device=META), ValueError, "meta"),
    (torch.zeros(ROWS, COLS, dtype=torch.int32), ValueError, "floating"),
    (torch.zeros(ROWS, COLS, dtype=torch.bool), ValueError, "floating"),
    (torch.full((ROWS, COLS), float("nan")), ValueError, "NaN"),
])
def test_bad_initial_metric(bad, exc, word):
    with _raises(exc, "initial_metric", word):
        _call(initial_metric=bad)


@pytest.mark.parametrize("bad,exc,word", [
    (np.zeros((ROWS, COLS), bool), TypeError, "torch.Tensor"),
    (torch.zeros(ROWS, COLS + 4, dtype=torch.bool), ValueError, "shape"),
    (torch.zeros(ROWS, COLS, dtype=torch.bool, device=META), ValueError, "meta"),
    (torch.zeros(ROWS, COLS, dtype=torch.uint8), ValueError, "bool"),
    (torch.zeros(ROWS, COLS), ValueError, "bool"),
])
def test_bad_initial_mask(bad, exc, word):
    with _raises(exc, "initial_mask", word):
        _call(initial_mask=bad)


def test_initial_mask_not_nm():
    mask = torch.zeros(ROWS, COLS, dtype=torch.bool)
    mask[:, 0::4] = True
    mask[:, 1::4] = True
    mask[2, 5] = False  # row 2, group 1 has one pruned instead of two
    with _raises(ValueError, "initial_mask", "2:4"):
        _call(initial_mask=mask, prune_n=2, prune_m=4)


def test_initial_metric_inf_is_allowed():
    """+-inf metrics are legal (contract: only NaN is refused); inf is never an N:M q candidate."""
    metric = torch.rand(ROWS, COLS, generator=torch.Generator().manual_seed(6))
    metric[:, 0] = float("inf")
    metric[:, 1] = float("-inf")
    for nm in ((0, 0), (2, 4)):
        ref = _call(initial_metric=metric, prune_n=nm[0], prune_m=nm[1], backend="torch")
        for name in _cpu_backends():
            assert torch.equal(_call(initial_metric=metric, prune_n=nm[0], prune_m=nm[1], backend=name), ref), name


# --- scalar arguments ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_sparsity_out_of_range(value):
    with _raises(ValueError, "sparsity"):
        _call(sparsity=value)


@pytest.mark.parametrize("value", ["0.5", None, [0.5], object()])
def test_sparsity_not_a_number(value):
    with _raises(TypeError, "sparsity", "real"):
        _call(sparsity=value)


@pytest.mark.parametrize("name", ["prune_n", "prune_m", "max_cycle_time"])
@pytest.mark.parametrize("value", [2.0, "2", True, None, np.int64(2)])
def test_int_arguments_type(name, value):
    if name == "max_cycle_time" and value is None:
        pytest.skip("max_cycle_time=None is the objective's default (test_swap_reference.py)")
    kw = {"prune_n": 2, "prune_m": 4}
    kw[name] = value
    with _raises(TypeError, name, "int"):
        _call(**kw)


@pytest.mark.parametrize("n,m", [(4, 4), (5, 4), (-1, 4), (0, 4), (2, 0), (2, -4), (-2, 0)])
def test_nm_ordering(n, m):
    with _raises(ValueError, "prune_n", "prune_m"):
        _call(prune_n=n, prune_m=m)


@pytest.mark.parametrize("n,m", [(1, 3), (2, 16), (4, 5)])
def test_nm_cols_not_divisible(n, m):
    with _raises(ValueError, "cols", "prune_m"):
        _call(prune_n=n, prune_m=m)


@pytest.mark.parametrize("value", [-1, 2**31, 2**40])
def test_max_cycle_time_range(value):
    with _raises(ValueError, "max_cycle_time"):
        _call(max_cycle_time=value)


@pytest.mark.parametrize("value", [-1e-6, -1.0, float("nan"), float("inf")])
def test_update_threshold_range(value):
    with _raises(ValueError, "update_threshold"):
        _call(update_threshold=value)


@pytest.mark.parametrize("name", ["update_threshold", "pow_of_var_regrowing"])
@pytest.mark.parametrize("value", ["0.1", None, object()])
def test_real_arguments_type(name, value):
    with _raises(TypeError, name, "real"):
        _call(**{name: value})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_pow_of_var_non_finite(value):
    with _raises(ValueError, "pow_of_var_regrowing", "finite"):
        _call(pow_of_var_regrowing=value)


@pytest.mark.parametrize("value", ["False", None, 2, 0.5])
def test_without_same_sign_not_a_bool(value):
    # "False" would be truthy: a silent opposite of what the caller meant
    with _raises(TypeError, "without_same_sign", "bool"):
        _call(without_same_sign=value)


@pytest.mark.parametrize("value", ["MSE", "wanda", ""])
def test_objective_unknown(value):
    with _raises(ValueError, "objective"):
        _call(objective=value)


@pytest.mark.parametrize("value", [0, None, ["dsnot"]])
def test_objective_not_a_string(value):
    with _raises(TypeError, "objective"):
        _call(objective=value)


def test_backend_unknown():
    with _raises(ValueError, "backend", "nosuch"):
        _call(backend="nosuch")


def test_backend_that_cannot_serve():
    # "cuda" never serves CPU tensors; an explicit request must say so, not fall back
    with _raises(RuntimeError, "backend", "cuda"):
        _call(backend="cuda")


# --- CalibrationStats ---------------------------------------------------------------------------

@pytest.mark.parametrize("value,exc", [(0, ValueError), (-3, ValueError), (2.5, TypeError),
                                       ("4", TypeError), (True, TypeError), (None, TypeError)])
def test_stats_in_features(value, exc):
    with _raises(exc, "in_features"):
        dk.CalibrationStats(value)


def test_stats_in_features_numpy_int():
    assert dk.CalibrationStats(np.int64(4)).in_features == 4


@pytest.mark.parametrize("bad,exc,word", [
    (np.zeros((2, 4), np.float32), TypeError, "torch.Tensor"),
    (torch.zeros(2, 4, dtype=torch.int32), TypeError, "floating"),
    (torch.zeros(2, 4, dtype=torch.bool), TypeError, "floating"),
    (torch.zeros(2, 4).to_sparse(), TypeError, "dense"),
    (torch.tensor(1.0), ValueError, "add_batch"),
    (torch.zeros(4), ValueError, "add_batch"),
    (torch.zeros(1, 1, 2, 4), ValueError, "add_batch"),
    (torch.zeros(2, 5), ValueError, "add_batch"),
    (torch.zeros(1, 0, 4), ValueError, "tokens"),
    (torch.full((2, 4), float("nan")), ValueError, "non-finite"),
    (torch.full((2, 4), float("inf")), ValueError, "non-finite"),
])
def test_stats_add_batch_bad(bad, exc, word):
    stats = dk.CalibrationStats(4)
    with _raises(exc, word):
        stats.add_batch(bad)
    assert stats.nsamples == 0  # a refused batch changes nothing


def test_stats_overflow_is_caught_at_refine_mask():
    """Activations so large that x² overflows float32 give scaler_row = inf; refine_mask names it."""
    stats = dk.CalibrationStats(COLS)
    stats.add_batch(torch.full((2, COLS), 1e30))
    w = _inputs()["weight"]
    with _raises(ValueError, "scaler_row", "non-finite"):
        dk.refine_mask(w, stats.sum_metric_row, stats.var, stats.scaler_row)


# --- awkward but valid inputs: defined results, every backend equal to the reference ------------

def _all_backends_equal(kw, **options):
    """Every CPU backend returns the reference's mask and swaps on ``kw``; returns the reference."""
    args = [kw[k] for k in ("weight", "sum_metric_row", "var", "scaler_row")]
    ref_mask, ref_swaps = dk.refine_mask(*args, backend="torch", return_swaps=True, **options)
    for name in _cpu_backends():
        mask, swaps = dk.refine_mask(*args, backend=name, return_swaps=True, **options)
        assert mask.dtype == torch.bool and mask.shape == ref_mask.shape, name
        assert bool((mask.view(torch.uint8) <= 1).all()), name
        assert torch.equal(mask, ref_mask), name
        assert torch.equal(swaps, ref_swaps), name
    return ref_mask, ref_swaps


@pytest.mark.parametrize("nm", [(0, 0), (2, 4)])
def test_non_contiguous_inputs(nm):
    """Transposed, strided and expanded inputs give the contiguous inputs' mask on every backend."""
    rows, cols = 6, 16
    kw = _inputs(rows, cols, seed=3)
    g = torch.Generator().manual_seed(4)
    metric = torch.rand(rows, cols, generator=g)
    opts = dict(prune_n=nm[0], prune_m=nm[1], sparsity=0.5, initial_metric=metric, update_threshold=0.0)
    ref_mask, ref_swaps = _all_backends_equal(kw, **opts)
    assert int(ref_swaps.sum()) > 0  # the case must exercise the refinement
    nc = dict(
        weight=kw["weight"].t().contiguous().t(),                        # column-major
        sum_metric_row=torch.stack([kw["sum_metric_row"]] * 3, 1)[:, 1],  # stride 3
        var=kw["var"].repeat_interleave(2)[::2],                          # stride 2
        scaler_row=kw["scaler_row"].flip(0).contiguous().flip(0),
    )
    assert not nc["weight"].is_contiguous() and not nc["sum_metric_row"].is_contiguous()
    opts["initial_metric"] = metric.t().contiguous().t()
    mask, swaps = _all_backends_equal(nc, **opts)
    assert torch.equal(mask, ref_mask) and torch.equal(swaps, ref_swaps)
    # an expanded (stride-0) statistic and a non-contiguous initial mask
    kw2 = dict(kw, var=torch.tensor(0.5).expand(cols))
    imask = ref_mask.t().contiguous().t()
    a = _all_backends_equal(kw2, initial_mask=imask, prune_n=nm[0], prune_m=nm[1], update_threshold=0.0)
    b = _all_backends_equal(dict(kw, var=torch.full((cols,), 0.5)), initial_mask=ref_mask.clone(),
                            prune_n=nm[0], prune_m=nm[1], update_threshold=0.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("nm", [(0, 0), (2, 4), (1, 2)])
@pytest.mark.parametrize("var_kind", ["all_zero", "some_zero", "subnormal", "negative_zero"])
def test_zero_and_tiny_variance(nm, var_kind):
    """var == 0 (dead channel) and subnormal var: the documented result (keys +-inf by the sign of
    dm, dm == 0 no candidate), never a crash, identical on every backend."""
    rows, cols = 5, 16
    kw = _inputs(rows, cols, seed=7)
    var = kw["var"].clone()
    if var_kind == "all_zero":
        var.zero_()
    elif var_kind == "some_zero":
        var[::3] = 0.0
        kw["sum_metric_row"][::6] = 0.0  # dm == 0 with var == 0: 0/0, no candidate
    elif var_kind == "subnormal":
        var[::2] = 1e-44
    else:
        var[::2] = -0.0
    kw["var"] = var
    mask, swaps = _all_backends_equal(kw, prune_n=nm[0], prune_m=nm[1], update_threshold=0.0)
    assert mask.shape == (rows, cols)
    if var_kind == "negative_zero":  # -0.0 is a zero variance: same as +0.0
        plus = dict(kw, var=var.abs())
        mask2, swaps2 = _all_backends_equal(plus, prune_n=nm[0], prune_m=nm[1], update_threshold=0.0)
        assert torch.equal(mask, mask2) and torch.equal(swaps, swaps2)


def test_negative_zero_variance_is_canonicalised():
    """Without the -0.0 -> +0.0 canonicalisation dm / -0.0 = -inf would flip a candidate's end."""
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    s = torch.tensor([1.0, 1.0, -1.0, -1.0])  # dm = [1, 2, -3, -4]: columns 0, 1 pruned, err = 3
    plus = torch.tensor([0.0, 1.0, 1.0, 1.0])
    minus = torch.tensor([-0.0, 1.0, 1.0, 1.0])
    sc = torch.ones(4)
    ref = dk.refine_mask(w, s, plus, sc, sparsity=0.5, update_threshold=0.0, return_swaps=True, backend="torch")
    got = dk.refine_mask(w, s, minus, sc, sparsity=0.5, update_threshold=0.0, return_swaps=True, backend="torch")
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])
    # and the raw reference (no validation) does differ on -0.0: the canonicalisation matters
    args = (w, s, minus, sc, None, None, None, 0.5, 0, 0, 50, 0.0, 1.0, False, 0)
    raw = refine_mask_reference(*args)
    assert not torch.equal(raw[0], ref[0])


@pytest.mark.parametrize("shape", [(0, 8), (4, 0), (0, 0)])
def test_empty_weight(shape):
    kw = _inputs(*shape)
    mask, swaps = dk.refine_mask(*kw.values(), return_swaps=True)
    assert mask.shape == shape and mask.dtype == torch.bool and swaps.shape == (shape[0],)
    assert swaps.dtype == torch.int32


def test_scalar_spellings_accepted():
    """int 0 sparsity, numpy floats, float64 / float16 statistics are valid and mean the same."""
    kw = _inputs()
    base = _call(sparsity=0.5, update_threshold=0.1, pow_of_var_regrowing=1.0)
    assert torch.equal(_call(sparsity=np.float64(0.5), update_threshold=np.float32(0.1),
                             pow_of_var_regrowing=1), base)
    assert not _call(sparsity=0).any()
    stats64 = {k: kw[k].double() for k in STATS}
    assert torch.equal(_call(**stats64), base)


def test_weight_parameter_with_grad():
    """An nn.Parameter (requires_grad) weight is served like its data, on every backend."""
    kw = _inputs()
    ref = _all_backends_equal(kw)
    got = _all_backends_equal(dict(kw, weight=torch.nn.Parameter(kw["weight"].clone())))
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])
