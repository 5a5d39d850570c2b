"""``prune_model``: layer-by-layer DSnoT pruning of a whole model (spec §4).

Per block: hook its linear sub-layers, run the block on every calibration batch to gather
``CalibrationStats`` (accumulated per sample, so the batch size does not change them; one object
per distinct input, shared by q/k/v and by gate/up; the second moment only where
``needs_second_moment``), compute
every sub-layer's mask with ``refine_mask``, zero the pruned weights, run the block again to get
the next block's inputs. Masks of a block are all computed before any weight is zeroed, so an
error leaves that block untouched; the error names the block, the sub-layer and the stage.
Under an initialised ``torch.distributed`` process group the work is split across ranks with the
masks of one process (``dsnot_kernels.pruning.distributed``).
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import torch
from torch import nn

from dsnot_kernels.bos import calibration_bos
from dsnot_kernels.metrics import authors_sqrt_scaler, initial_metric
from dsnot_kernels.ops import SECOND_MOMENT_OBJECTIVES, refine_mask
from dsnot_kernels.pruning.adapters import find_blocks, is_refined, sublayer_kind, weight_view
from dsnot_kernels.pruning.capture import (block_output, capture_block_calls, move_outside,
                                           restore_devices, snapshot_devices)
from dsnot_kernels.pruning import distributed as dist_prune
from dsnot_kernels.pruning import expert_pass
from dsnot_kernels.pruning import profile as sparsity_profile
from dsnot_kernels.pruning.config import PruneConfig
from dsnot_kernels.pruning.coverage import plan_block
from dsnot_kernels.pruning.output_error import output_error, second_moment
from dsnot_kernels.pruning.stats_pass import BlockStats
from dsnot_kernels.pruning.weight_update import reconstruct_kept, sparsegpt_initial, updated_output_error
from dsnot_kernels.stats import CalibrationStats


class PruningError(RuntimeError):
    """``prune_model`` failed; ``block``, ``sublayer``, ``stage`` say where, ``report`` what was done."""

    def __init__(self, message, block=None, sublayer=None, stage=None, report=None):
        super().__init__(message)
        self.block, self.sublayer, self.stage, self.report = block, sublayer, stage, report


def _check_calibration(calibration) -> torch.Tensor:
    if not isinstance(calibration, torch.Tensor) or calibration.dtype not in (torch.long, torch.int):
        raise TypeError("calibration must be an integer tensor of token ids, shape (nsamples, seqlen)")
    if calibration.dim() == 1:
        calibration = calibration.unsqueeze(0)
    if calibration.dim() != 2 or calibration.shape[0] == 0 or calibration.shape[1] < 2:
        raise ValueError(f"calibration must be (nsamples, seqlen) with seqlen >= 2, got {tuple(calibration.shape)}")
    return calibration.long()


def _run_block(block, inputs, calls, state):
    outs = []
    for x, call in zip(inputs, calls):
        state["batch"] = x.shape[0]
        outs.append(block_output(block(x, *call.args, **call.kwargs)))
    return outs


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


def _stats_maker(device, ranks, sample_offset):
    if ranks is None:
        return lambda c, h: CalibrationStats(c, device=device, hessian=h)  # noqa: E731
    return lambda c, h: dist_prune.SampleRecorder(c, device, h, sample_offset)  # noqa: E731


def _expert_setup(plan, config, device, ranks):
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


def _statistics_pass(block, subs, inputs, calls, device, config, ranks, sample_offset, experts=()):
    """Run ``block`` on every batch with hooks; returns the ``BlockStats`` (one statistics object per
    distinct sub-layer input: ``CalibrationStats``, or per-sample recorders under torch.distributed).
    ``experts``: expert collectors (``expert_pass``) fed in the same pass."""
    cols = {name: weight_view(m).shape[1] for name, m in subs.items()}
    needs = {name: needs_second_moment(config, name) for name in subs}
    collector = BlockStats(subs, cols, needs, _stats_maker(device, ranks, sample_offset))
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


def _sublayer_mask(name, module, stats, config, want_error):
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
                  without_same_sign=config.without_same_sign, backend=config.backend, return_swaps=True)
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
        moment = second_moment(stats)
        after = output_error(W, mask, stats, moment)
        if refined and config.max_cycle_time != 0:  # None: the objective's default (> 0)
            if sgpt:
                initial = common["initial_mask"]
            else:
                initial, _ = refine_mask(W, stats.sum_metric_row, stats.var, scaler,
                                         max_cycle_time=0, **common)
            before = output_error(W, initial, stats, moment)
        else:
            before = dict(after)
        entry["error"] = {"initial": before, "refined": after}
        if new_w is not None:  # the error of the weights actually written (updated kept weights)
            entry["error"]["final"] = updated_output_error(W, new_w, stats, moment)
    return mask, new_w, entry


def _sublayer_mask_rows(name, module, stats, config, ranks):
    """``_sublayer_mask`` of this rank's contiguous share of the rows, all-gathered (collective)."""
    W = weight_view(module)
    r0, r1 = dist_prune.share(W.shape[0], *ranks)
    part, _, entry = _sublayer_mask(name, SimpleNamespace(weight=SimpleNamespace(data=W[r0:r1])), stats,
                                    config, False)
    t0 = time.perf_counter()
    mask = dist_prune.gather_rows(part, W.shape[0])
    swaps, rows_swapped = dist_prune.sum_across([entry["swaps"], entry["rows_swapped"]], W.device)
    entry.update(shape=list(W.shape), sparsity=float(mask.float().mean()), swaps=int(swaps),
                 rows_swapped=int(rows_swapped), gather_time_s=time.perf_counter() - t0)
    return mask, entry


def prune_model(model: nn.Module, calibration: torch.Tensor, config: "PruneConfig | None" = None,
                on_mask=None) -> dict:
    """Prune ``model`` in place, block by block (spec §4). Returns a JSON-serialisable report.

    Args:
        model: a causal LM (the families of docs/MODELS.md or laid out like them) called as
            ``model(input_ids=...)``.
        calibration: (nsamples, seqlen) token ids. ``config.bos="always"`` makes each window start
            with BOS (``dsnot_kernels.bos.calibration_bos``); the report's "bos" says what was used.
        config: ``PruneConfig`` (default: 50 % unstructured, wanda + DSnoT, skip="mlp").
        on_mask: optional ``fn(block_index, sublayer_name, mask)`` called with each (rows, cols)
            bool mask (True = pruned) before it is applied.

    Under an initialised ``torch.distributed`` process group (world size > 1), call it on every
    rank with the same arguments: each rank runs a contiguous share of the calibration batches and
    of each sub-layer's mask rows, and every rank ends with the masks (and weights) one process
    would give (``dsnot_kernels.pruning.distributed``); the report adds ``world_size``,
    ``local_samples`` and ``reduce_time_s``.

    Raises:
        PruningError naming the block, sub-layer and stage (and, under torch.distributed, the rank).
        Blocks finished before the error are pruned, the rest untouched, and every tensor is back
        on its original device. ValueError before any work if the ranks' arguments differ or there
        are more ranks than calibration batches.
    """
    config = config if config is not None else PruneConfig()
    calibration = _check_calibration(calibration)
    calibration, bos_entry = calibration_bos(calibration, config.bos, model, config.bos_token_id)
    path, blocks = find_blocks(model)
    plans = [plan_block(b, f"{path}.{i}") for i, b in enumerate(blocks)]  # before any work
    expert_pass.check_config(plans, config)
    first = next(model.parameters())
    device = torch.device(config.device) if config.device else first.device
    batches = list(calibration.split(config.batch_size))
    ranks = dist_prune.world()
    sample_offset, counts, split_rows = 0, None, False
    if ranks is not None:  # each rank: a contiguous share of the batches (issue #20)
        dist_prune.check_arguments(config, calibration, len(batches))
        shares = [dist_prune.share(len(batches), r, ranks[1]) for r in range(ranks[1])]
        counts = [sum(b.shape[0] for b in batches[a:z]) for a, z in shares]
        a, z = shares[ranks[0]]
        sample_offset = sum(b.shape[0] for b in batches[:a])
        batches = batches[a:z]
        split_rows = dist_prune.splits_rows(config)

    sparsity_of = sparsity_profile.resolve(config, len(blocks))  # a bad list/dict fails before any work
    for i, plan in enumerate(plans if isinstance(config.sparsity_profile, dict) else ()):
        sparsity_profile.check_names(config, i, plan.dense)
    report = {"model": type(model).__name__, "blocks_path": path, "num_blocks": len(blocks),
              "calibration": list(calibration.shape), "bos": bos_entry, "config": config.to_dict(),
              "device": str(device), "sublayers": [], "blocks": [], "completed": False,
              "prunable_weights": sum(p.prunable for p in plans),
              "skipped": {f"{path}.{i}.{n}": why for i, p in enumerate(plans) for n, why in p.skipped.items()},
              "world_size": 1 if ranks is None else ranks[1],
              "local_samples": sum(b.shape[0] for b in batches)}
    snapshot = snapshot_devices(model)
    cfg = getattr(model, "config", None)
    use_cache = getattr(cfg, "use_cache", None)
    was_training = model.training
    where = {"block": None, "sublayer": None, "stage": "capture"}
    state = {"batch": 1}
    t_start = time.perf_counter()
    try:
        if use_cache is not None:
            cfg.use_cache = False
        model.eval()
        with torch.no_grad():
            move_outside(model, blocks, device)
            t0 = time.perf_counter()
            captured = capture_block_calls(model, blocks, batches, device)
            report["capture_time_s"] = time.perf_counter() - t0
            restore_devices(model, snapshot)
            if config.sparsity_profile == "owl":  # one dense pass: the blocks' outlier ratios
                from dsnot_kernels.pruning.owl import owl_pass
                report["sparsity_profile"] = owl_pass(model, blocks, captured, device, config, ranks,
                                                      sample_offset, counts, snapshot, where)
                sparsity_of = sparsity_profile.resolve(config, len(blocks),
                                                       report["sparsity_profile"]["block_sparsity"])
            else:
                report["sparsity_profile"] = {"kind": config.sparsity_profile if isinstance(
                    config.sparsity_profile, str) else "per-layer"}
            inputs = captured.inputs
            try:
                from tqdm.auto import tqdm
                bar = tqdm(range(len(blocks)), desc="pruning blocks",
                           disable=not config.progress or (ranks is not None and ranks[0] != 0))
            except ImportError:  # tqdm is a dependency, but a bar is not worth failing for
                bar = range(len(blocks))
            for i in bar:
                where.update(block=i, sublayer=None, stage="statistics")
                block = blocks[i].to(device)
                calls = [c[i] for c in captured.calls]
                plan = plans[i]
                subs = plan.dense
                xp = _expert_setup(plan, config, device, ranks)
                first = xp.first
                t0 = time.perf_counter()
                collector = _statistics_pass(block, subs, inputs, calls, device, config, ranks, sample_offset,
                                             first)
                t_pass1 = time.perf_counter() - t0
                timing = {"stats_s": collector.time_s, "reduce_s": 0.0}
                if ranks is not None:
                    where["stage"] = "reduce statistics (collective)"
                    t0 = time.perf_counter()
                    combined = {o: dist_prune.combine(collector.stats[o], counts)
                                for o in collector.groups()}
                    timing["reduce_s"] = time.perf_counter() - t0
                    stats_of = lambda name: combined[collector.owner[name]]  # noqa: E731
                else:
                    stats_of = collector.stats_of

                where["stage"] = "mask"
                masks = {}
                for name, module in subs.items():
                    where["sublayer"] = name
                    if hasattr(bar, "set_postfix_str"):  # which sub-layer: a reconstruction takes seconds each
                        bar.set_postfix_str(name, refresh=True)
                    target = sparsity_of(i, name)
                    sub_config = sparsity_profile.with_sparsity(config, target)
                    if ranks is not None and split_rows:
                        mask, entry = _sublayer_mask_rows(name, module, stats_of(name), sub_config, ranks)
                        new_w = None  # only row-independent, mask-only configurations split rows
                    else:
                        mask, new_w, entry = _sublayer_mask(name, module, stats_of(name), sub_config,
                                                            config.record_error)
                    entry["block"], entry["target_sparsity"] = i, target
                    masks[name] = (mask, entry, new_w, weight_view(module))
                del collector
                summary = []
                if plan.experts:
                    found, summary = expert_pass.block_expert_masks(
                        block, plan, inputs, calls, xp.passes, first, xp.make, xp.needs_m,
                        sparsity_profile.with_sparsity(config, sparsity_of(i, None)), _sublayer_mask,
                        where, combine=None if ranks is None else dist_prune.combine_experts)
                    masks.update(found)
                    del first
                for _, entry, _, _ in masks.values():  # experts: their block's sparsity (a profile's block level)
                    entry["block"] = i
                    entry.setdefault("target_sparsity", sparsity_of(i, None))
                if on_mask is not None:
                    where["stage"] = "on_mask"
                    for name, (mask, _, _, _) in masks.items():
                        where["sublayer"] = name
                        on_mask(i, name, mask)
                where.update(sublayer=None, stage="apply")
                for name, (mask, entry, new_w, W) in masks.items():
                    if new_w is not None:  # SparseGPT / reconstruct: updated kept weights, 0 on the mask
                        W.copy_(new_w)
                    W[mask] = 0
                    entry["pruned"] = int(mask.sum())
                    entry["zeros"] = float((W == 0).float().mean())
                    report["sublayers"].append(entry)
                del masks

                where["stage"] = "forward"
                t0 = time.perf_counter()
                inputs = _run_block(block, inputs, calls, state)
                t_pass2 = time.perf_counter() - t0
                restore_devices(model, snapshot)
                report["blocks"].append({
                    "block": i, "forward_s": t_pass1 + t_pass2 - timing["stats_s"],
                    "stats_s": timing["stats_s"], "reduce_s": timing["reduce_s"],
                    "mask_time_s": sum(e["mask_time_s"] for e in report["sublayers"] if e["block"] == i),
                    **({"experts": summary} if summary else {})})
            if ranks is not None:
                where.update(block=None, sublayer=None, stage="finish (collective)")
                dist_prune.all_finished(device)
    except Exception as exc:
        blk, sub, stage = where["block"], where["sublayer"], where["stage"]
        at = "while capturing the first block's inputs" if blk is None else \
            f"at block {blk} ({path}.{blk})" + (f", sub-layer {sub}" if sub else "") + f", stage {stage}"
        if stage == "finish (collective)":
            at = "at the final agreement of the ranks"
        if ranks is not None:
            at += f" on rank {ranks[0]} of {ranks[1]}"
            if "collective" in stage or "mask" in stage:
                at += " (a collective failed: another rank probably failed, see its message, or the "\
                      "process group timed out)"
        report["error"] = f"{type(exc).__name__}: {exc}"
        raise PruningError(f"prune_model failed {at}: {type(exc).__name__}: {exc}",
                           block=blk, sublayer=sub, stage=stage, report=report) from exc
    finally:
        restore_devices(model, snapshot)
        if use_cache is not None:
            cfg.use_cache = use_cache
        model.train(was_training)
    _summarise(report, time.perf_counter() - t_start)
    return report


def _summarise(report, total_time):
    subs = report["sublayers"]
    # the zeros made (the masks' pruned counts) over every weight the driver considers prunable
    pruned = sum(e["pruned"] for e in subs)
    report["sparsity"] = pruned / max(report["prunable_weights"], 1)
    report["pruned_weights"] = pruned
    report["swaps"] = sum(e["swaps"] for e in subs)
    report["block_sparsity"] = sparsity_profile.block_summary(report)
    report["mask_time_s"] = sum(e["mask_time_s"] for e in subs)
    report["reconstruct_time_s"] = sum(e.get("reconstruct_time_s", 0.0) for e in subs)
    report["reconstruct_not_converged"] = [e["name"] if "block" not in e else f"{e['block']}.{e['name']}"
                                           for e in subs if not e.get("reconstruct", {}).get("converged", True)]
    report["forward_time_s"] = sum(b["forward_s"] for b in report["blocks"])
    report["stats_time_s"] = sum(b["stats_s"] for b in report["blocks"])
    report["reduce_time_s"] = sum(b.get("reduce_s", 0.0) for b in report["blocks"])
    report["total_time_s"] = total_time
    report["completed"] = True
