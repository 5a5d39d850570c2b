"""How often a cursor runs out on a real model (issue 21): rows whose refinement stops because a
candidate list is used up (spec §3: "A cursor that has no candidate of its sign left ... stops the
row"), where the authors' code would run on into the middle of its lists.

Prunes the embedded SmolLM2-135M layer by layer (``prune_model``, backend "cpu", skip="mlp": the
attention projections are refined) at each setting, and for every refined sub-layer replays each
row's swap loop on the same inputs to record why the row stopped:

- ``threshold``: ``|err| <= update_threshold``;
- ``same_sign``: a swap would flip the error's sign (N:M);
- ``cycles``: all ``max_cycle_time`` cycles used;
- ``runout``: the growth cursor (hi / lo) or the prune cursor (plo / phi), or for N:M the group of
  ``r``, had no candidate left.

The replay's swap counts are checked against the op's (they must be equal). Writes the section
"Cursor run-out on the embedded model" of ``benchmarks/RESULTS.md`` and
``benchmarks/results/cursor_runout.csv`` (one line per sub-layer and setting).

Run:  python benchmarks/cursor_runout.py --nsamples 16 --seqlen 512 --threads 2
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import command_line, header, write_csv, write_section  # noqa: E402

import dsnot_kernels.pruning.sublayer as driver  # noqa: E402  (what the driver calls per sub-layer)
from dsnot_kernels.objectives.reference import (_ordered_candidates, growth_keys, initial_selection, lane_sum,  # noqa: E402
                                     wanda_metric)

SETTINGS = {"50%": dict(sparsity=0.5, pattern="unstructured"), "60%": dict(sparsity=0.6, pattern="unstructured"),
            "70%": dict(sparsity=0.7, pattern="unstructured"), "2:4": dict(sparsity=0.5, pattern="2:4")}
REASONS = ("threshold", "same_sign", "cycles", "runout_grow", "runout_prune")


def stop_reasons(W, smr, var, scaler, sparsity, prune_n, prune_m, max_cycle_time, thr, p=1.0):
    """Replay objective "dsnot" row by row (vectorised, as the reference): (reasons (rows,) list of
    str, swaps (rows,) int). Default driver arguments: wanda initial metric, same-sign rule for N:M
    only."""
    W = W.float()
    rows, cols = W.shape
    nm = prune_n > 0
    dm = W * smr.unsqueeze(0)
    wanda = wanda_metric(W, scaler)
    mask = initial_selection(wanda, sparsity, prune_n, prune_m)
    err = lane_sum(torch.where(mask, dm, torch.zeros(())))
    sign0 = torch.sign(err)
    thr = torch.tensor(thr, dtype=torch.float32)
    key = growth_keys(dm, var, p)
    gpos, gneg = mask & (key > 0), mask & (key < 0)
    grow_order = torch.sort(torch.where(gpos | gneg, key, torch.zeros(())), dim=1, stable=True)[1]
    hi_end, lo_end = cols - gpos.sum(1), gneg.sum(1)
    hi_ptr = torch.full((rows,), cols - 1, dtype=torch.long)
    lo_ptr = torch.zeros(rows, dtype=torch.long)
    if nm:
        q_metric = torch.where(mask, torch.full((), float("inf")), wanda)
        offs = torch.arange(prune_m)
    else:
        cls = torch.ones((rows, cols), dtype=torch.int8)
        cls[~mask & (dm < 0)] = 0
        cls[~mask & (dm > 0)] = 2
        order = _ordered_candidates(wanda + 0.0, cls)
        plo_end, phi_ptr = (cls == 0).sum(1), cols - (cls == 2).sum(1)
        plo_ptr = torch.zeros(rows, dtype=torch.long)
    reason = ["cycles"] * rows
    swaps = torch.zeros(rows, dtype=torch.long)
    active = torch.ones(rows, dtype=torch.bool)
    ids = torch.arange(rows)

    def stop(sel, why):
        for i in ids[sel].tolist():
            reason[i] = why

    for _ in range(max_cycle_time):
        small = active & ~(err.abs() > thr)
        stop(small, "threshold")
        active &= ~small
        if not bool(active.any()):
            break
        go_hi = err > 0
        r_ok = torch.where(go_hi, hi_ptr >= hi_end, lo_ptr < lo_end)
        r = grow_order.gather(1, torch.where(go_hi, hi_ptr, lo_ptr).clamp(0, cols - 1)[:, None])[:, 0]
        hi_ptr -= (active & go_hi).long()
        lo_ptr += (active & ~go_hi).long()
        if nm:
            start = r - r % prune_m
            best, arg = q_metric.gather(1, start[:, None] + offs).min(1)
            q, q_ok = start + arg, best < float("inf")
        else:
            use_phi = err < 0
            q_ok = torch.where(use_phi, phi_ptr < cols, plo_ptr < plo_end)
            q = order.gather(1, torch.where(use_phi, phi_ptr, plo_ptr).clamp(0, cols - 1)[:, None])[:, 0]
            phi_ptr += (active & use_phi).long()
            plo_ptr += (active & ~use_phi).long()
        after = (err + dm.gather(1, q[:, None])[:, 0]) - dm.gather(1, r[:, None])[:, 0]
        stop(active & ~r_ok, "runout_grow")
        stop(active & r_ok & ~q_ok, "runout_prune")
        ok = active & r_ok & q_ok
        if nm:
            stop(ok & (torch.sign(after) != sign0), "same_sign")
            ok &= torch.sign(after) == sign0
        active = ok
        mask[ids[ok], q[ok]] = True
        mask[ids[ok], r[ok]] = False
        if nm:
            q_metric[ids[ok], q[ok]] = float("inf")
        err = torch.where(ok, after, err)
        swaps += ok.long()
    return reason, swaps


def run_setting(model_and_tok, calib, label, setting, threads):
    from dsnot_kernels.pruning import PruneConfig, prune_model

    model = model_and_tok()
    cfg = PruneConfig(sparsity=setting["sparsity"], pattern=setting["pattern"], skip="mlp", backend="cpu",
                      progress=False)
    lines = []
    original = driver.refine_mask

    def wrapped(W, smr, var, scaler, **kw):
        mask, swaps = original(W, smr, var, scaler, **kw)
        if kw["max_cycle_time"] > 0:
            reasons, replay = stop_reasons(W, smr, var, scaler, kw["sparsity"], kw["prune_n"], kw["prune_m"],
                                           kw["max_cycle_time"], kw["update_threshold"], kw["pow_of_var_regrowing"])
            if not torch.equal(replay, swaps.long()):
                raise AssertionError(f"{label}: the replay's swaps differ from the op's")
            lines.append({"setting": label, "shape": "x".join(map(str, W.shape)), "swaps_mean": float(swaps.float().mean()),
                          **{k: reasons.count(k) for k in REASONS}})
        return mask, swaps

    names = []
    original_sub = driver.sublayer_mask

    def sub(name, module, stats, config, want_error):
        names.append(name)
        return original_sub(name, module, stats, config, want_error)

    driver.refine_mask, driver.sublayer_mask = wrapped, sub
    try:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        prune_model(model, calib, cfg)
        elapsed = time.perf_counter() - t0
    finally:
        driver.refine_mask, driver.sublayer_mask = original, original_sub
    refined = [n for n in names if "self_attn" in n]
    for line, (i, name) in zip(lines, [(k // 4, n) for k, n in enumerate(refined)]):
        line["block"], line["sublayer"] = i, name.split(".")[-1]
    return lines, elapsed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    args = ap.parse_args(argv)
    from dsnot_kernels.data import calibration_windows, default_texts, tokenize
    from dsnot_kernels.models import load_embedded

    cal_text, _ = default_texts()
    _, tok = load_embedded()
    calib = calibration_windows(tokenize(tok, cal_text), args.nsamples, args.seqlen, 0)
    all_lines, times = [], {}
    for label in args.settings.split(","):
        lines, times[label] = run_setting(lambda: load_embedded()[0], calib, label, SETTINGS[label], args.threads)
        all_lines += lines
        print(f"{label}: {sum(x['runout_grow'] + x['runout_prune'] for x in lines)} rows ran out, {times[label]:.0f} s",
              flush=True)
    csv_path = write_csv("cursor_runout.csv", [{k: x[k] for k in ("setting", "block", "sublayer", "shape",
                                                                "swaps_mean") + REASONS} for x in all_lines])

    out = [header(command_line("benchmarks/cursor_runout.py", argv)),
           f"Embedded SmolLM2-135M, calibration {args.nsamples} x {args.seqlen} tokens of pydoc_data (first half, "
           "seed 0), wanda + DSnoT, skip=\"mlp\" (the 30 x 4 attention projections are refined), 50 cycles, "
           "threshold 0.1. Rows of all refined sub-layers; why each row's refinement stopped (replayed on the "
           f"op's inputs; the replay's swap counts equal the op's). Per sub-layer figures: `{os.path.relpath(csv_path)}`.\n",
           "| setting | sub-layer | rows | threshold | same sign | 50 cycles | ran out: growth | ran out: prune | "
           "sub-layers with a run-out | most in one sub-layer |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for label in args.settings.split(","):
        per = defaultdict(list)
        for x in all_lines:
            if x["setting"] == label:
                per[x["sublayer"]].append(x)
                per["all"].append(x)
        for kind in ("q_proj", "k_proj", "v_proj", "o_proj", "all"):
            xs = per.get(kind, [])
            if not xs:
                continue
            tot = {k: sum(x[k] for x in xs) for k in REASONS}
            rows = sum(tot.values())
            ran = [x["runout_grow"] + x["runout_prune"] for x in xs]
            worst = max(range(len(xs)), key=lambda j: ran[j])
            most = f"{ran[worst]} (block {xs[worst]['block']} {xs[worst]['sublayer']})" if ran[worst] else "0"
            out.append(f"| {label} | {kind} | {rows} | {tot['threshold']} | {tot['same_sign']} | {tot['cycles']} | "
                       f"{tot['runout_grow']} | {tot['runout_prune']} | {sum(1 for r in ran if r)} of {len(xs)} | {most} |")
    out.append("\nTimes (prune_model with the replay): " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + ".")
    write_section("cursor-runout", "Cursor run-out on the embedded model (cursor_runout.py)", "\n".join(out))
    print("\n".join(out))


if __name__ == "__main__":
    main()
