"""The layer-by-layer driver (spec §4) on tiny random models of every supported family."""
import copy

import pytest
import torch
from torch import nn

import dsnot_kernels as dk
from dsnot_kernels.pruning import (PruneConfig, PruningError, UnsupportedModelError, find_blocks,
                                   find_sublayers, is_refined, weight_view)
from pruning_models import FAMILIES, calibration, tiny_model

pytest.importorskip("transformers")

FAST = dict(progress=False, backend="torch")


def _masks(model, calib, config):
    masks = {}
    report = dk.prune_model(model, calib, config, on_mask=lambda i, n, m: masks.__setitem__((i, n), m.clone()))
    return masks, report


@pytest.mark.parametrize("family,pattern,sparsity", [(f, "unstructured", 0.7) for f in FAMILIES]
                         + [(f, "2:4", 0.5) for f in ("llama", "opt", "gpt2")])
def test_target_sparsity_and_nm(family, pattern, sparsity):
    model = tiny_model(family)
    masks, report = _masks(model, calibration(), PruneConfig(sparsity=sparsity, pattern=pattern, skip="none", **FAST))
    _, blocks = find_blocks(model)
    assert len(masks) == sum(len(find_sublayers(b)) for b in blocks) == len(report["sublayers"])
    for (i, name), mask in masks.items():
        rows, cols = mask.shape
        if pattern == "unstructured":
            assert (mask.sum(1) == int(cols * sparsity)).all(), (i, name)
        else:
            assert (mask.view(rows, cols // 4, 4).sum(-1) == 2).all(), (i, name)
        W = weight_view(find_sublayers(blocks[i])[name])
        assert bool((W[mask] == 0).all()) and bool((W[~mask] != 0).all())
    for entry in report["sublayers"]:
        cols = entry["shape"][1]
        want = int(cols * sparsity) / cols if pattern == "unstructured" else 0.5
        assert entry["sparsity"] == pytest.approx(want, abs=1e-6)
    assert report["completed"] and report["swaps"] > 0


@pytest.mark.parametrize("family,initial,objective,pattern", [
    ("llama", "wanda", "dsnot", "unstructured"), ("qwen2", "magnitude", "dsnot", "2:4"),
    ("opt", "wanda", "mse", "unstructured"), ("gpt2", "sparsegpt_metric", "dsnot", "unstructured"),
    ("mistral", "sparsegpt_metric", "mse", "2:4"), ("llama", "wanda", "cov", "unstructured"),
    ("qwen2", "wanda", "cov", "2:4"), ("llama", "magnitude", "cov_window", "unstructured"),
    ("mistral", "wanda", "cov_window", "2:4"), ("llama", "wanda", "swap", "unstructured"),
    ("qwen2", "magnitude", "swap", "2:4")])
def test_masks_equal_refine_mask_on_own_statistics(family, initial, objective, pattern):
    """The test gathers the statistics itself (its own hooks) and calls refine_mask."""
    model = tiny_model(family)
    calib = calibration()
    seqlen = calib.shape[1]
    _, blocks = find_blocks(model)
    own = {}

    def hook_for(i, name, cols):
        def hook(module, inp, out):
            own.setdefault((i, name), dk.CalibrationStats(cols, hessian=True)).add_batch(
                inp[0].reshape(-1, seqlen, cols))
        return hook

    handles = [m.register_forward_hook(hook_for(i, name, weight_view(m).shape[1]))
               for i, b in enumerate(blocks) for name, m in find_sublayers(b).items()]
    config = PruneConfig(sparsity=0.6, pattern=pattern, initial=initial, objective=objective, skip="mlp",
                         batch_size=4, window=7, **FAST)
    checked = []

    def check(i, name, mask):
        # called after the statistics pass of block i, before its weights are zeroed
        stats = own[(i, name)]
        W = weight_view(find_sublayers(blocks[i])[name])
        metric = None if initial == "wanda" else dk.initial_metric(initial, W, stats)
        n, m = (0, 0) if pattern == "unstructured" else (2, 4)
        refined = is_refined(name, config)
        expected = dk.refine_mask(W, stats.sum_metric_row, stats.var, stats.scaler_row, initial_metric=metric,
                                  sparsity=0.6, prune_n=n, prune_m=m, max_cycle_time=None if refined else 0,
                                  objective=objective if refined else "dsnot",
                                  mean=stats.mean if refined and objective == "mse" else None,
                                  second_moment=(stats.hessian if refined and objective in dk.ops.SECOND_MOMENT_OBJECTIVES
                                                 else None),
                                  window=7, backend="torch")
        assert torch.equal(mask, expected), (i, name)
        checked.append((i, name))

    try:
        dk.prune_model(model, calib, config, on_mask=check)
    finally:
        for h in handles:
            h.remove()
    assert len(checked) == len(own)


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_batch_size_does_not_change_the_result(family):
    calib = calibration(nsamples=7)
    results = []
    for bs in (1, 3):
        model = tiny_model(family)
        masks, report = _masks(model, calib, PruneConfig(sparsity=0.6, skip="none", batch_size=bs, **FAST))
        results.append((masks, [p.detach().clone() for p in model.parameters()]))
    for masks, params in results[1:]:
        assert masks.keys() == results[0][0].keys()
        assert all(torch.equal(masks[k], results[0][0][k]) for k in masks)
        assert all(torch.equal(a, b) for a, b in zip(params, results[0][1]))


@pytest.mark.parametrize("family,skip", [("llama", "mlp"), ("opt", "self_attn"), ("gpt2", "none"),
                                         ("gpt2", "mlp"), ("opt", "mlp")])
def test_skip_rules(family, skip):
    model = tiny_model(family)
    report = dk.prune_model(model, calibration(), PruneConfig(sparsity=0.6, skip=skip, **FAST))
    kinds = {e["kind"] for e in report["sublayers"]}
    assert kinds == {"self_attn", "mlp"}
    for e in report["sublayers"]:
        assert e["refined"] == (skip == "none" or e["kind"] != skip), e["name"]
        if not e["refined"]:
            assert e["swaps"] == 0
    assert any(e["swaps"] > 0 for e in report["sublayers"] if e["refined"])


def test_no_refine_and_skip_sublayers():
    model = tiny_model("llama")
    report = dk.prune_model(model, calibration(), PruneConfig(refine=False, **FAST))
    assert report["swaps"] == 0 and not any(e["refined"] for e in report["sublayers"])
    report = dk.prune_model(tiny_model("llama"), calibration(),
                            PruneConfig(skip="none", skip_sublayers=("q_proj",), **FAST))
    assert [e["refined"] for e in report["sublayers"] if e["name"].endswith("q_proj")] == [False, False]


def test_report_is_json_and_records_error():
    import json

    model = tiny_model("llama")
    calib = calibration()
    report = dk.prune_model(model, calib, PruneConfig(sparsity=0.5, skip="none", record_error=True, **FAST))
    text = json.dumps(report)
    assert "mask_time_s" in text and report["forward_time_s"] > 0
    for e in report["sublayers"]:
        for which in ("initial", "refined"):
            err = e["error"][which]
            assert 0 <= err["mean_sq"] <= err["mse"] * (1 + 1e-9)


def test_recorded_error_matches_direct_computation():
    """mean² and total MSE of (W_masked - W) x, from the statistics, equal a direct computation."""
    from dsnot_kernels.pruning.output_error import output_error

    torch.manual_seed(0)
    x = torch.randn(5, 30, 16, dtype=torch.float64).float() + 0.3
    W = torch.randn(8, 16)
    stats = dk.CalibrationStats(16, hessian=True)
    stats.add_batch(x)
    mask = torch.rand(8, 16) < 0.5
    got = output_error(W, mask, stats)
    e = (x.reshape(-1, 16).double() @ (W.double() * mask).t())      # (tokens, rows)
    assert got["mean_sq"] == pytest.approx(float((e.mean(0) ** 2).mean()), rel=1e-4)
    assert got["mse"] == pytest.approx(float((e ** 2).mean()), rel=1e-4)


def test_unknown_architecture_is_a_clear_error():
    class Strange(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.convs = nn.ModuleList([nn.Conv1d(8, 8, 1)])

        def forward(self, input_ids, **kw):
            return self.emb(input_ids)

    with pytest.raises(UnsupportedModelError, match="found no decoder blocks.*Tested: Llama"):
        dk.prune_model(Strange(), torch.zeros(2, 8, dtype=torch.long), PruneConfig(**FAST))


def test_failure_midway_leaves_a_usable_model(monkeypatch):
    import dsnot_kernels.pruning.sublayer as driver  # what the driver calls per sub-layer

    calib = calibration()
    clean = tiny_model("llama", layers=3)
    dk.prune_model(clean, calib, PruneConfig(**FAST))
    original = tiny_model("llama", layers=3)
    model = copy.deepcopy(original)
    real = driver.refine_mask
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7 + 4:  # block 1, fourth sub-layer (o_proj)
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "refine_mask", flaky)
    with pytest.raises(PruningError, match=r"block 1 .*sub-layer self_attn.o_proj.*injected failure") as info:
        dk.prune_model(model, calib, PruneConfig(**FAST))
    assert info.value.block == 1 and info.value.sublayer == "self_attn.o_proj"
    assert len(info.value.report["sublayers"]) == 7  # block 0 finished
    blocks = find_blocks(model)[1]
    for i, want in [(0, clean), (1, original), (2, original)]:
        for a, b in zip(blocks[i].parameters(), find_blocks(want)[1][i].parameters()):
            assert torch.equal(a, b), i
    assert model.config.use_cache is True and not model.training
    model(input_ids=calib[:1])  # still usable


def test_perplexity_matches_manual_computation():
    model = tiny_model("llama")
    ids = torch.randint(0, 96, (100,), generator=torch.Generator().manual_seed(7))
    got = dk.perplexity(model, ids, 24)
    total = 0.0
    with torch.no_grad():
        for w in range(4):
            x = ids[w * 24:(w + 1) * 24].unsqueeze(0)
            logits = model(input_ids=x).logits[0, :-1]
            total += float(nn.functional.cross_entropy(logits, x[0, 1:])) * 24
    assert got == pytest.approx(float(torch.exp(torch.tensor(total / 96))), rel=1e-5)
    assert dk.perplexity(model, ids, 24, max_windows=2) != got


def test_config_validation():
    with pytest.raises(ValueError, match="pattern"):
        PruneConfig(pattern="2-4")
    with pytest.raises(ValueError, match="skip"):
        PruneConfig(skip="attn")
    assert PruneConfig(skip="no_skip").skip == "none"
    assert PruneConfig(pattern="4:8").target_sparsity == 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_blocks_computed_on_another_device_come_back():
    model = tiny_model("llama")
    report = dk.prune_model(model, calibration(), PruneConfig(device="cuda", progress=False))
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert report["sparsity"] == pytest.approx(0.5)
