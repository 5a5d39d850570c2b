"""Shared set-up of the experiment scripts here: the perplexity setup of docs/RESULTS.md (embedded
SmolLM2-135M, 32 x 512 calibration windows (seed 0) of the first half of pydoc_data.topics, first
4 x 512 tokens of the second half for evaluation), and a hook into ``prune_model`` that sees every
sub-layer's statistics (the driver's ``sublayer_mask`` (pruning/sublayer.py) is wrapped; everything else, capture,
statistics, block order, application, is the package's driver)."""
from __future__ import annotations

import time

import dsnot_kernels as dk
from dsnot_kernels.pruning import sublayer as driver  # what the driver calls per sub-layer (pruning/sublayer.py)
from dsnot_kernels.pruning.output_error import second_moment as second_moment_of  # noqa: F401  E[x xᵀ], float64

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


_orig_sublayer_mask = driver.sublayer_mask
_orig_stats = driver.CalibrationStats


def install(variant=None, hessian=False, per_sublayer=None):
    """Call ``per_sublayer(name, module, stats, config)`` first for every sub-layer (a non-None
    return replaces the driver's ``(mask, new_weight, entry)``), with the second moment in every
    statistics object when ``hessian``; ``install(None)`` restores the driver."""
    if variant is not None:
        raise ValueError("the prototype refinement variants were removed; only per_sublayer= remains")
    if per_sublayer is None:
        driver.sublayer_mask = _orig_sublayer_mask
        driver.CalibrationStats = _orig_stats
        return
    driver.CalibrationStats = (lambda n, device="cpu", hessian_=False, **kw:
                               _orig_stats(n, device=device, hessian=True)) if hessian else _orig_stats

    def sublayer_mask(name, module, stats, config, want_error):
        out = per_sublayer(name, module, stats, config)
        if out is not None:
            return out
        return _orig_sublayer_mask(name, module, stats, config, want_error)

    driver.sublayer_mask = sublayer_mask
