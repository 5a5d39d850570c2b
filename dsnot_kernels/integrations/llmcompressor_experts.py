"""Mixture-of-experts layers under llm-compressor's ``oneshot`` (``DSnoTModifier``, docs/INTEGRATIONS.md).

llm-compressor 0.14 linearizes every fused experts module it recognises before any modifier starts
(``llmcompressor.modeling.moe.linearize_moe``): the module with 3-D ``gate_up_proj`` (E, 2I, H) and
``down_proj`` (E, H, I) becomes a ``LinearExperts2D``, an ``nn.ModuleList`` of E experts holding
``gate_proj`` / ``up_proj`` (I, H) and ``down_proj`` (H, I) ``nn.Linear`` layers. Each expert is then
called on its routed rows ``hidden_states[tokens]`` (``oneshot(moe_calibrate_all_experts=False)``)
or on every row (``True``, llm-compressor's default, "calibrate all experts").

To prune each expert exactly as ``dsnot_kernels.prune_model`` prunes the fused model
(``docs/MOE.md``):

* statistics: the driver's own ``ModulesCollector`` (``pruning/expert_stats.py``), its hooks
  registered through llm-compressor's ``HooksMixin`` (so they are off in the propagation pass): each
  expert's rows are mapped back to their tokens, put in token order, and cut into one sample per
  calibration sequence, as the driver does. ``gate_proj`` and ``up_proj`` read the same tensor and
  share one statistics object; ``down_proj``'s is its own input.
* masks: ``gate_proj`` and ``up_proj`` of one expert are pruned as the one (2I, H) sub-layer
  ``<experts>.<e>.gate_up_proj`` the model holds (rows: gate, then up), so SparseGPT's per-block
  threshold sees the rows the driver sees; then each part is written back.
* an expert with fewer than ``expert_min_tokens`` tokens: ``expert_fallback`` as in the driver.

Anything the modifier cannot prune is an error naming it before calibration (no silent partial
prune): a parameter of three or more dimensions left in a decoder layer (experts that
llm-compressor did not linearize), or any weight ``dsnot_kernels.pruning.coverage.plan_block``
refuses.
"""
from __future__ import annotations

import contextlib
import time
from types import SimpleNamespace

import torch
from compressed_tensors.utils import align_module_device, get_execution_device, update_offload_parameter
from loguru import logger

from dsnot_kernels.pruning import sublayer
from dsnot_kernels.pruning.adapters import UnsupportedModelError, sublayer_kind
from dsnot_kernels.pruning.coverage import plan_block
from dsnot_kernels.pruning.expert_pass import _fallback_mask
from dsnot_kernels.pruning.expert_stats import ModulesCollector
from dsnot_kernels.stats import CalibrationStats
from dsnot_kernels.pruning.experts import router_names


def check_layer(layer: torch.nn.Module, layer_name: str) -> tuple:
    """(expert sets of kind "modules", router modules) of one decoder layer; ValueError naming every
    weight of it that the modifier would leave dense without knowing it. Routers (``gate``, ``router``,
    ``shared_expert_gate`` beside an experts module) are never pruned, as in ``prune_model``."""
    left = [f"{layer_name}.{n} {tuple(p.shape)}" for n, p in layer.named_parameters() if p.dim() >= 3]
    if left:
        raise ValueError(
            f"DSnoTModifier prunes nn.Linear layers only, and llm-compressor left expert weights in 3-D form: "
            f"{', '.join(left)}. They would stay dense (no silent partial prune): llm-compressor 0.14 linearizes "
            "only the fused experts modules it recognises (llmcompressor.modeling.moe.linearize_moe); prune "
            "this model with dsnot_kernels.prune_model, which prunes fused experts itself (docs/MOE.md)")
    try:
        plan = plan_block(layer, layer_name)
    except UnsupportedModelError as exc:
        raise ValueError(f"DSnoTModifier: {exc}") from None
    routers = [layer.get_submodule(n) for n in router_names(layer, plan.experts)]
    return [es for es in plan.experts if es.kind == "modules"], routers


class HookedCollector(ModulesCollector):
    """``ModulesCollector`` whose hooks are llm-compressor's (``modifier.register_hook``), which also
    reads each call's batch size from the MoE block's (B, T, H) input. ``active``: called since the
    last ``reset``."""

    def __init__(self, modifier, es, make_stats, needs_m):
        super().__init__(es, range(es.num_experts), make_stats, needs_m, "routed", share=True)
        self.modifier, self.active = modifier, False

    def hook(self, module, fn, kind, **kwargs):
        self._handles.append(self.modifier.register_hook(module, fn, kind, **kwargs))

    def detach(self):
        self.modifier.remove_hooks(set(self._handles))
        self._handles = []

    def _block_pre(self, module, args):
        x = args[0] if args else None
        self.batch = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() == 3 else 1
        self.active = True
        return super()._block_pre(module, args)

    def reset(self):
        self.stats, self.owner, self._order, self.active = {}, {}, {}, False
        self.tokens = [0] * self.es.num_experts


def _projections(collector, e, modules):
    """[(relative name, [Linear modules], statistics)] of expert e's targeted projections: gate_proj and
    up_proj, both targeted and sharing one statistics object, become the model's fused ``gate_up_proj``."""
    es, expert = collector.es, collector.es.module[e]
    names = {es.projections[n][1]: n for n in es.names_of(e) if expert.get_submodule(es.projections[n][1]) in modules}
    gate, up = names.get("gate_proj"), names.get("up_proj")
    out = []
    if gate and up and collector.stats_of(gate) is collector.stats_of(up):
        out.append((f"{es.path}.{e}.gate_up_proj", [expert.gate_proj, expert.up_proj], collector.stats_of(gate)))
        names = {k: n for k, n in names.items() if n not in (gate, up)}
    return out + [(n, [expert.get_submodule(k)], collector.stats_of(n)) for k, n in names.items()]


def _expert_mask(rel, W, stats, n, config, where):
    """(mask, new weight or None, entry) of one expert projection W (rows, cols) with n routed tokens."""
    if n >= config.expert_min_tokens:
        return sublayer.sublayer_mask(rel, SimpleNamespace(weight=SimpleNamespace(data=W)), stats, config, False)
    if config.expert_fallback == "error":
        raise ValueError(f"DSnoTModifier: {where} got {n} calibration token(s), fewer than "
                         f"expert_min_tokens={config.expert_min_tokens} (expert_fallback='error')")
    t0 = time.perf_counter()
    mask = _fallback_mask(W, config, rel)
    return mask, None, {"refined": False, "sparsity": float(mask.float().mean()), "swaps": 0, "rows_swapped": 0,
                        "mask_time_s": time.perf_counter() - t0}


def prune_experts(collector, layer_name: str, modules: dict, config_of, base, mode: str) -> tuple:
    """Prune every expert of ``collector`` (after its layer's calibration pass), in place.

    modules: ``{Linear: full name}`` of the modifier's targets (projections not in it are left as they
    are: ``ignore``). config_of(module, name) -> PruneConfig; base: the PruneConfig whose expert
    thresholds the summary uses; mode: "routed" or "all". Returns (report entries, summary)."""
    es, entries = collector.es, []
    for e in range(es.num_experts):
        n = collector.tokens[e]
        for rel, linears, stats in _projections(collector, e, modules):
            name = f"{layer_name}.{rel}"
            config = config_of(linears[0], modules[linears[0]])
            t0 = time.perf_counter()
            with torch.no_grad(), contextlib.ExitStack() as stack:
                for m in linears:
                    stack.enter_context(align_module_device(m))
                W = torch.cat([m.weight.data for m in linears])           # (rows, cols): gate rows, then up
                mask, new_w, entry = _expert_mask(rel, W, stats, n, config, f"expert {e} of {layer_name}.{es.path}")
                pruned = W.clone() if new_w is None else new_w.to(W.dtype).clone()
                pruned[mask.to(pruned.device)] = 0
            row = 0
            for m in linears:
                update_offload_parameter(m, "weight", pruned[row:row + m.weight.shape[0]])
                row += m.weight.shape[0]
            entry.update(name=name, kind=sublayer_kind(rel), shape=list(W.shape), expert=e, tokens=n,
                         nsamples=0 if stats is None else stats.nsamples,
                         fallback=config.expert_fallback if n < config.expert_min_tokens else None,
                         total_time_s=time.perf_counter() - t0)
            entries.append(entry)
    t = list(collector.tokens)
    summary = {"path": f"{layer_name}.{es.path}", "num_experts": es.num_experts, "expert_tokens": mode, "tokens": t,
               "fallback": [k for k, v in enumerate(t) if v < base.expert_min_tokens],
               "few_tokens": sum(1 for v in t if v < base.expert_report_tokens)}
    return entries, summary


# -- the modifier's MoE steps (DSnoTModifier delegates to these) ---------------------------------------
def expert_mode(modifier) -> str:
    """"all" while oneshot calibrates every expert on every token (its moe_calibrate_all_experts,
    default True), else "routed"; must agree with ``modifier.expert_tokens`` where that is given."""
    from llmcompressor.modeling.moe.context import get_calibrate_all_experts_flag
    mode = "all" if get_calibrate_all_experts_flag() else "routed"
    if modifier.expert_tokens not in (None, mode):
        raise ValueError(f"DSnoTModifier(expert_tokens={modifier.expert_tokens!r}) needs oneshot(..., "
                         f"moe_calibrate_all_experts={modifier.expert_tokens == 'all'}); llm-compressor decides "
                         f"which tokens reach each expert, and this run sends them {mode!r}")
    return mode


def attach_experts(modifier) -> None:
    """Check every decoder layer (no weight left dense unknowingly), leave routers out, and attach the
    collectors of the experts whose Linear layers are targets (``modifier._collectors``)."""
    targets = {id(m) for m in modifier._module_names}
    modifier._collectors, modifier._expert_linears = [], set()
    for layer_name, layer in modifier._layers.items():
        sets, routers = check_layer(layer, layer_name)
        for router in routers:  # never pruned (prune_model's rule): no statistics, so no mask
            modifier._expert_linears.update(id(m) for m in router.modules())
        for es in sets:
            ids = {id(es.module[e].get_submodule(k)) for e, k in es.projections.values()}
            if not ids & targets:
                continue
            expert_mode(modifier)
            if getattr(modifier, "_owl", None):
                raise ValueError("DSnoTModifier: sparsity_profile='owl' is refused on mixture-of-experts models "
                                 f"({layer_name}.{es.path}), as in prune_model: its outlier ratios would leave out "
                                 "the experts; give per-layer ratios as sparsity=[...]")
            device = get_execution_device(es.module)
            collector = HookedCollector(modifier, es, lambda cols, m, d=device: CalibrationStats(cols, d, hessian=m),
                                        lambda name: modifier._needs_second_moment())
            collector.attach()
            modifier._collectors.append((layer_name, collector))
            modifier._expert_linears |= ids


def compress_experts(modifier) -> None:
    """Prune every expert of the layers calibrated since the last call, as ``prune_model`` prunes them."""
    names = {m: n.rstrip(".") for m, n in modifier._module_names.items()}
    for layer_name, collector in modifier._collectors:
        if not collector.active:
            continue
        logger.info(f"DSnoT: pruning the {collector.es.num_experts} experts of {layer_name}.{collector.es.path}")
        entries, summary = prune_experts(
            collector, layer_name, names, lambda m, name: modifier._config(modifier._module_sparsity(m, name)),
            modifier._config(0.5), expert_mode(modifier))
        modifier._report.extend(entries)
        modifier._experts_report.append(summary)
        collector.reset()
