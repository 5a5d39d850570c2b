"""The README's Python snippets run as written (issue 16: they used ``x`` and ``layer`` undefined).

The first two snippets ("Use from Python") run in one namespace and must prune 60 % of the layer;
the whole-model snippet loads the embedded model (slow). The integration snippets are run for real
by ``python/examples/*`` (tests/test_examples.py)."""
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_layer_snippets_run_as_written(capsys):
    first, second = _blocks()[:2]
    ns = {}
    exec(compile(first, "README.md[python 1]", "exec"), ns)
    w = ns["layer"].weight
    assert float((w == 0).float().mean()) == pytest.approx(0.6, abs=1e-3)
    assert torch.equal(ns["mask"], w == 0)
    out = capsys.readouterr().out
    assert "torch" in out and "cuda" in out
    exec(compile(second, "README.md[python 2]", "exec"), ns)
    assert ns["mask"].shape == w.shape and float(ns["mask"].float().mean()) == pytest.approx(0.6, abs=1e-3)


@pytest.mark.slow
def test_whole_model_snippet_runs_as_written():
    block = next(b for b in _blocks() if "prune_model" in b and "load_model" in b)
    ns = {"dk": __import__("dsnot_kernels")}
    exec(compile(block, "README.md[whole model]", "exec"), ns)
    assert 1 < ns["ppl"] < 1e4 and ns["report"]["sparsity"] == pytest.approx(0.6, abs=1e-3)
