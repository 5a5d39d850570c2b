"""Capture what each decoder block is called with (spec §4), without running the blocks.

Every block's ``forward`` is replaced for one model call per calibration batch by a stub that
records its arguments (hidden states for block 0; attention mask, position ids or position
embeddings, whatever this transformers version passes, for every block, since some models give
different layers different masks) and passes the hidden states through; the last stub stops the
call, so no logits are computed. Stubs return the hidden states unchanged as a plain tensor; a
model of an older transformers that indexes a tuple (``layer_outputs[0]``) then hands the next stub
a slice, which is harmless: only block 0's hidden states are kept, and no real block (so no hook of
a caller) runs during the capture.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


class _StopForward(Exception):
    pass


@dataclass
class BlockCall:
    """Positional arguments after the hidden states, and keyword arguments, of one block call."""
    args: tuple
    kwargs: dict


@dataclass
class Captured:
    inputs: list = field(default_factory=list)   # per batch: (B, T, hidden) hidden states of block 0
    calls: list = field(default_factory=list)    # per batch: list over blocks of BlockCall


def block_output(out):
    """The hidden states from a block's return value (tensor, tuple or ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return out
    return out[0]


def _split_hidden(args, kwargs):
    if args:
        return args[0], tuple(args[1:]), dict(kwargs)
    kwargs = dict(kwargs)
    return kwargs.pop("hidden_states"), (), kwargs


def move_outside(model: nn.Module, blocks: nn.ModuleList, device) -> None:
    """Move every parameter and buffer that is not inside ``blocks`` to ``device`` (tied weights stay tied)."""
    inside = {id(m) for b in blocks for m in b.modules()}
    device = torch.device(device)
    for module in model.modules():
        if id(module) in inside:
            continue
        for p in module.parameters(recurse=False):
            if p.device != device:
                p.data = p.data.to(device)
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.device != device:
                module._buffers[name] = buf.to(device)


@torch.no_grad()
def capture_block_calls(model: nn.Module, blocks: nn.ModuleList, batches, device) -> Captured:
    """Run ``model`` on each batch of token ids (on ``device``) and record every block's call."""
    captured = Captured()
    state = {"calls": None}
    last = len(blocks) - 1

    def make_stub(i):
        def stub(*args, **kwargs):
            hidden, rest, kw = _split_hidden(args, kwargs)
            state["calls"].append(BlockCall(rest, kw))
            if i == 0:
                captured.inputs.append(hidden.detach())
            if i == last:
                raise _StopForward
            return hidden
        return stub

    for i, block in enumerate(blocks):
        block.forward = make_stub(i)
    try:
        for ids in batches:
            state["calls"] = []
            try:
                model(input_ids=ids.to(device), use_cache=False)
            except _StopForward:
                pass
            if len(state["calls"]) != len(blocks):
                raise RuntimeError(f"the model called {len(state['calls'])} of its {len(blocks)} blocks")
            captured.calls.append(state["calls"])
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)
    return captured


def snapshot_devices(model: nn.Module) -> dict:
    """Where every parameter and buffer is, to put them back after an error."""
    snap = {}
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                snap[(id(module), "p", name)] = p.device
        for name, b in module._buffers.items():
            if b is not None:
                snap[(id(module), "b", name)] = b.device
    return snap


def restore_devices(model: nn.Module, snap: dict) -> None:
    for module in model.modules():
        for name, p in module._parameters.items():
            dev = snap.get((id(module), "p", name))
            if p is not None and dev is not None and p.device != dev:
                p.data = p.data.to(dev)
        for name, b in list(module._buffers.items()):
            dev = snap.get((id(module), "b", name))
            if b is not None and dev is not None and b.device != dev:
                module._buffers[name] = b.to(dev)
