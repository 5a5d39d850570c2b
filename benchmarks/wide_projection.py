"""Projected whole-model mask time of each objective from per-weight times measured at the model's
widths (bench_wide.py). A projection, not a measurement: it assumes the per-weight time of a
sub-layer depends on its input width (cols) and its statistics only, not on its row count (rows
are independent in every kernel), and that the threads scale perfectly for the per-core figure."""
from __future__ import annotations

import math

# Sub-layers of one decoder block, (rows, cols) = (out_features, in_features), and block counts.
MODELS = {
    "Llama-2-7B": dict(blocks=32, sublayers=[(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]),
    "Llama-2-70B": dict(blocks=80, sublayers=[(8192, 8192), (1024, 8192), (1024, 8192), (8192, 8192),
                                              (28672, 8192), (28672, 8192), (8192, 28672)]),
}


def per_weight(entries, obj, cols):
    """(ns per weight at this width, how it was obtained): measured at exactly this width (the mean
    over the run's shapes of that width), or extrapolated as a power law through the two widest
    measured widths (None if fewer than two)."""
    pts = {}
    for e in entries:
        if e["objective"] == obj:
            pts.setdefault(e["cols"], []).append(e["ns_per_weight"])
    pts = {c: sum(v) / len(v) for c, v in pts.items()}
    if cols in pts:
        return pts[cols], "measured"
    if len(pts) < 2:
        return None, "not measured"
    (c0, t0), (c1, t1) = sorted(pts.items())[-2:]
    if not (t0 > 0 and t1 > 0):  # a per-row time lost in the per-call part's noise
        return None, f"not measured (no per-row time at {c0 if not t0 > 0 else c1})"
    ex = math.log(t1 / t0) / math.log(c1 / c0)
    return t1 * (cols / c1) ** ex, f"extrapolated cols^{ex:.2f} from {c0}, {c1}"


def layer_part(entries, obj, cols):
    """Seconds of per-call work measured at the widest width <= cols (0 if none)."""
    pts = sorted((e["cols"], e.get("fixed_s", 0.0)) for e in entries if e["objective"] == obj and e["cols"] <= cols)
    return pts[-1][1] if pts else 0.0


def project(entries, obj, model):
    """(seconds for the whole model's masks, notes) or (None, notes)."""
    spec = MODELS[model]
    total, notes = 0.0, set()
    for rows, cols in spec["sublayers"]:
        t, how = per_weight(entries, obj, cols)
        notes.add(f"{cols}: {how}")
        if t is None:
            return None, sorted(notes)
        total += rows * cols * t * 1e-9 + layer_part(entries, obj, cols)
    return total * spec["blocks"], sorted(notes)


def fmt(seconds):
    if seconds is None:
        return "-"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def project_table(entries, objectives, threads):
    """Markdown: the projected mask time per model and objective, on this machine and per core."""
    out = ("**Projection** (not a measurement) of the masks' time of a whole model, from this run's "
           "per-weight times: `T = blocks x sum over a block's sub-layers of (rows x cols x t(cols) + f(cols))`, "
           "t(cols) = the ns/weight measured at that width (or extrapolated, as noted), f(cols) = the layer part "
           "measured at the widest width <= cols; per core = T x "
           f"{threads} threads (perfect scaling assumed). Calibration forward passes, statistics and "
           "M are not included.\n\n| model | objective | this machine | per core | widths |\n|---|---|---|---|---|\n")
    for model in MODELS:
        for obj in objectives:
            t, notes = project(entries, obj, model)
            out += (f"| {model} | {obj} | {fmt(t)} | {fmt(None if t is None else t * threads)} | "
                    f"{'; '.join(notes)} |\n")
    return out
