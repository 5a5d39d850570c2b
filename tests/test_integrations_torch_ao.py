"""``DSnoTSparsifier`` (torch.ao.pruning): masks equal refine_mask on statistics gathered here."""
import copy

import pytest
import torch
from torch import nn

import dsnot_kernels as dk
from dsnot_kernels.integrations.torch_ao import DSnoTSparsifier

FQNS = ["0.weight", "2.weight", "4.weight"]


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16))


def calibration(seed=1, batches=3):
    g = torch.Generator().manual_seed(seed)
    shift = torch.randn(32, generator=g)
    return [torch.randn(2, 8, 32, generator=g) + shift for _ in range(batches)]


def own_stats(model, data, hessian=False):
    """Each Linear's input statistics, computed by running the dense layers by hand."""
    stats = {fqn: dk.CalibrationStats(model[int(fqn[0])].in_features, hessian=hessian) for fqn in FQNS}
    with torch.no_grad():
        for x in data:
            for i, layer in enumerate(model):
                if isinstance(layer, nn.Linear):
                    stats[f"{i}.weight"].add_batch(x)
                x = layer(x)
    return stats


def expected_mask(weight, s, initial="wanda", **kw):
    metric = None if initial == "wanda" else dk.initial_metric(initial, weight, s)
    return dk.refine_mask(weight, s.sum_metric_row, s.var, s.scaler_row, initial_metric=metric,
                          backend="torch", **kw)


def run(model, data, sparsifier, config=None):
    sparsifier.prepare(model, config)
    with torch.no_grad():
        for x in data:
            model(x)
    sparsifier.step()


CASES = [  # sparsifier kwargs, refine_mask kwargs
    (dict(sparsity_level=0.5), dict(sparsity=0.5)),
    (dict(sparsity_level=0.6, without_same_sign=False, update_threshold=0.0),
     dict(sparsity=0.6, without_same_sign=False, update_threshold=0.0)),
    (dict(semi_structured_block_size=4), dict(prune_n=2, prune_m=4)),
    (dict(prune_n=4, prune_m=8), dict(prune_n=4, prune_m=8)),
    (dict(sparsity_level=0.5, initial="magnitude"), dict(sparsity=0.5, initial="magnitude")),
    (dict(sparsity_level=0.5, initial="sparsegpt"), dict(sparsity=0.5, initial="sparsegpt")),
    (dict(sparsity_level=0.5, refine=False), dict(sparsity=0.5, max_cycle_time=0)),
    (dict(sparsity_level=0.5, max_cycle_time=5, pow_of_var_regrowing=0.5),
     dict(sparsity=0.5, max_cycle_time=5, pow_of_var_regrowing=0.5)),
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_masks_equal_refine_mask(case):
    sparsifier_kw, ref_kw = case
    model, data = small_model(), calibration()
    dense = copy.deepcopy(model)
    initial = ref_kw.pop("initial", "wanda")
    stats = own_stats(dense, data, hessian=initial == "sparsegpt")
    sparsifier = DSnoTSparsifier(**sparsifier_kw)
    run(model, data, sparsifier)
    refined_somewhere = False
    for fqn in FQNS:
        layer = model[int(fqn[0])]
        mask = layer.parametrizations.weight[0].mask
        assert mask.dtype == layer.parametrizations.weight.original.dtype
        pruned = expected_mask(dense[int(fqn[0])].weight.detach(), stats[fqn], initial, **ref_kw)
        assert torch.equal(mask, (~pruned).to(mask.dtype)), fqn
        refined_somewhere |= sparsifier.state[fqn]["swaps"] > 0
    assert refined_somewhere == (ref_kw.get("max_cycle_time", 50) > 0)


def test_squash_mask_leaves_zeros_exactly_where_pruned():
    model, data = small_model(), calibration()
    dense = copy.deepcopy(model)
    stats = own_stats(dense, data)
    sparsifier = DSnoTSparsifier(sparsity_level=0.5)
    run(model, data, sparsifier)
    sparsifier.squash_mask()
    for fqn in FQNS:
        layer, original = model[int(fqn[0])], dense[int(fqn[0])].weight.detach()
        assert not hasattr(layer, "parametrizations") and isinstance(layer.weight, nn.Parameter)
        pruned = expected_mask(original, stats[fqn], sparsity=0.5)
        assert torch.equal(layer.weight == 0, pruned)
        assert torch.equal(layer.weight[~pruned], original[~pruned])
        assert not layer._forward_pre_hooks
    model(calibration(batches=1)[0])  # still runs


def test_per_layer_config_overrides_defaults():
    """OWL-style per-layer ratios and a per-layer pattern through the config list."""
    model, data = small_model(), calibration()
    dense = copy.deepcopy(model)
    stats = own_stats(dense, data)
    config = [{"tensor_fqn": "0.weight", "sparsity_level": 0.4},
              {"tensor_fqn": "2.weight", "semi_structured_block_size": 4},
              {"tensor_fqn": "4.weight", "sparsity_level": 0.7}]
    run(model, data, DSnoTSparsifier(sparsity_level=0.5), config)
    expected = {"0.weight": dict(sparsity=0.4), "2.weight": dict(prune_n=2, prune_m=4),
                "4.weight": dict(sparsity=0.7)}
    for fqn, kw in expected.items():
        mask = model[int(fqn[0])].parametrizations.weight[0].mask
        assert torch.equal(mask == 0, expected_mask(dense[int(fqn[0])].weight.detach(), stats[fqn], **kw))


def test_mse_objective_and_batches_of_one_sample():
    model, data = small_model(3), [x[0] for x in calibration(4)]  # (T, in) inputs: one sample each
    dense = copy.deepcopy(model)
    stats = own_stats(dense, data)
    run(model, data, DSnoTSparsifier(sparsity_level=0.5, objective="mse"))
    for fqn in FQNS:
        s = stats[fqn]
        pruned = expected_mask(dense[int(fqn[0])].weight.detach(), s, sparsity=0.5, objective="mse", mean=s.mean)
        assert torch.equal(model[int(fqn[0])].parametrizations.weight[0].mask == 0, pruned)


@pytest.mark.parametrize("objective,window", [("cov", 50), ("cov_window", 6), ("swap", 100)])
def test_cov_objectives_gather_the_second_moment(objective, window):
    model, data = small_model(5), calibration(3)
    dense = copy.deepcopy(model)
    stats = own_stats(dense, data, hessian=True)
    run(model, data, DSnoTSparsifier(sparsity_level=0.6, objective=objective, window=window))
    for fqn in FQNS:
        s = stats[fqn]
        pruned = expected_mask(dense[int(fqn[0])].weight.detach(), s, sparsity=0.6, objective=objective,
                               second_moment=s.hessian, window=window)
        assert torch.equal(model[int(fqn[0])].parametrizations.weight[0].mask == 0, pruned)


def test_step_without_calibration_is_a_clear_error():
    sparsifier = DSnoTSparsifier()
    sparsifier.prepare(small_model(), None)
    with pytest.raises(RuntimeError, match="no calibration inputs"):
        sparsifier.step()


def test_bad_pattern_is_refused_at_prepare():
    with pytest.raises(ValueError, match="divisible"):
        DSnoTSparsifier(prune_n=2, prune_m=5).prepare(small_model(), None)


def test_keyword_input_reaches_the_hooks():
    class KwModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(32, 16)

        def forward(self, x):
            return self.proj(input=x)

    model, data = KwModel(), calibration()
    weight = model.proj.weight.detach().clone()
    sparsifier = DSnoTSparsifier(sparsity_level=0.5)
    sparsifier.prepare(model, None)
    stats = dk.CalibrationStats(32)
    with torch.no_grad():
        for x in data:
            model(x)
            stats.add_batch(x)
    sparsifier.step()
    assert torch.equal(model.proj.parametrizations.weight[0].mask == 0, expected_mask(weight, stats, sparsity=0.5))
