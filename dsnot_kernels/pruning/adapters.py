"""Model adapters: where a model keeps its decoder blocks and which sub-layers are prunable.

Known families are looked up by attribute path (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3: ``model.layers``; OPT:
``model.decoder.layers``; GPT-2: ``transformer.h``); anything else falls back to the largest
``nn.ModuleList`` of identical blocks that hold linear layers. A model with neither raises
``UnsupportedModelError`` naming what was searched.
"""
from __future__ import annotations

import torch
from torch import nn

KNOWN_BLOCK_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "model.transformer.h",
                     "transformer.layers", "gpt_neox.layers", "transformer.blocks")


class UnsupportedModelError(ValueError):
    """The model's decoder blocks or linear sub-layers could not be found."""


def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D
        return Conv1D
    except Exception:  # transformers missing or moved: no GPT-2 style layers then
        return None


def is_prunable(module: nn.Module) -> bool:
    conv1d = _conv1d_type()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def is_transposed(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` keeps its weight as (in_features, out_features)."""
    conv1d = _conv1d_type()
    return conv1d is not None and isinstance(module, conv1d)


def weight_view(module: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features) (a view, transposed for ``Conv1D``)."""
    w = module.weight.data
    return w.t() if is_transposed(module) else w


def _get_path(model: nn.Module, path: str):
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_sublayers(block: nn.Module) -> dict:
    """``{name: module}`` of the prunable linear layers inside one block, in definition order."""
    return {name: m for name, m in block.named_modules() if name and is_prunable(m)}


def find_blocks(model: nn.Module):
    """``(path, ModuleList)`` of the model's decoder blocks."""
    for path in KNOWN_BLOCK_PATHS:
        blocks = _get_path(model, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) and find_sublayers(blocks[0]):
            return path, blocks
    best = None
    for path, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if len({type(b) for b in mod}) != 1 or not find_sublayers(mod[0]):
            continue
        size = sum(p.numel() for p in mod.parameters())
        if best is None or size > best[2]:
            best = (path, mod, size)
    if best is None:
        raise UnsupportedModelError(
            f"dsnot_kernels cannot prune {type(model).__name__}: found no decoder blocks (looked for "
            f"{', '.join(KNOWN_BLOCK_PATHS)} and for any nn.ModuleList of identical blocks holding "
            "nn.Linear or transformers Conv1D layers). Tested: Llama (2 and 3), Mistral, Qwen2, Qwen3, Gemma 2, "
            "Gemma 3, Phi-3, OPT, GPT-2 and models laid out like them (docs/MODELS.md).")
    return best[0], best[1]


def sublayer_kind(name: str) -> str:
    """"self_attn" for attention projections, "mlp" for everything else (OPT's fc1/fc2 included)."""
    head = name.split(".")[0].lower()
    return "self_attn" if ("attn" in head or "attention" in head) else "mlp"


def is_refined(name: str, config) -> bool:
    """The authors' skip rule (spec §4): skipped sub-layers get the initial mask only."""
    if not config.refine:
        return False
    if config.skip != "none" and sublayer_kind(name) == config.skip:
        return False
    return name.split(".")[-1] not in config.skip_sublayers
