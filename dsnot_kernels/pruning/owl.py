"""OWL's calibration pass: the per-block layer outlier ratios of the dense model (``profile``).

One pass over the blocks with the calibration inputs, before any block is pruned: each block's
linear sub-layers get their Wanda statistics (``scaler_row``) from a hooked forward pass, the
block's Wanda scores ``|W| * sqrt(scaler_row)`` give its outlier ratio, and the block's dense
outputs are the next block's inputs (as the OWL code computes them). Under torch.distributed each
rank runs its share of the batches and the statistics are combined, as in the pruning pass, so
every rank gets the ratios of one process.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from dsnot_kernels.pruning import distributed as dist_prune
from dsnot_kernels.pruning.adapters import find_sublayers, weight_view
from dsnot_kernels.pruning.capture import restore_devices
from dsnot_kernels.pruning.profile import owl_block_sparsity, wanda_scores


def block_outlier_ratio(scores, m: float) -> float:
    """OWL's outlier ratio of a block from its sub-layers' score tensors, without concatenating
    them: 100 x (number of scores > m x the mean of all of them) / their number."""
    total = sum(float(s.double().sum()) for s in scores)
    count = sum(s.numel() for s in scores)
    threshold = total / count * m
    return sum(int((s > threshold).sum()) for s in scores) * 100.0 / count


def owl_pass(model, blocks, captured, device, config, ranks, sample_offset, counts, snapshot, where) -> dict:
    """``{"kind": "owl", "owl_m", "owl_lambda", "outlier_ratios", "block_sparsity", "time_s"}``.

    blocks: the model's blocks; captured: their first block's inputs and each block's call
    arguments (``capture_block_calls``); the weights are not modified. ``where`` is updated with
    the block being measured (the driver's error context)."""
    from dsnot_kernels.pruning.driver import _run_block
    from dsnot_kernels.pruning.sublayer import statistics_pass

    stats_config = dataclasses.replace(config, initial="wanda", objective="dsnot", record_error=False,
                                       reconstruct=False, sparsity_profile="uniform")
    t0 = time.perf_counter()
    inputs, ratios, state = captured.inputs, [], {"batch": 1}
    for i in range(len(blocks)):
        where.update(block=i, sublayer=None, stage="owl outlier pass")
        block = blocks[i].to(device)
        calls = [c[i] for c in captured.calls]
        subs = find_sublayers(block)
        collector = statistics_pass(block, subs, inputs, calls, device, stats_config, ranks, sample_offset)
        if ranks is not None:
            combined = {o: dist_prune.combine(collector.stats[o], counts) for o in collector.groups()}
            stats_of = lambda name: combined[collector.owner[name]]  # noqa: E731
        else:
            stats_of = collector.stats_of
        scores = [wanda_scores(weight_view(m), stats_of(name).check_not_empty(f"sub-layer {name}").scaler_row)
                  for name, m in subs.items()]
        ratios.append(block_outlier_ratio(scores, config.owl_m))
        del scores, collector
        with torch.no_grad():
            inputs = _run_block(block, inputs, calls, state)
        restore_devices(model, snapshot)
    where.update(block=None, sublayer=None, stage="owl ratios")
    sparsities = owl_block_sparsity(ratios, config.sparsity, config.owl_lambda)
    return {"kind": "owl", "owl_m": config.owl_m, "owl_lambda": config.owl_lambda, "outlier_ratios": ratios,
            "block_sparsity": sparsities, "time_s": time.perf_counter() - t0}
