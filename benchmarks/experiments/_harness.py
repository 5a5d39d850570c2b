"""Shared set-up for the objective-variant experiments: the README's perplexity setup (embedded
SmolLM2-135M, 32 x 512 calibration windows (seed 0) of the first half of pydoc_data.topics,
first 4 x 512 tokens of the second half for evaluation) and a way to swap the refinement rule of
``prune_model`` per sub-layer (the driver's ``_sublayer_mask`` is replaced; everything else,
capture, statistics, block order, application, is the package's driver)."""
from __future__ import annotations

import time

import dsnot_kernels as dk
from dsnot_kernels.pruning import driver
from dsnot_kernels.pruning.adapters import is_refined, sublayer_kind, weight_view

from objective_variants import VARIANTS, refine_variant, second_moment_of

NSAMPLES, SEQLEN, EVAL_WINDOWS, EVAL_SEQLEN, BATCH = 32, 512, 4, 512, 8


def setup():
    from dsnot_kernels.data import calibration_windows, default_texts, tokenize
    from dsnot_kernels.models import load_model
    t0 = time.perf_counter()
    model, tokenizer, _ = load_model()
    cal_text, eval_text = default_texts()
    calib = calibration_windows(tokenize(tokenizer, cal_text), NSAMPLES, SEQLEN, seed=0)
    eval_ids = tokenize(tokenizer, eval_text)
    return model, calib, eval_ids, time.perf_counter() - t0


def ppl(model, eval_ids):
    return dk.perplexity(model, eval_ids, EVAL_SEQLEN, max_windows=EVAL_WINDOWS)


_orig_sublayer_mask = driver._sublayer_mask
_orig_stats = driver.CalibrationStats


def install(variant=None, hessian=False, per_sublayer=None):
    """Replace the driver's refinement by ``variant`` (a VARIANTS key), or restore it (None).

    ``per_sublayer(name, module, stats, config)``, if given, is called first for every sub-layer
    (used by the layer-level check)."""
    if variant is None and per_sublayer is None:
        driver._sublayer_mask = _orig_sublayer_mask
        driver.CalibrationStats = _orig_stats
        return
    driver.CalibrationStats = (lambda n, device="cpu", hessian_=False, **kw:
                               _orig_stats(n, device=device, hessian=True)) if hessian else _orig_stats

    def sublayer_mask(name, module, stats, config, want_error):
        if per_sublayer is not None:
            out = per_sublayer(name, module, stats, config)
            if out is not None:
                return out
        if variant is None or not is_refined(name, config):
            return _orig_sublayer_mask(name, module, stats, config, want_error)
        W = weight_view(module)
        model_kind, window = VARIANTS[variant]
        t0 = time.perf_counter()
        M = second_moment_of(stats) if model_kind == "cov" else None
        mask, swaps, info = refine_variant(
            W, stats.sum_metric_row, stats.var, stats.scaler_row, stats.mean, M,
            sparsity=config.sparsity, prune_n=config.prune_n, prune_m=config.prune_m,
            max_cycle_time=50 if config.max_cycle_time is None else config.max_cycle_time,
            update_threshold=config.update_threshold,
            pow_of_var_regrowing=config.pow_of_var_regrowing, model=model_kind, window=window)
        mask_time = time.perf_counter() - t0
        entry = {"name": name, "kind": sublayer_kind(name), "shape": list(W.shape), "refined": True,
                 "sparsity": float(mask.float().mean()), "swaps": int(swaps.sum()),
                 "rows_swapped": int((swaps > 0).sum()), "mask_time_s": mask_time, "variant": variant,
                 "own_loss": info}
        return mask, entry

    driver._sublayer_mask = sublayer_mask
