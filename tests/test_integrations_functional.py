"""The functional recipe: a library's own metric / ratio / mask through refine_mask, on every
available CPU backend, equal to the PyTorch reference (helpers from python/examples/functional_recipes.py)."""
import importlib.util
import pathlib

import pytest
import torch

import dsnot_kernels as dk

_path = pathlib.Path(__file__).resolve().parent.parent / "python" / "examples" / "functional_recipes.py"
_spec = importlib.util.spec_from_file_location("functional_recipes", _path)
recipes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipes)

# Triton on CPU runs only under its (slow) interpreter; its parity is tested with the kernels.
BACKENDS = [None] + [b for b in dk.available_backends("cpu") if b not in ("torch", "triton")]


def call(weight, stats, backend, **kw):
    return dk.refine_mask(weight, stats.sum_metric_row, stats.var, stats.scaler_row, backend=backend, **kw)


@pytest.fixture(scope="module")
def one_layer():
    return recipes.layer(32, 128, seed=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ria_metric(one_layer, backend):
    w, s, _ = one_layer
    ria = recipes.ria_metric(w, s.scaler_row)
    assert not torch.equal(ria.argsort(1), dk.wanda_metric(w, s.scaler_row).argsort(1))
    for kw in (dict(sparsity=0.6), dict(prune_n=2, prune_m=4)):
        mask = call(w, s, backend, initial_metric=ria, **kw)
        assert torch.equal(mask, call(w, s, "torch", initial_metric=ria, **kw))
        assert not torch.equal(mask, call(w, s, "torch", initial_metric=ria, max_cycle_time=0, **kw))


@pytest.mark.parametrize("backend", BACKENDS)
def test_owl_ratios(backend):
    layers = [recipes.layer(32, 128, seed=i) for i in range(1, 4)]
    ratios = recipes.owl_ratios([dk.wanda_metric(w, s.scaler_row) for w, s, _ in layers], target=0.7)
    assert abs(sum(ratios) / len(ratios) - 0.7) < 1e-6 and len(set(ratios)) == 3
    for (w, s, _), r in zip(layers, ratios):
        mask = call(w, s, backend, sparsity=r)
        assert torch.equal(mask, call(w, s, "torch", sparsity=r))
        assert (mask.sum(1) == int(w.shape[1] * r)).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_initial_mask_with_uneven_rows(one_layer, backend):
    w, s, _ = one_layer
    initial = recipes.sparsegpt_style_mask(w, s.hessian, 0.6, block=64)
    assert len(set(initial.sum(1).tolist())) > 1  # rows prune different counts
    mask = call(w, s, backend, initial_mask=initial)
    assert torch.equal(mask, call(w, s, "torch", initial_mask=initial))
    assert torch.equal(mask.sum(1), initial.sum(1)) and not torch.equal(mask, initial)


@pytest.mark.parametrize("backend", BACKENDS)
def test_initial_nm_mask(one_layer, backend):
    w, s, _ = one_layer
    metric = dk.sparsegpt_metric(w, s.hessian)
    initial = call(w, s, "torch", initial_metric=metric, prune_n=2, prune_m=4, max_cycle_time=0)
    kw = dict(initial_mask=initial, initial_metric=metric, prune_n=2, prune_m=4)
    mask = call(w, s, backend, **kw)
    assert torch.equal(mask, call(w, s, "torch", **kw))
    assert dk.nm_violations(mask) == [] and not torch.equal(mask, initial)
