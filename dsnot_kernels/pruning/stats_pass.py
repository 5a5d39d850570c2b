"""The statistics pass of one block: forward hooks that feed each distinct sub-layer input once.

Sub-layers that read the same input tensor in the same block call (q/k/v read the same hidden
states; gate/up likewise) share one statistics object: it is the same computation on the same
numbers, so the shared object holds bit-for-bit what separate objects would. Sharing is found by
identity: in the first block call every hook only records its input; after the call, a sub-layer
whose input is the very tensor an earlier one got becomes an alias of it, and one object per
distinct input is made (with the (cols, cols) second moment if any sharer needs it) and fed that
call's inputs. In later calls an alias is checked to get the same input again (the same tensor, or
equal values), else the pass fails with a clear error rather than giving it wrong statistics.
"""
from __future__ import annotations

import time

import torch


class BlockStats:
    """Hooks and statistics of one block's linear sub-layers.

    Args:
        subs: ``{name: module}`` of the sub-layers (definition order).
        in_features: ``{name: cols}``.
        needs_m: ``{name: bool}``: whether the sub-layer needs the second moment.
        make_stats: ``fn(cols, hessian: bool)`` -> an object with ``add_batch(x)``, x (B, T, cols).
    """

    def __init__(self, subs: dict, in_features: dict, needs_m: dict, make_stats):
        self.names = list(subs)
        self.in_features, self.needs_m, self.make_stats = in_features, needs_m, make_stats
        self.owner: dict = {}       # name -> the sub-layer whose statistics it uses (itself if none)
        self.stats: dict = {}       # owner -> statistics object
        self.calls = 0
        self.batch = 1
        self._pending: list = []    # first call: (name, input) in hook order
        self._seen: dict = {}       # current call: owner -> its raw input
        self.time_s = 0.0

    def hook(self, name):
        def fn(module, inp, out):
            t = time.perf_counter()
            self._feed(name, inp[0])
            self.time_s += time.perf_counter() - t
        return fn

    def _add(self, name, x):
        self.stats[name].add_batch(x.reshape(self.batch, -1, x.shape[-1]))

    def _feed(self, name, x):
        if self.calls == 0:
            self._pending.append((name, x))
            return
        owner = self.owner.get(name)
        if owner is None:
            raise RuntimeError(f"sub-layer {name} was not called in the block's first call but in call "
                               f"{self.calls}; its statistics would miss samples")
        if owner == name:
            self._add(name, x)
            self._seen[name] = x
            return
        ref = self._seen.get(owner)
        if ref is x or (ref is not None and ref.shape == x.shape and torch.equal(ref, x)):
            return
        raise RuntimeError(f"sub-layer {name} read the same input as {owner} in the block's first call "
                           f"but a different one in call {self.calls}; cannot share their statistics")

    def begin_call(self, batch: int) -> None:
        self.batch = batch
        self._seen = {}

    def end_call(self) -> None:
        if self.calls == 0:
            t = time.perf_counter()
            firsts = []  # (name, input) of the owners, first appearance
            for name, x in self._pending:
                if name in self.owner:
                    continue
                match = next((n for n, y in firsts if y is x), None)
                self.owner[name] = match if match is not None else name
                if match is None:
                    firsts.append((name, x))
            for owner, _ in firsts:
                group = [n for n, o in self.owner.items() if o == owner]
                self.stats[owner] = self.make_stats(self.in_features[owner],
                                                    any(self.needs_m[n] for n in group))
            for name, x in self._pending:
                if self.owner[name] == name:
                    self._add(name, x)
            self._pending = []
            self.time_s += time.perf_counter() - t
        self._seen = {}
        self.calls += 1

    def groups(self) -> dict:
        """``{owner: [names]}`` in sub-layer order."""
        out: dict = {}
        for name in self.names:
            if name in self.owner:
                out.setdefault(self.owner[name], []).append(name)
        return out

    def stats_of(self, name):
        if name not in self.owner:
            raise RuntimeError(f"sub-layer {name} was never called during the statistics pass")
        return self.stats[self.owner[name]]
