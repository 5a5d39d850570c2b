"""Per-layer sparsity (PruneConfig.sparsity_profile): lists, dicts and OWL against a transcription of
the published rule (arXiv 2310.05175: layer outlier ratio, normalised to [0, 2 lambda], mean kept)."""
import numpy as np
import pytest
import torch

import dsnot_kernels as dk
from dsnot_kernels.pruning import find_blocks, find_sublayers, weight_view
from dsnot_kernels.pruning.profile import format_blocks, owl_block_sparsity

from pruning_models import calibration, tiny_model


def owl_transcribed(model, calib, m, lam, sparsity):
    """OWL written from the paper and its code's description, independently of the package: dense
    inputs of every linear layer from one full forward pass; Wanda score |W| * sqrt(mean over samples
    of sum over tokens of x²); per block the percentage of scores > m * the block's mean score; then
    (r - min) / (max - min) * 2 lam, minus its mean, plus (1 - sparsity) = density; sparsity = 1 - density."""
    _, blocks = find_blocks(model)
    inputs, hooks = {}, []

    def record(key):
        def hook(mod_, inp, out):
            inputs.setdefault(key, inp[0].detach().clone())
        return hook
    for i, block in enumerate(blocks):
        for name, mod in find_sublayers(block).items():
            hooks.append(mod.register_forward_hook(record((i, name))))
    with torch.no_grad():
        model(input_ids=calib, use_cache=False)
    for h in hooks:
        h.remove()
    ratios = []
    for i, block in enumerate(blocks):
        scores = []
        for name, mod in find_sublayers(block).items():
            x = inputs[(i, name)].double().reshape(calib.shape[0], -1, mod.in_features)  # OPT's MLP: (B*T, cols)
            scaler = (x ** 2).sum(dim=1).mean(dim=0)                 # mean over samples of sum over tokens
            scores.append((weight_view(mod).double().abs() * scaler.sqrt()).flatten())
        s = torch.cat(scores)
        ratios.append(float((s > s.mean() * m).sum()) / s.numel() * 100)
    r = np.array(ratios)
    density = (r - r.min()) * (1 / (r.max() - r.min()) * lam * 2)
    density = density - density.mean() + (1 - sparsity)
    return ratios, list(1 - density)


def _prune(model, **kw):
    masks = {}
    cfg = dk.PruneConfig(progress=False, batch_size=2, **kw)
    report = dk.prune_model(model, calibration(nsamples=6, seqlen=24),
                            cfg, on_mask=lambda i, n, mk: masks.__setitem__((i, n), mk.clone()))
    return masks, report


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_owl_ratios_equal_the_transcription_and_masks_follow_them(family):
    model = tiny_model(family, seed=0, layers=4)
    m, lam, sparsity = 2.0, 0.05, 0.6
    ratios, expected = owl_transcribed(model, calibration(nsamples=6, seqlen=24), m, lam, sparsity)
    assert max(ratios) > min(ratios)  # the rule is exercised, not its uniform fallback
    masks, report = _prune(model, sparsity=sparsity, sparsity_profile="owl", owl_m=m, owl_lambda=lam,
                           refine=False)
    prof = report["sparsity_profile"]
    assert prof["kind"] == "owl" and prof["outlier_ratios"] == pytest.approx(ratios, rel=1e-9, abs=1e-9)
    assert prof["block_sparsity"] == pytest.approx(expected, abs=1e-12)
    assert np.mean(prof["block_sparsity"]) == pytest.approx(sparsity, abs=1e-12)
    # blocks with more outliers keep more weights
    order = np.argsort(ratios)
    assert all(np.diff(np.array(prof["block_sparsity"])[order]) <= 1e-12)
    total_rows = pruned = numel = 0
    target = 0.0
    for (i, name), mask in masks.items():
        rows, cols = mask.shape
        per_row = int(cols * prof["block_sparsity"][i])
        assert torch.equal(mask.sum(1), torch.full((rows,), per_row))  # Wanda's per-row count at the block's ratio
        total_rows, pruned, numel = total_rows + rows, pruned + int(mask.sum()), numel + mask.numel()
        target += prof["block_sparsity"][i] * mask.numel()
    # the asked total, to within one weight per row of each sub-layer (per-row rounding down)
    assert 0 <= target - pruned <= total_rows
    assert abs(sparsity * numel - target) < 1e-6 * numel  # blocks of one size: the weighted mean is the asked
    assert report["sparsity"] == pytest.approx(pruned / numel)
    text = format_blocks(report)
    assert "owl (M 2.0, lambda 0.05)" in text and "block   3:" in text and "total: sparsity" in text


def test_owl_with_refinement_keeps_each_block_count():
    masks, report = _prune(tiny_model("llama", layers=3), sparsity=0.7, sparsity_profile="owl", owl_m=2.0,
                           skip="none", objective="dsnot")
    per_block = report["sparsity_profile"]["block_sparsity"]
    for (i, _), mask in masks.items():
        assert torch.equal(mask.sum(1), torch.full((mask.shape[0],), int(mask.shape[1] * per_block[i])))


def test_list_and_dict_profiles_give_each_sublayer_its_sparsity():
    masks, report = _prune(tiny_model("llama", layers=3), sparsity=0.5, sparsity_profile=[0.3, 0.5, 0.8])
    for (i, _), mask in masks.items():
        assert torch.equal(mask.sum(1), torch.full((mask.shape[0],), int(mask.shape[1] * [0.3, 0.5, 0.8][i])))
    assert [b["target"] for b in report["block_sparsity"]] == pytest.approx([0.3, 0.5, 0.8])
    prof = {"1": 0.25, 2: 0.75, "2.mlp.down_proj": 0.1}
    masks, _ = _prune(tiny_model("llama", layers=3), sparsity=0.5, sparsity_profile=prof)
    for (i, name), mask in masks.items():
        want = 0.1 if (i, name) == (2, "mlp.down_proj") else {0: 0.5, 1: 0.25, 2: 0.75}[i]
        assert torch.equal(mask.sum(1), torch.full((mask.shape[0],), int(mask.shape[1] * want))), (i, name)


def test_uniform_profile_is_todays_prune():
    a, _ = _prune(tiny_model("llama", layers=2), sparsity=0.6)
    b, _ = _prune(tiny_model("llama", layers=2), sparsity=0.6, sparsity_profile=[0.6, 0.6])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kw, match", [
    (dict(sparsity_profile="owl", pattern="2:4"), "unstructured"),
    (dict(sparsity_profile=[0.5, 0.5], pattern="2:4"), "unstructured"),
    (dict(sparsity_profile="owl2"), "sparsity_profile must be"),
    (dict(sparsity_profile=[0.5, 1.0]), r"in \[0, 1\)"),
    (dict(sparsity_profile={"x.q": 0.5}), "dict key"),
    (dict(sparsity_profile=[]), "empty"),
    (dict(owl_m=-1.0), "owl_m"),
    (dict(owl_lambda=float("nan")), "owl_lambda"),
])
def test_bad_profiles_are_refused_with_a_reason(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        dk.PruneConfig(**kw)


def test_profiles_that_do_not_fit_the_model_fail_before_any_work():
    model = tiny_model("llama", layers=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for prof, match in (([0.5, 0.5, 0.5], "3 sparsities for a model of 2 blocks"),
                        ({5: 0.5}, "names block 5")):
        with pytest.raises(ValueError, match=match):
            dk.prune_model(model, calibration(), dk.PruneConfig(sparsity_profile=prof, progress=False))
    with pytest.raises(ValueError, match="sub-layer '1.mlp.nope'"):  # the last block: still before any work
        dk.prune_model(model, calibration(), dk.PruneConfig(sparsity_profile={"1.mlp.nope": 0.5}, progress=False))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_owl_rule_edge_cases():
    assert owl_block_sparsity([3.0, 3.0, 3.0], 0.7, 0.08) == pytest.approx([0.7] * 3)  # no spread: uniform
    with pytest.raises(ValueError, match="too large"):
        owl_block_sparsity([0.0, 10.0], 0.95, 0.2)
