"""One block's statistics and one sub-layer's mask: what ``prune_model`` runs per block
(spec §4).

``statistics_pass`` runs a block on every calibration batch with hooks on its linear sub-layers and
returns their ``CalibrationStats`` (one object per distinct input, the second moment only where
``needs_second_moment``); ``sublayer_mask`` computes one sub-layer's mask (and its new weights
where SparseGPT or ``reconstruct`` update them) without modifying the weight; under
torch.distributed ``sublayer_mask_rows`` computes this rank's share of the rows.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from dsnot_kernels.metrics import authors_sqrt_scaler, initial_metric, wanda_metric
from dsnot_kernels.objectives.common import topk_nm_selection
from dsnot_kernels.ops import SECOND_MOMENT_OBJECTIVES, refine_mask
from dsnot_kernels.pruning import distributed as dist_prune
from dsnot_kernels.pruning import expert_pass
from dsnot_kernels.pruning.adapters import is_refined, sublayer_kind, weight_view
from dsnot_kernels.pruning.output_error import output_error, second_moment
from dsnot_kernels.pruning.stats_pass import BlockStats
from dsnot_kernels.pruning.weight_update import reconstruct_kept, sparsegpt_initial, updated_output_error
from dsnot_kernels.stats import CalibrationStats


def needs_second_moment(config, name=None) -> bool:
    """Whether sub-layer ``name`` (None: any sub-layer) needs the (cols, cols) second moment M.

    M is costly (cols² floats, a (cols, T) x (T, cols) product per sample), so it is built only
    for what reads it: SparseGPT and the sparsegpt_metric initial metric, ``record_error``,
    ``reconstruct``, and refined sub-layers of an objective that uses it (``SECOND_MOMENT_OBJECTIVES``).
    """
    if (config.initial in ("sparsegpt", "sparsegpt_metric") or config.record_error
            or getattr(config, "reconstruct", False)):
        return True
    if config.objective not in SECOND_MOMENT_OBJECTIVES:
        return False
    return bool(config.refine) if name is None else is_refined(name, config)


def stats_maker(device, ranks, sample_offset):
    if ranks is None:
        return lambda c, h: CalibrationStats(c, device=device, hessian=h)  # noqa: E731
    return lambda c, h: dist_prune.SampleRecorder(c, device, h, sample_offset)  # noqa: E731


def expert_setup(plan, config, device, ranks):
    """The expert statistics passes of a block (``expert_pass.plan_passes``) and the collectors of
    the first, which rides on the ordinary statistics pass. Under torch.distributed an expert's
    samples are numbered after the pass (``DeferredRecorder``)."""
    if ranks is None:
        make = lambda c, h: CalibrationStats(c, device=device, hessian=h)  # noqa: E731
    else:
        make = lambda c, h: dist_prune.DeferredRecorder(c, device, h)  # noqa: E731
    needs_m = lambda n: needs_second_moment(config, n)  # noqa: E731
    passes = expert_pass.plan_passes(plan.experts, config, needs_m)
    first = expert_pass.collectors_for(passes[0], make, needs_m, config, share=ranks is None) if passes else []
    return SimpleNamespace(make=make, needs_m=needs_m, passes=passes, first=first)


def statistics_pass(block, subs, inputs, calls, device, config, ranks, sample_offset, experts=()):
    """Run ``block`` on every batch with hooks; returns the ``BlockStats`` (one statistics object per
    distinct sub-layer input: ``CalibrationStats``, or per-sample recorders under torch.distributed).
    ``experts``: expert collectors (``expert_pass``) fed in the same pass."""
    cols = {name: weight_view(m).shape[1] for name, m in subs.items()}
    needs = {name: needs_second_moment(config, name) for name in subs}
    collector = BlockStats(subs, cols, needs, stats_maker(device, ranks, sample_offset))
    hooks = [m.register_forward_hook(collector.hook(name)) for name, m in subs.items()]
    try:
        for x, call in zip(inputs, calls):
            collector.begin_call(x.shape[0])
            for c in experts:
                c.begin_call(x.shape[0])
            block(x, *call.args, **call.kwargs)
            collector.end_call()
            for c in experts:
                c.end_call()
    finally:
        for h in hooks:
            h.remove()
        for c in experts:
            c.detach()
    return collector


def sublayer_mask(name, module, stats, config, want_error):
    """(mask, new_weight, entry) of one sub-layer; the weight is not modified.

    new_weight is None when only the mask is applied (pruned weights zeroed), else the (rows, cols)
    weights to write (SparseGPT's updates and/or the reconstruction; pruning/weight_update.py)."""
    stats.check_not_empty(f"sub-layer {name}")  # e.g. a sub-layer the block's forward never called
    W = weight_view(module)
    refined = is_refined(name, config)
    sgpt = config.initial == "sparsegpt"
    # sqrt="torch": the scaler whose exact square root is ATen's torch.sqrt(scaler_row) (metrics.py)
    scaler = stats.scaler_row if config.sqrt == "exact" else authors_sqrt_scaler(stats.scaler_row)
    metric = None if config.initial in ("wanda", "sparsegpt") else initial_metric(config.initial, W, stats)
    common = dict(initial_metric=metric, sparsity=config.sparsity, prune_n=config.prune_n,
                  prune_m=config.prune_m, update_threshold=config.update_threshold,
                  pow_of_var_regrowing=config.pow_of_var_regrowing,
                  without_same_sign=config.without_same_sign, backend=config.backend, return_swaps=True,
                  err_sum=config.err_sum)
    t0 = time.perf_counter()
    new_w, sgpt_s = None, 0.0
    if sgpt:
        initial_mask, new_w, sgpt_s = sparsegpt_initial(W, stats, config)
        common["initial_mask"] = initial_mask
    if refined:
        mse, cov = config.objective == "mse", config.objective in SECOND_MOMENT_OBJECTIVES
        mask, swaps = refine_mask(W, stats.sum_metric_row, stats.var, scaler,
                                  max_cycle_time=config.max_cycle_time, objective=config.objective,
                                  mean=stats.mean if mse else None,
                                  second_moment=stats.hessian if cov else None, window=config.window,
                                  **common)
    elif sgpt:
        mask, swaps = initial_mask, torch.zeros(W.shape[0], dtype=torch.int32, device=W.device)
    else:
        if config.prune_n and config.nm_ties == "topk":
            # the authors' topk over each group (their tie order), the same metric as refine_mask's
            common["initial_mask"] = topk_nm_selection(wanda_metric(W, scaler) if metric is None else metric,
                                                       config.prune_n, config.prune_m)
        mask, swaps = refine_mask(W, stats.sum_metric_row, stats.var, scaler,
                                  max_cycle_time=0, **common)
    mask_time = time.perf_counter() - t0
    entry = {"name": name, "kind": sublayer_kind(name), "shape": list(W.shape), "refined": refined,
             "sparsity": float(mask.float().mean()), "swaps": int(swaps.sum()),
             "rows_swapped": int((swaps > 0).sum()), "mask_time_s": mask_time}
    if sgpt:
        entry["sparsegpt_time_s"] = sgpt_s
    # SparseGPT's weights fit SparseGPT's mask only: after swaps, the kept weights are re-solved
    if config.reconstruct or (sgpt and bool((mask != initial_mask).any())):
        new_w, info = reconstruct_kept(W, mask, stats, init=new_w)
        entry["reconstruct"] = info
        entry["reconstruct_time_s"] = info["time_s"]
    if want_error:
        entry["error"] = _error_entry(W, mask, new_w, stats, config, common, scaler, refined, sgpt)
    return mask, new_w, entry


def _error_entry(W, mask, new_w, stats, config, common, scaler, refined, sgpt) -> dict:
    """The output errors of the initial and the final mask (and of the written weights), for
    ``record_error``."""
    moment = second_moment(stats)
    after = output_error(W, mask, stats, moment)
    if refined and config.max_cycle_time != 0:  # None: the objective's default (> 0)
        if sgpt:
            initial = common["initial_mask"]
        else:
            initial, _ = refine_mask(W, stats.sum_metric_row, stats.var, scaler, max_cycle_time=0, **common)
        before = output_error(W, initial, stats, moment)
    else:
        before = dict(after)
    error = {"initial": before, "refined": after}
    if new_w is not None:  # the error of the weights actually written (updated kept weights)
        error["final"] = updated_output_error(W, new_w, stats, moment)
    return error


def sublayer_mask_rows(name, module, stats, config, ranks):
    """``sublayer_mask`` of this rank's contiguous share of the rows, all-gathered (collective)."""
    W = weight_view(module)
    r0, r1 = dist_prune.share(W.shape[0], *ranks)
    part, _, entry = sublayer_mask(name, SimpleNamespace(weight=SimpleNamespace(data=W[r0:r1])), stats,
                                    config, False)
    t0 = time.perf_counter()
    mask = dist_prune.gather_rows(part, W.shape[0])
    swaps, rows_swapped = dist_prune.sum_across([entry["swaps"], entry["rows_swapped"]], W.device)
    entry.update(shape=list(W.shape), sparsity=float(mask.float().mean()), swaps=int(swaps),
                 rows_swapped=int(rows_swapped), gather_time_s=time.perf_counter() - t0)
    return mask, entry
