"""Every Python snippet of the README runs as pasted: alone, in a fresh namespace (its own imports,
no variable from an earlier snippet), in an empty working folder. Each is then checked for what it
claims (the asked sparsity, zeros where the mask says, a finite perplexity).

Snippets that load the embedded model (the whole-model quick start) are slow; the layer snippets
use small shapes and take seconds. The integrations' snippets live in docs/INTEGRATIONS.md and run
for real as ``python/examples/*`` (tests/test_examples.py)."""
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _params():
    out = []
    for i, block in enumerate(_blocks()):
        marks = [pytest.mark.slow] if "load_model" in block else []
        out.append(pytest.param(i, block, id=f"python-{i + 1}", marks=marks))
    return out


def _check_whole_model(ns):
    config, report = ns["config"], ns["report"]
    assert report["completed"] and report["sparsity"] == pytest.approx(config.sparsity, abs=1e-3)
    assert 1 < ns["ppl"] < 1e4
    assert (Path.cwd() / "pruned" / "config.json").exists()


def _check_layer(ns):
    mask, weight, pruned = ns["mask"], ns["weight"], ns["pruned"]
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert float(mask.float().mean()) == pytest.approx(0.6, abs=1e-2)
    assert torch.equal(pruned == 0, mask | (weight == 0))
    assert torch.equal(pruned[~mask], weight[~mask])


def _check_weight_updates(ns):
    mask, weight, new_weight = ns["mask"], ns["weight"], ns["new_weight"]
    assert mask.shape == new_weight.shape == weight.shape
    assert float(mask.float().mean()) == pytest.approx(0.6, abs=1e-2)
    assert bool((new_weight[mask] == 0).all()) and not torch.equal(new_weight, weight.masked_fill(mask, 0))


# A snippet is recognised by the names it defines; every snippet must match at least one check.
CHECKS = [({"report", "ppl", "config"}, _check_whole_model),
          ({"new_weight", "mask", "weight"}, _check_weight_updates),
          ({"mask", "weight", "pruned"}, _check_layer)]


def test_readme_has_the_snippets_it_promises():
    blocks = _blocks()
    assert any("prune_model" in b and "load_model" in b for b in blocks)
    assert any("refine_mask" in b for b in blocks) and any("dk.reconstruct" in b for b in blocks)


@pytest.mark.parametrize("index, block", _params())
def test_snippet_runs_as_pasted(index, block, tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    ns = {"__name__": "__main__"}
    exec(compile(block, f"README.md[python {index + 1}]", "exec"), ns)
    checks = [fn for names, fn in CHECKS if names <= set(ns)]
    assert checks, f"README python snippet {index + 1} matches no check: add one to CHECKS"
    for check in checks:  # every check whose names the snippet defines
        check(ns)
