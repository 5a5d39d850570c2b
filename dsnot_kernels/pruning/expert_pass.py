"""The experts of one block: statistics passes by groups of experts, masks, the fallback policy.

Memory (``docs/MOE.md``): a pass collects the statistics of one group of experts. Where no
projection needs the (cols, cols) second moment M, the group is every expert of the block and
there is one pass (the block's ordinary statistics pass). Otherwise a group is at most
``expert_group_size`` experts: the first group rides on the ordinary pass, and each further group
reruns the block's forward on the calibration batches (dense weights: nothing is zeroed before all
of a block's masks are chosen). A group's statistics are freed once its masks are chosen; the
block's expert masks (bool) and, for SparseGPT / ``reconstruct``, the experts' new weights (in
the weights' dtype) are held until the block is applied.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from dsnot_kernels.pruning.adapters import sublayer_kind
from dsnot_kernels.pruning.expert_stats import make_collector
from dsnot_kernels.objectives.reference import initial_selection


def plan_passes(sets: list, config, needs_m) -> list:
    """Passes as lists of ``(ExpertSet, expert ids)``; the first rides on the block's ordinary pass."""
    first, later = [], []
    for es in sets:
        E = es.num_experts
        if not any(needs_m(n) for n in es.projections):
            first.append((es, tuple(range(E))))
            continue
        size = int(config.expert_group_size)
        chunks = [(es, tuple(range(a, min(E, a + size)))) for a in range(0, E, size)]
        later.extend(chunks)
    if later:
        first.append(later.pop(0))
    return ([first] if first else []) + [[c] for c in later]


def check_config(plans: list, config) -> None:
    """ValueError before any work for expert options the model's experts cannot follow."""
    moe = [es.path for p in plans for es in p.experts]
    if moe and config.sparsity_profile == "owl":
        raise ValueError(f'sparsity_profile="owl" on a mixture-of-experts model ({moe[0]}): OWL\'s outlier ratios '
                         "would be measured without the routed experts, which hold most of the weights; use "
                         '"uniform" or a per-block list or dict (docs/EVALUATION.md)')
    if config.expert_tokens == "all":
        lists = [es.path for p in plans for es in p.experts if es.kind == "modules"]
        if lists:
            raise ValueError(f'expert_tokens="all" needs fused experts; {lists[0]} is an nn.ModuleList of experts, '
                             "which the model calls only on their routed tokens")


def collectors_for(groups: list, make_stats, needs_m, config, share=True) -> list:
    """Collectors of ``groups``, their hooks attached (none left attached if one fails)."""
    cols = [make_collector(es, ids, make_stats, needs_m, config.expert_tokens, share) for es, ids in groups]
    try:
        for c in cols:
            c.attach()
    except Exception:
        for c in cols:
            c.detach()
        raise
    return cols


def run_pass(block, inputs, calls, collectors) -> None:
    """One forward of ``block`` on every batch with the collectors' hooks (then removed)."""
    try:
        for x, call in zip(inputs, calls):
            for c in collectors:
                c.begin_call(x.shape[0])
            block(x, *call.args, **call.kwargs)
            for c in collectors:
                c.end_call()
    finally:
        for c in collectors:
            c.detach()


def _fallback_mask(W: torch.Tensor, config, name: str) -> torch.Tensor:
    if config.prune_n and W.shape[1] % config.prune_m:
        raise ValueError(f"{name}: {W.shape[1]} columns are not divisible by M={config.prune_m}")
    return initial_selection(W.float().abs(), float(config.sparsity), config.prune_n, config.prune_m)


def group_masks(collector, config, mask_fn, where: dict) -> dict:
    """``{name: (mask, entry, new_w, weight view)}`` of the collector's experts.

    An expert with fewer than ``expert_min_tokens`` routed tokens follows ``expert_fallback``:
    "magnitude" (the |W| initial selection at the asked pattern, no refinement, weights unchanged)
    or "error" (ValueError)."""
    es, out = collector.es, {}
    for e in collector.experts:
        n = collector.tokens[e]
        for name in es.names_of(e):
            where["sublayer"] = name
            W = es.weight(name)
            if n < config.expert_min_tokens:
                if config.expert_fallback == "error":
                    raise ValueError(f"expert {e} of {es.path} got {n} calibration token(s), fewer than "
                                     f"expert_min_tokens={config.expert_min_tokens} (expert_fallback='error')")
                t0 = time.perf_counter()
                mask = _fallback_mask(W, config, name)
                entry = {"name": name, "kind": sublayer_kind(name), "shape": list(W.shape), "refined": False,
                         "sparsity": float(mask.float().mean()), "swaps": 0, "rows_swapped": 0,
                         "mask_time_s": time.perf_counter() - t0}
                new_w = None
            else:
                fake = SimpleNamespace(weight=SimpleNamespace(data=W))
                mask, new_w, entry = mask_fn(name, fake, collector.stats_of(name), config, config.record_error)
                if new_w is not None:
                    new_w = new_w.to(W.dtype)
            entry.update(expert=e, tokens=n, fallback=config.expert_fallback if n < config.expert_min_tokens else None)
            out[name] = (mask, entry, new_w, W)
    return out


def expert_summary(sets: list, tokens: dict, config, passes: int, stats_s: float) -> list:
    """Per experts module of a block: routed tokens per expert and the experts under the thresholds."""
    out = []
    for es in sets:
        t = tokens[es.path]
        out.append({"path": es.path, "layout": es.describe(), "num_experts": es.num_experts, "tokens": t,
                    "fallback": [e for e, n in enumerate(t) if n < config.expert_min_tokens],
                    "few_tokens": sum(1 for n in t if n < config.expert_report_tokens),
                    "passes": passes, "stats_s": stats_s})
    return out


def block_expert_masks(block, plan, inputs, calls, passes, first, make_stats, needs_m, config, mask_fn,
                       where, combine=None) -> tuple:
    """(masks, summary) of every expert of ``block``: the first pass's collectors ``first`` (already
    run with the ordinary statistics pass), then one forward per further pass in ``passes``.
    ``combine(collector)``: under torch.distributed, turns each rank's recorders into the
    one-process statistics (collective); every rank then computes every expert's mask."""
    masks, tokens, stats_s = {}, {}, 0.0
    for k, groups in enumerate(passes):
        if k == 0:
            cols = first
        else:
            where.update(sublayer=None, stage=f"expert statistics (pass {k + 1} of {len(passes)})")
            cols = collectors_for(groups, make_stats, needs_m, config, share=combine is None)
            run_pass(block, inputs, calls, cols)
        if combine is not None:
            where["stage"] = "reduce expert statistics (collective)"
            for c in cols:
                combine(c)
        where["stage"] = "mask"
        for c in cols:
            stats_s += c.time_s
            tokens[c.es.path] = c.tokens
            masks.update(group_masks(c, config, mask_fn, where))
            c.stats = {}  # this group's statistics (and second moments) are freed here
    return masks, expert_summary(plan.experts, tokens, config, len(passes), stats_s)
