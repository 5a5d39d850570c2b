"""Mixture-of-experts layers of a decoder block: where each expert's weights are, and in what form.

Every expert is pruned as a standalone linear layer per projection (``docs/MOE.md``). Two forms:

* **fused** (transformers 5: Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2/V3, gpt-oss, ...): one module
  holds every expert's weights as 3-D parameters and is called as
  ``experts(hidden_states (N, H), top_k_index (N, k), top_k_weights (N, k))``. Its layout is read
  from the flags transformers' ``use_experts_implementation`` sets on it (``is_transposed``,
  ``has_gate``, ``has_bias``) and must be one of ``FUSED_LAYOUTS``; any other module holding a
  parameter of 3 or more dimensions is refused (``UnsupportedModelError``).
* **modules**: an ``nn.ModuleList`` named ``experts`` whose entries hold ``nn.Linear`` layers
  (``experts.0.w1``, ...; older transformers, remote code, and llm-compressor's linearized
  ``LinearExperts2D``, whose first ``num_experts`` entries are the experts); the model calls expert
  e only on the tokens routed to it.

A router is a direct child named in ``ROUTER_NAMES`` of a module that holds an experts module;
routers are never pruned.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dsnot_kernels.pruning.adapters import UnsupportedModelError, is_prunable, weight_view

ROUTER_NAMES = ("gate", "router", "shared_expert_gate")


@dataclass(frozen=True)
class FusedLayout:
    """How a fused experts module keeps expert e's two projections.

    first / down: the parameter names, each (E, out, in) used as ``F.linear(x, P[e])``, or with
    ``transposed`` (E, in, out) used as ``x @ P[e]``. ``gated``: the first projection's output goes
    through the module's own ``_apply_gate`` (gate and up, concatenated or interleaved as the
    module says), else through ``act_fn``. ``bias``: ``<first>_bias`` and ``down_proj_bias``
    (E, out) are added (kept dense, never pruned).
    """
    name: str
    first: str
    transposed: bool
    gated: bool
    bias: bool
    families: str

    @property
    def biases(self) -> tuple:
        return (f"{self.first}_bias", "down_proj_bias") if self.bias else ()


# Known layouts, keyed by the module's (is_transposed, has_gate, has_bias) flags.
FUSED_LAYOUTS = {
    (False, True, False): FusedLayout("gate_up (E, 2I, H), down (E, H, I), F.linear", "gate_up_proj",
                                      False, True, False,
                                      "Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2/V3, PhiMoE, ..."),
    (True, True, True): FusedLayout("gate_up (E, H, 2I) + bias, down (E, I, H) + bias, x @ W",
                                    "gate_up_proj", True, True, True, "gpt-oss"),
    (True, True, False): FusedLayout("gate_up (E, H, 2I), down (E, I, H), x @ W", "gate_up_proj",
                                     True, True, False, "transposed gated experts without bias"),
    (False, False, False): FusedLayout("up (E, I, H), down (E, H, I), act_fn(up x), F.linear", "up_proj",
                                       False, False, False, "NemotronH"),
}


@dataclass
class ExpertSet:
    """The experts of one mixture-of-experts layer of a block.

    path: the experts module's name in the block (e.g. "mlp.experts"). kind: "fused" or "modules".
    projections: ``{name: (expert, key)}`` in expert order, name e.g. "mlp.experts.3.gate_up_proj";
    key is the parameter name (fused) or the Linear's name inside the expert (modules).
    """
    path: str
    kind: str
    module: nn.Module
    parent: nn.Module
    num_experts: int
    layout: "FusedLayout | None" = None
    projections: dict = field(default_factory=dict)

    def weight(self, name: str) -> torch.Tensor:
        """Expert projection ``name`` as a (rows, cols) = (out, in) view of the model's weight."""
        e, key = self.projections[name]
        if self.kind == "fused":
            w = getattr(self.module, key).data[e]
            return w.t() if self.layout.transposed else w
        return weight_view(self.module[e].get_submodule(key))

    def names_of(self, expert: int) -> list:
        return [n for n, (e, _) in self.projections.items() if e == expert]

    def describe(self) -> str:
        return self.layout.name if self.kind == "fused" else "nn.ModuleList of experts with nn.Linear layers"


def fused_layout(module: nn.Module, name: str) -> FusedLayout:
    """The ``FUSED_LAYOUTS`` entry of an experts module (``name``: its full name, for messages);
    ``UnsupportedModelError`` if none fits."""
    flags = tuple(getattr(module, f, None) for f in ("is_transposed", "has_gate", "has_bias"))
    layout = FUSED_LAYOUTS.get(flags)
    if layout is None:
        big = [f"{name}.{n} {tuple(p.shape)}" for n, p in module.named_parameters(recurse=False) if p.dim() >= 3]
        raise UnsupportedModelError(
            f"{name} ({type(module).__name__}) holds {', '.join(big) or 'expert weights'} in an unknown experts "
            f"layout: (is_transposed, has_gate, has_bias) = {flags}, known: {sorted(FUSED_LAYOUTS, key=str)} "
            "(dsnot_kernels/pruning/experts.py FUSED_LAYOUTS); dsnot_kernels cannot prune it")
    first, down = getattr(module, layout.first, None), getattr(module, "down_proj", None)
    E = getattr(module, "num_experts", None)
    for pname, p in ((layout.first, first), ("down_proj", down)):
        if not isinstance(p, torch.Tensor) or p.dim() != 3 or (E is not None and p.shape[0] != E):
            raise UnsupportedModelError(f"experts module {name} ({type(module).__name__}): expected a 3-D "
                                        f"parameter {pname} of {E} experts for layout {layout.name!r}")
    if not callable(getattr(module, "_apply_gate" if layout.gated else "act_fn", None)):
        raise UnsupportedModelError(f"experts module {name}: layout {layout.name!r} needs its "
                                    f"{'_apply_gate' if layout.gated else 'act_fn'}")
    return layout


def _is_expert_list(module: nn.Module, name: str) -> bool:
    return isinstance(module, nn.ModuleList) and name.split(".")[-1] == "experts" and any(
        is_prunable(m) for m in module.modules())


def _list_experts(module: nn.ModuleList) -> int:
    """Experts of an ``nn.ModuleList``: its first ``num_experts`` entries where it says (llm-compressor's
    linearized ``LinearExperts2D`` also holds its ``act_fn`` as an entry), else all of them."""
    n = getattr(module, "num_experts", None)
    return n if isinstance(n, int) and 0 < n <= len(module) else len(module)


def _is_fused_experts(module: nn.Module) -> bool:
    if isinstance(module, nn.ModuleList):  # a list of expert modules (which may carry the flags too)
        return False
    if all(hasattr(module, f) for f in ("is_transposed", "has_gate", "has_bias")):
        return True
    return any(p.dim() >= 3 for p in module.parameters(recurse=False))


def find_expert_sets(block: nn.Module, where: str = "") -> list:
    """Every ``ExpertSet`` of ``block`` (definition order); ``where``: the block's name, for messages."""
    sets, inside = [], set()
    for name, module in block.named_modules():
        if not name or any(name.startswith(p + ".") for p in inside):
            continue
        parent = block.get_submodule(name.rpartition(".")[0]) if "." in name else block
        if _is_fused_experts(module):
            layout = fused_layout(module, f"{where}.{name}" if where else name)
            E = getattr(module, layout.first).shape[0]
            es = ExpertSet(name, "fused", module, parent, E, layout)
            for e in range(E):
                es.projections[f"{name}.{e}.{layout.first}"] = (e, layout.first)
                es.projections[f"{name}.{e}.down_proj"] = (e, "down_proj")
        elif _is_expert_list(module, name):
            es = ExpertSet(name, "modules", module, parent, _list_experts(module))
            for e in range(es.num_experts):
                for lname, lin in module[e].named_modules():
                    if is_prunable(lin):
                        es.projections[f"{name}.{e}.{lname}"] = (e, lname)
        else:
            continue
        sets.append(es)
        inside.add(name)
    return sets


def router_names(block: nn.Module, sets: list) -> list:
    """Names (in the block) of the routers beside each experts module (``ROUTER_NAMES``)."""
    out = []
    for es in sets:
        prefix = es.path.rpartition(".")[0]
        for child, _ in es.parent.named_children():
            if child in ROUTER_NAMES:
                out.append(f"{prefix}.{child}" if prefix else child)
    return out
