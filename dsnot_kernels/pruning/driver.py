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

import contextlib
import time
from types import SimpleNamespace

import torch
from torch import nn

from dsnot_kernels.bos import calibration_bos
from dsnot_kernels.pruning import distributed as dist_prune
from dsnot_kernels.pruning import expert_pass
from dsnot_kernels.pruning import profile as sparsity_profile
from dsnot_kernels.pruning import sublayer
from dsnot_kernels.pruning.adapters import find_blocks, weight_view
from dsnot_kernels.pruning.capture import (block_output, capture_block_calls, move_outside,
                                           restore_devices, snapshot_devices)
from dsnot_kernels.pruning.config import PruneConfig
from dsnot_kernels.pruning.coverage import plan_block
from dsnot_kernels.pruning.sublayer import needs_second_moment, statistics_pass  # noqa: F401


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
    run = _plan(model, calibration, config if config is not None else PruneConfig())  # 1. plan, before any work
    t_start = time.perf_counter()
    try:
        with _inference(model, run.snapshot), torch.no_grad():
            captured = _capture(run)                                    # 2. the first block's inputs
            sparsity_of = _sparsities(run, captured)                    # 3. each sub-layer's sparsity
            inputs = captured.inputs
            for i in _progress(run):                                    # 4. block by block
                inputs = _prune_block(run, i, inputs, [c[i] for c in captured.calls], sparsity_of, on_mask)
            if run.ranks is not None:
                run.where.update(block=None, sublayer=None, stage="finish (collective)")
                dist_prune.all_finished(run.device)
    except Exception as exc:
        raise _failure(run, exc) from exc
    _summarise(run.report, time.perf_counter() - t_start)              # 5. the report
    return run.report


def _plan(model, calibration, config) -> SimpleNamespace:
    """Step 1: the blocks, what each prunes (``plan_block``: an unsupported weight raises here),
    the calibration batches of this rank, and the report's header."""
    calibration = _check_calibration(calibration)
    calibration, bos_entry = calibration_bos(calibration, config.bos, model, config.bos_token_id)
    path, blocks = find_blocks(model)
    plans = [plan_block(b, f"{path}.{i}") for i, b in enumerate(blocks)]
    expert_pass.check_config(plans, config)
    device = torch.device(config.device) if config.device else next(model.parameters()).device
    batches = list(calibration.split(config.batch_size))
    ranks = dist_prune.world()
    sample_offset, counts, split_rows = 0, None, False
    if ranks is not None:  # each rank: a contiguous share of the batches
        dist_prune.check_arguments(config, calibration, len(batches))
        shares = [dist_prune.share(len(batches), r, ranks[1]) for r in range(ranks[1])]
        counts = [sum(b.shape[0] for b in batches[a:z]) for a, z in shares]
        a, z = shares[ranks[0]]
        sample_offset = sum(b.shape[0] for b in batches[:a])
        batches = batches[a:z]
        split_rows = dist_prune.splits_rows(config)
    sparsity_profile.resolve(config, len(blocks))  # a bad list/dict fails before any work
    for i, plan in enumerate(plans if isinstance(config.sparsity_profile, dict) else ()):
        sparsity_profile.check_names(config, i, plan.dense)
    report = {"model": type(model).__name__, "blocks_path": path, "num_blocks": len(blocks),
              "calibration": list(calibration.shape), "bos": bos_entry, "config": config.to_dict(),
              "device": str(device), "sublayers": [], "blocks": [], "completed": False,
              "prunable_weights": sum(p.prunable for p in plans),
              "skipped": {f"{path}.{i}.{n}": why for i, p in enumerate(plans) for n, why in p.skipped.items()},
              "world_size": 1 if ranks is None else ranks[1],
              "local_samples": sum(b.shape[0] for b in batches)}
    return SimpleNamespace(model=model, config=config, path=path, blocks=blocks, plans=plans, device=device,
                           batches=batches, ranks=ranks, sample_offset=sample_offset, counts=counts,
                           split_rows=split_rows, report=report, snapshot=snapshot_devices(model),
                           where={"block": None, "sublayer": None, "stage": "capture"}, state={"batch": 1})


@contextlib.contextmanager
def _inference(model, snapshot):
    """The model in eval mode without a KV cache; afterwards (also on an error) its mode, cache
    setting and every tensor's device as before."""
    cfg = getattr(model, "config", None)
    use_cache = getattr(cfg, "use_cache", None)
    was_training = model.training
    try:
        if use_cache is not None:
            cfg.use_cache = False
        model.eval()
        yield
    finally:
        restore_devices(model, snapshot)
        if use_cache is not None:
            cfg.use_cache = use_cache
        model.train(was_training)


def _capture(run):
    """Step 2: every batch's input to the first block (and the other arguments of each block call)."""
    move_outside(run.model, run.blocks, run.device)
    t0 = time.perf_counter()
    captured = capture_block_calls(run.model, run.blocks, run.batches, run.device)
    run.report["capture_time_s"] = time.perf_counter() - t0
    restore_devices(run.model, run.snapshot)
    return captured


def _sparsities(run, captured):
    """Step 3: ``fn(block, sub-layer name or None) -> sparsity`` of the config's profile (OWL: one
    dense pass over the blocks for their outlier ratios, ``pruning/owl.py``)."""
    config = run.config
    if config.sparsity_profile != "owl":
        run.report["sparsity_profile"] = {"kind": config.sparsity_profile if isinstance(
            config.sparsity_profile, str) else "per-layer"}
        return sparsity_profile.resolve(config, len(run.blocks))
    from dsnot_kernels.pruning.owl import owl_pass
    run.report["sparsity_profile"] = owl_pass(run.model, run.blocks, captured, run.device, config, run.ranks,
                                              run.sample_offset, run.counts, run.snapshot, run.where)
    return sparsity_profile.resolve(config, len(run.blocks), run.report["sparsity_profile"]["block_sparsity"])


def _progress(run):
    try:
        from tqdm.auto import tqdm
        run.bar = tqdm(range(len(run.blocks)), desc="pruning blocks",
                       disable=not run.config.progress or (run.ranks is not None and run.ranks[0] != 0))
    except ImportError:  # tqdm is a dependency, but a bar is not worth failing for
        run.bar = range(len(run.blocks))
    return run.bar


def _prune_block(run, i, inputs, calls, sparsity_of, on_mask):
    """Step 4, one block: its statistics, every mask (dense sub-layers, then experts), the masks
    applied, and the block run again for the next block's inputs (returned)."""
    run.where.update(block=i, sublayer=None, stage="statistics")
    block = run.blocks[i].to(run.device)
    masks, summary, stats_s, reduce_s, t_pass1 = _block_masks(run, i, block, inputs, calls, sparsity_of)
    if on_mask is not None:
        run.where["stage"] = "on_mask"
        for name, (mask, _, _, _) in masks.items():
            run.where["sublayer"] = name
            on_mask(i, name, mask)
    run.where.update(sublayer=None, stage="apply")
    for name, (mask, entry, new_w, W) in masks.items():
        if new_w is not None:  # SparseGPT / reconstruct: updated kept weights, 0 on the mask
            W.copy_(new_w)
        W[mask] = 0
        entry["pruned"] = int(mask.sum())
        entry["zeros"] = float((W == 0).float().mean())
        run.report["sublayers"].append(entry)
    del masks
    run.where["stage"] = "forward"
    t0 = time.perf_counter()
    inputs = _run_block(block, inputs, calls, run.state)
    t_pass2 = time.perf_counter() - t0
    restore_devices(run.model, run.snapshot)
    run.report["blocks"].append({
        "block": i, "forward_s": t_pass1 + t_pass2 - stats_s, "stats_s": stats_s, "reduce_s": reduce_s,
        "mask_time_s": sum(e["mask_time_s"] for e in run.report["sublayers"] if e["block"] == i),
        **({"experts": summary} if summary else {})})
    return inputs


def _block_masks(run, i, block, inputs, calls, sparsity_of):
    """``({name: (mask, entry, new_weight or None, weight view)}, expert summary, stats_s, reduce_s,
    first pass s)`` of block ``i``; no weight is modified."""
    config, ranks, where = run.config, run.ranks, run.where
    plan = run.plans[i]
    xp = sublayer.expert_setup(plan, config, run.device, ranks)
    t0 = time.perf_counter()
    collector = sublayer.statistics_pass(block, plan.dense, inputs, calls, run.device, config, ranks,
                                         run.sample_offset, xp.first)
    t_pass1, stats_s = time.perf_counter() - t0, collector.time_s
    stats_of, reduce_s = collector.stats_of, 0.0
    if ranks is not None:
        where["stage"] = "reduce statistics (collective)"
        t0 = time.perf_counter()
        combined = {o: dist_prune.combine(collector.stats[o], run.counts) for o in collector.groups()}
        reduce_s = time.perf_counter() - t0
        stats_of = lambda name: combined[collector.owner[name]]  # noqa: E731
    where["stage"] = "mask"
    masks = {}
    for name, module in plan.dense.items():
        where["sublayer"] = name
        if hasattr(run.bar, "set_postfix_str"):  # which sub-layer: a reconstruction takes seconds each
            run.bar.set_postfix_str(name, refresh=True)
        sub_config = sparsity_profile.with_sparsity(config, sparsity_of(i, name))
        if ranks is not None and run.split_rows:
            mask, entry = sublayer.sublayer_mask_rows(name, module, stats_of(name), sub_config, ranks)
            new_w = None  # only row-independent, mask-only configurations split rows
        else:
            mask, new_w, entry = sublayer.sublayer_mask(name, module, stats_of(name), sub_config,
                                                        config.record_error)
        entry["target_sparsity"] = sparsity_of(i, name)
        masks[name] = (mask, entry, new_w, weight_view(module))
    del collector
    summary = []
    if plan.experts:  # experts: their block's sparsity (a profile's block level)
        found, summary = expert_pass.block_expert_masks(
            block, plan, inputs, calls, xp.passes, xp.first, xp.make, xp.needs_m,
            sparsity_profile.with_sparsity(config, sparsity_of(i, None)), sublayer.sublayer_mask,
            where, combine=None if ranks is None else dist_prune.combine_experts)
        masks.update(found)
    for _, entry, _, _ in masks.values():
        entry["block"] = i
        entry.setdefault("target_sparsity", sparsity_of(i, None))
    return masks, summary, stats_s, reduce_s, t_pass1


def _failure(run, exc) -> PruningError:
    """The ``PruningError`` of ``exc``: where it happened (block, sub-layer, stage, rank)."""
    blk, sub, stage = run.where["block"], run.where["sublayer"], run.where["stage"]
    at = "while capturing the first block's inputs" if blk is None else \
        f"at block {blk} ({run.path}.{blk})" + (f", sub-layer {sub}" if sub else "") + f", stage {stage}"
    if stage == "finish (collective)":
        at = "at the final agreement of the ranks"
    if run.ranks is not None:
        at += f" on rank {run.ranks[0]} of {run.ranks[1]}"
        if "collective" in stage or "mask" in stage:
            at += " (a collective failed: another rank probably failed, see its message, or the "\
                  "process group timed out)"
    run.report["error"] = f"{type(exc).__name__}: {exc}"
    return PruningError(f"prune_model failed {at}: {type(exc).__name__}: {exc}",
                        block=blk, sublayer=sub, stage=stage, report=run.report)


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
