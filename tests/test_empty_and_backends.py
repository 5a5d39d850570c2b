"""Issue 16 items 3-4: statistics that saw no sample are refused where the stats object is seen (the
driver, both integrations); ``available_backends`` names only backends that can really serve;
``PruneConfig`` refuses an unknown backend at construction."""
import sys
import types
from pathlib import Path

import pytest
import torch

import dsnot_kernels as dk
from dsnot_kernels.integrations import neural_compressor as inc

sys.path.insert(0, str(Path(__file__).parent))


def test_stats_say_they_are_empty():
    stats = dk.CalibrationStats(8)
    assert stats.is_empty and stats.nsamples == 0
    with pytest.raises(ValueError, match="no sample"):
        stats.check_not_empty("layer x")
    stats.add_batch(torch.randn(2, 4, 8))
    assert not stats.is_empty and stats.check_not_empty() is stats


def test_driver_refuses_a_sublayer_that_saw_no_input():
    pytest.importorskip("transformers")
    from pruning_models import calibration, tiny_model

    model = tiny_model("llama")
    mlp = model.model.layers[0].mlp
    mlp.forward = lambda x: mlp.gate_proj(x)[..., : x.shape[-1]]  # up_proj and down_proj never run
    before = mlp.up_proj.weight.detach().clone()
    with pytest.raises(dk.pruning.driver.PruningError, match="(up|down)_proj.*(no sample|never called)") as info:
        dk.prune_model(model, calibration(), dk.PruneConfig(progress=False, backend="torch"))
    assert info.value.block == 0
    assert torch.equal(mlp.up_proj.weight, before)  # the block was left untouched


def test_inc_refuses_a_wrapped_layer_without_samples():
    cols = 8
    layer = types.SimpleNamespace(weight=torch.nn.Parameter(torch.randn(4, cols), requires_grad=False))
    empty = dk.CalibrationStats(cols)
    wrapped = types.SimpleNamespace(layer=layer, scaler_row=empty.scaler_row, sum_metric_row=empty.sum_metric_row,
                                    var=empty.var.unsqueeze(1), nsamples=0)
    with pytest.raises(ValueError, match="no calibration sample"):
        inc.DSnoT(torch.rand(4, cols), 0.5, wrapped)


def test_torch_ao_refuses_step_without_samples():
    from dsnot_kernels.integrations.torch_ao import DSnoTSparsifier

    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    sparsifier = DSnoTSparsifier(0.5)
    sparsifier.prepare(model, config=None)
    with pytest.raises(RuntimeError, match="no calibration inputs"):
        sparsifier.step()


@pytest.mark.skipif(torch.cuda.is_available(), reason="about a torch without CUDA")
def test_no_backend_serves_cuda_without_cuda():
    assert dk.available_backends("cuda") == []
    report = dk.backend_report("cuda")
    assert set(report) == {"torch", "cpu", "cuda", "triton"}
    assert all(isinstance(why, str) and why for why in report.values())
    assert "is_available" in report["torch"] and "CUDA" in report["triton"]
    with pytest.raises(RuntimeError, match="cannot serve"):
        dk.ops._choose_backend("torch", torch.device("cuda"))


def test_backend_report_on_cpu_matches_available():
    report = dk.backend_report("cpu")
    assert [n for n, why in report.items() if why is None] == dk.available_backends("cpu")
    assert report["torch"] is None and "torch" in dk.available_backends("cpu")
    assert isinstance(report["cuda"], str)


@pytest.mark.parametrize("bad", ["nope", "CUDA", ""])
def test_prune_config_refuses_unknown_backend(bad):
    with pytest.raises(ValueError, match="backend"):
        dk.PruneConfig(backend=bad)


@pytest.mark.parametrize("good", [None, "torch", "cpu", "cuda", "triton"])
def test_prune_config_accepts_known_backends(good):
    assert dk.PruneConfig(backend=good).backend == good


def test_backend_report_names_objectives_a_backend_lacks():
    report = dk.backend_report("cpu", "cov")
    assert "does not implement objective 'cov'" in report["cuda"]
    assert report["torch"] is None
    assert dk.available_backends("cpu", "cov") == [n for n, why in report.items() if why is None]
