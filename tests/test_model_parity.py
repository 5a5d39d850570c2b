"""Whole-model parity (issue 21): the same model pruned with two backends gets identical masks in
every sub-layer (docs/KERNEL_CONTRACT.md: identical masks on every valid input).

The embedded SmolLM2-135M (Q4_1 weights de-quantised: few values per block, so near-ties of the
wanda metric are common; issue 21 found one that the reference's misrounded square root flipped)
on two English texts: the README's calibration text (the first half of ``pydoc_data.topics``) and
the docstrings of some standard-library modules. The fast case prunes the first blocks only; the
slow cases the whole model, unstructured 60 % and 2:4, objectives "dsnot" and "mse" (and "cov",
"cov_window" on a few blocks). Triton runs under the interpreter on a tiny Llama made from a config.
"""
from __future__ import annotations

import copy
import importlib
import inspect

import pytest
import torch

import dsnot_kernels as dk
from dsnot_kernels.pruning import PruneConfig

pytest.importorskip("transformers")

STDLIB_MODULES = ("argparse", "collections", "functools", "json", "logging", "pathlib", "re", "subprocess",
                  "typing", "unittest", "email.message", "http.client", "tarfile", "zipfile", "shutil",
                  "configparser", "threading", "inspect", "textwrap", "difflib")


def stdlib_docstrings() -> str:
    """The second calibration text: docstrings of standard-library modules and their public
    classes and functions, in a fixed order (English prose, no download)."""
    parts = []
    for name in STDLIB_MODULES:
        mod = importlib.import_module(name)
        parts.append(inspect.getdoc(mod) or "")
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", None) == name:
                doc = inspect.getdoc(obj)
                if doc:
                    parts.append(doc)
    return "\n\n".join(p for p in parts if p)


def _pydoc_text():
    from dsnot_kernels.data import default_texts
    return default_texts()[0]


TEXTS = {"pydoc": _pydoc_text, "stdlib": stdlib_docstrings}


@pytest.fixture(scope="module")
def embedded():
    """(model, tokenizer) of the embedded model, loaded once; tests prune deep copies."""
    try:
        from dsnot_kernels.models import load_embedded
        return load_embedded()
    except (FileNotFoundError, ImportError) as exc:  # the model ships in a package
        pytest.skip(f"embedded model unavailable: {exc}")


def _copy(model, blocks=None):
    model = copy.deepcopy(model)
    if blocks is not None:  # the first blocks only (a shorter model of the same kind)
        model.model.layers = model.model.layers[:blocks]
        model.config.num_hidden_layers = blocks
    return model


def _calibration(tokenizer, text, nsamples, seqlen):
    from dsnot_kernels.data import calibration_windows, tokenize
    return calibration_windows(tokenize(tokenizer, TEXTS[text]()), nsamples, seqlen, seed=0)


def _masks(model, calib, config):
    masks = {}
    report = dk.prune_model(model, calib, config, on_mask=lambda i, n, m: masks.__setitem__((i, n), m.clone()))
    return masks, report


def assert_same_masks(a, b, label):
    """Every sub-layer's mask equal; on a difference, name the first sub-layer and rows."""
    assert a.keys() == b.keys(), label
    for key in a:  # in pruning order: the first difference is the one that matters
        if not torch.equal(a[key], b[key]):
            rows = (a[key] != b[key]).any(1).nonzero().flatten().tolist()
            raise AssertionError(f"{label}: first difference in block {key[0]} {key[1]}, rows {rows[:10]} "
                                 f"({len(rows)} rows)")


def _compare(embedded, text, nsamples, seqlen, blocks, backends=("torch", "cpu"), **cfg):
    model, tok = embedded
    for b in backends:
        if b not in dk.available_backends("cpu"):
            pytest.skip(f"backend {b!r} does not serve CPU tensors here")
    calib = _calibration(tok, text, nsamples, seqlen)
    config = dict(skip="mlp", progress=False, **cfg)
    results = {b: _masks(_copy(model, blocks), calib, PruneConfig(backend=b, **config)) for b in backends}
    ref_masks, ref_report = results[backends[0]]
    assert ref_report["completed"]
    swaps = sum(e["swaps"] for e in ref_report["sublayers"])
    assert swaps > 0  # the refinement did swap: the comparison covers the swap loop
    for b in backends[1:]:
        assert_same_masks(results[b][0], ref_masks, f"{b} vs {backends[0]}, {text}, {cfg}")
        assert [e["swaps"] for e in results[b][1]["sublayers"]] == [e["swaps"] for e in ref_report["sublayers"]]
    return ref_masks


def test_fast_first_blocks(embedded):
    """Default suite: the first 2 blocks, 4 x 128 calibration tokens, 60 % unstructured."""
    masks = _compare(embedded, "pydoc", 4, 128, 2, sparsity=0.6)
    assert all(bool((m.sum(1) == int(m.shape[1] * 0.6)).all()) for m in masks.values())


@pytest.mark.slow
def test_first_blocks_24_mse_stdlib(embedded):
    _compare(embedded, "stdlib", 4, 128, 4, pattern="2:4", objective="mse")


def test_stdlib_text_is_long_enough(embedded):
    _, tok = embedded
    ids = _calibration(tok, "stdlib", 32, 512)
    assert ids.shape == (32, 512) and len(stdlib_docstrings()) > 100_000


@pytest.mark.slow
@pytest.mark.parametrize("text", ["pydoc", "stdlib"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
@pytest.mark.parametrize("objective", ["dsnot", "mse"])
def test_whole_model(embedded, text, pattern, objective):
    """The whole embedded model (30 blocks), 16 x 256 calibration tokens, torch vs cpu."""
    _compare(embedded, text, 16, 256, None, sparsity=0.6, pattern=pattern, objective=objective)


@pytest.mark.slow
def test_whole_model_issue_setting(embedded):
    """Issue 21's own setting (32 x 512 tokens, 60 % unstructured): the first difference was in
    block 11 q_proj row 34 before the fix."""
    _compare(embedded, "pydoc", 32, 512, None, sparsity=0.6)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["cov", "cov_window"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_second_moment_objectives_first_blocks(embedded, objective, pattern):
    """Objectives "cov" and "cov_window": the CPU kernel vs the reference on real layers (3 blocks)."""
    _compare(embedded, "pydoc", 8, 256, 3, sparsity=0.6, pattern=pattern, objective=objective)


def _tiny_llama_masks(backend, pattern, objective):
    from pruning_models import calibration, tiny_model
    model = tiny_model("llama", seed=3)
    cfg = PruneConfig(sparsity=0.6, pattern=pattern, objective=objective, skip="none", backend=backend,
                      progress=False)
    return _masks(model, calibration(nsamples=4, seqlen=32), cfg)


@pytest.mark.slow
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
@pytest.mark.parametrize("objective", ["dsnot", "mse", "swap"])
def test_triton_interpreter_tiny_llama(pattern, objective):
    """Triton (interpreter on CPU) vs the reference and the CPU kernel, every sub-layer refined."""
    if "triton" not in dk.available_backends("cpu"):
        pytest.skip("triton does not serve CPU tensors (needs TRITON_INTERPRET=1 and triton)")
    ref, report = _tiny_llama_masks("torch", pattern, objective)
    assert sum(e["swaps"] for e in report["sublayers"]) > 0
    for backend in ["triton"] + (["cpu"] if "cpu" in dk.available_backends("cpu") else []):
        got, _ = _tiny_llama_masks(backend, pattern, objective)
        assert_same_masks(got, ref, f"{backend} vs torch, tiny llama {pattern} {objective}")
