"""What ``prune_model`` prunes in a decoder block, what it knowingly leaves dense, and the error for
anything else (no silent partial prune).

Pruned: every ``nn.Linear`` / transformers ``Conv1D`` weight of the block that is not a router, and
every expert projection (``dsnot_kernels.pruning.experts``). Knowingly left dense: ``SKIPPED``
below (the one list), biases and other 1-D parameters, buffers, and everything outside the decoder
blocks (token and position embeddings, the final norm, ``lm_head``). Any other parameter of two or
more dimensions inside a block makes ``plan_block`` raise ``UnsupportedModelError`` naming it, before
any work is done.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from dsnot_kernels.pruning.adapters import UnsupportedModelError, find_sublayers
from dsnot_kernels.pruning.experts import find_expert_sets, router_names

# The one list of what a block may hold and the driver knowingly leaves dense (reason per entry).
SKIPPED = {
    "router": "the router (gate / router / shared_expert_gate beside an experts module): a few rows "
              "that decide the routing; never pruned",
    "expert_bias": "a fused experts module's biases (E, out), kept dense like every bias",
    "embedding": "an nn.Embedding inside a block",
    "norm": "a normalisation layer's parameters (class name containing 'Norm')",
}


@dataclass
class BlockPlan:
    """dense: ``{name: module}`` of the block's ordinary linear sub-layers (routers excluded);
    experts: its ``ExpertSet`` list; skipped: ``{parameter name: SKIPPED key}`` of its >= 2-D
    parameters left dense."""
    dense: dict
    experts: list
    skipped: dict = field(default_factory=dict)

    @property
    def prunable(self) -> int:
        """Number of weights the driver prunes in this block."""
        n = sum(m.weight.numel() for m in self.dense.values())
        return n + sum(es.weight(name).numel() for es in self.experts for name in es.projections)


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def plan_block(block: nn.Module, where: str = "block") -> BlockPlan:
    """The ``BlockPlan`` of one block; ``UnsupportedModelError`` naming any >= 2-D parameter that is
    neither pruned nor in ``SKIPPED`` (``where`` prefixes the names in the message)."""
    sets = find_expert_sets(block, where)
    routers = router_names(block, sets)
    dense = {n: m for n, m in find_sublayers(block).items()
             if not _under(n, routers) and not _under(n, [es.path for es in sets])}
    # by name, not id(): offloaded parameters (compressed_tensors) are new objects at every access
    covered = {f"{n}.weight" for n in dense}
    skipped = {}
    for es in sets:
        if es.kind == "fused":
            covered.update(f"{es.path}.{k}" for k in (es.layout.first, "down_proj"))
            for b in es.layout.biases:
                skipped[f"{es.path}.{b}"] = "expert_bias"
                covered.add(f"{es.path}.{b}")
        else:
            covered.update(f"{es.path}.{e}.{k}.weight" for e, k in es.projections.values())
    bad = []
    for pname, p in block.named_parameters():
        if p.dim() < 2 or pname in covered:
            continue
        mname = pname.rpartition(".")[0]
        module = block.get_submodule(mname) if mname else block
        if _under(mname, routers):
            skipped[pname] = "router"
        elif isinstance(module, nn.Embedding):
            skipped[pname] = "embedding"
        elif "norm" in type(module).__name__.lower():
            skipped[pname] = "norm"
        else:
            bad.append(f"{where}.{pname} {tuple(p.shape)} in {type(module).__name__}")
    if bad:
        raise UnsupportedModelError(
            f"dsnot_kernels would leave weight(s) dense without knowing them: {'; '.join(bad)}. The driver prunes "
            "nn.Linear / Conv1D layers and known experts layouts, and knowingly skips only "
            f"{sorted(SKIPPED)} (dsnot_kernels/pruning/coverage.py); refusing a silent partial prune")
    return BlockPlan(dense, sets, skipped)
