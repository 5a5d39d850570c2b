"""The public names of docs/API.md import from where users import them, with the documented
parameters and defaults, and do what their one-line contract says on a tiny input. A move of the
code behind them (new folders, split modules) must leave this file passing unchanged."""
import ast
import dataclasses
import importlib
import importlib.util
import inspect
from pathlib import Path

import pytest
import torch

import dsnot_kernels as dk

ROOT = Path(__file__).resolve().parents[1]

# name -> the documented keyword parameters (and defaults) a caller may rely on
TOP_LEVEL = {
    "CalibrationStats": {"device": "cpu", "hessian": False},
    "refine_mask": {"initial_metric": None, "initial_mask": None, "sparsity": 0.5, "prune_n": 0, "prune_m": 0,
                    "max_cycle_time": None, "update_threshold": 0.1, "pow_of_var_regrowing": 1.0,
                    "without_same_sign": True, "backend": None, "objective": "dsnot", "mean": None,
                    "second_moment": None, "window": 100, "return_swaps": False},
    "available_backends": {"device": "cpu", "objective": "dsnot"},
    "backend_report": {"device": "cpu", "objective": "dsnot"},
    "prune_model": {"config": None},
    "PruneConfig": {},
    "perplexity": {"max_windows": None},
    "sparsegpt": {"sparsity": 0.5, "prune_n": 0, "prune_m": 0, "blocksize": 128, "percdamp": 0.01},
    "reconstruct": {},
    "nm_violations": {"n": 2, "m": 4},
    "check_nm": {"n": 2, "m": 4},
    "to_sparse_24": {"dtype": None, "min_size": 512, "dry_run": False},
    "initial_metric": {}, "wanda_metric": {}, "magnitude_metric": {}, "sparsegpt_metric": {},
}
PRUNE_CONFIG_DEFAULTS = {"sparsity": 0.5, "pattern": "unstructured", "initial": "wanda", "refine": True,
                         "skip": "mlp", "max_cycle_time": None, "update_threshold": 0.1,
                         "pow_of_var_regrowing": 1.0, "objective": "dsnot", "window": 100,
                         "reconstruct": False, "backend": None}
# module -> names users import from it
MODULES = {
    "dsnot_kernels.models": ["load_model", "save_model"],
    "dsnot_kernels.data": ["calibration_windows", "default_texts", "tokenize"],
    "dsnot_kernels.pruning": ["prune_model", "PruneConfig", "PruningError"],
    "dsnot_kernels.integrations.neural_compressor": ["DSnoT", "patch", "unpatch"],
    "dsnot_kernels.integrations.torch_ao": ["DSnoTSparsifier"],
    "dsnot_kernels.cli": ["main", "build_parser"],
}
LLMC_FIELDS = ["sparsity", "ignore", "initial", "refine", "objective", "skip", "window", "max_cycle_time",
               "update_threshold", "pow_of_var_regrowing", "backend", "reconstruct"]


@pytest.mark.parametrize("name", sorted(TOP_LEVEL))
def test_top_level_name(name):
    obj = getattr(dk, name)
    assert callable(obj) and name in dk.__all__
    params = inspect.signature(obj).parameters
    for arg, default in TOP_LEVEL[name].items():
        assert arg in params, f"dk.{name} lost parameter {arg}"
        assert params[arg].default == default, f"dk.{name}({arg}=...) default changed"


def test_prune_config_fields_and_defaults():
    fields = {f.name: f.default for f in dataclasses.fields(dk.PruneConfig)}
    for name, default in PRUNE_CONFIG_DEFAULTS.items():
        assert fields.get(name, "missing") == default, name
    assert dk.prune_model is importlib.import_module("dsnot_kernels.pruning").prune_model


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_names(module):
    mod = importlib.import_module(module)
    for name in MODULES[module]:
        assert callable(getattr(mod, name)), f"{module}.{name}"


def test_calibration_stats_attributes_and_refine_mask():
    torch.manual_seed(0)
    stats = dk.CalibrationStats(32, hessian=True)
    assert stats.is_empty
    stats.add_batch(torch.randn(2, 16, 32))
    assert stats.check_not_empty("layer") is stats and stats.nsamples == 2
    for attr in ("scaler_row", "sum_metric_row", "var", "mean"):
        assert getattr(stats, attr).shape == (32,) and getattr(stats, attr).dtype == torch.float32
    assert stats.hessian.shape == (32, 32)
    weight = torch.randn(8, 32)
    mask, swaps = dk.refine_mask(weight, stats.sum_metric_row, stats.var, stats.scaler_row, sparsity=0.5,
                                 return_swaps=True)
    assert mask.dtype == torch.bool and mask.shape == weight.shape and swaps.shape == (8,)
    assert bool((mask.sum(1) == 16).all())
    assert "torch" in dk.available_backends("cpu") and dk.backend_report("cpu")["torch"] is None


def test_nm_and_weight_updates():
    torch.manual_seed(0)
    weight = torch.randn(8, 16)
    x = torch.randn(64, 16)
    hessian = 2 * x.t() @ x / 64
    mask, new_weight = dk.sparsegpt(weight, hessian, prune_n=2, prune_m=4)
    assert dk.nm_violations(mask, n=2, m=4) == [] and dk.nm_violations(new_weight, n=2, m=4) == []
    dk.check_nm(new_weight, n=2, m=4)
    assert bool((dk.reconstruct(weight, mask, hessian)[mask] == 0).all())
    assert dk.nm_violations(torch.zeros(8, 16, dtype=torch.bool), n=2, m=4) != []


def test_console_script_and_module_entry_points():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dsnot-prune = "dsnot_kernels.cli:main"' in text
    assert callable(importlib.import_module("dsnot_kernels.cli").main)
    assert (ROOT / "dsnot_kernels" / "__main__.py").exists()
    assert "--sparsity" in importlib.import_module("dsnot_kernels.cli").build_parser().format_help()


def test_llmcompressor_modifier():
    """``DSnoTModifier`` with its documented fields; without llm-compressor the import fails with
    an ImportError that says how to get it (its own venv)."""
    try:
        mod = importlib.import_module("dsnot_kernels.integrations.llmcompressor")
    except ImportError as exc:
        assert "make llmcompressor-venv" in str(exc)
        source = importlib.util.find_spec("dsnot_kernels.integrations.llmcompressor").origin  # not executed
        tree = ast.parse(Path(source).read_text())
        cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "DSnoTModifier")
        fields = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    else:
        fields = set(mod.DSnoTModifier.model_fields)
        assert {"mask_structure", "targets"} <= fields
    missing = [f for f in LLMC_FIELDS if f not in fields]
    assert not missing, missing
