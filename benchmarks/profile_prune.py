"""Where a whole-model prune of the embedded model spends its time (issue #16, "Whole-model time").

Prunes SmolLM2-135M-Instruct (embedded) on pydoc calibration windows twice in one run: Wanda only
(``refine=False``) and Wanda + DSnoT with objective cov_window (default settings, every sub-layer:
``skip="none"``), and splits each prune into the capture of block 0's inputs, the two forward
passes per block, the statistics (the hooks), the masks and the rest (zeroing weights, moving
blocks). The targets: Wanda-only within 1.5x of the two forward passes, cov_window within 2x.

    python benchmarks/profile_prune.py [--nsamples 16 --seqlen 256 --threads 1] [--write]

``--write`` replaces this script's section of benchmarks/RESULTS.md (``--label`` names the code
version measured, e.g. to record the code before a change with ``PYTHONPATH`` pointing at it).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CASES = {
    "Wanda only": dict(refine=False),
    "Wanda only, objective cov_window (M not needed)": dict(refine=False, objective="cov_window"),
    "Wanda + DSnoT cov_window, skip none": dict(objective="cov_window", skip="none"),
}
TARGET = {"Wanda only": 1.5, "Wanda only, objective cov_window (M not needed)": 1.5,
          "Wanda + DSnoT cov_window, skip none": 2.0}


def split(report) -> dict:
    total = report["total_time_s"]
    parts = {"capture": report.get("capture_time_s", 0.0), "forward": report["forward_time_s"],
             "statistics": report["stats_time_s"], "masks": report["mask_time_s"]}
    parts["rest"] = total - sum(parts.values())
    parts["total"] = total
    return parts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cases", default="all", help="comma-separated case numbers (1-based) or all")
    p.add_argument("--label", default="this branch")
    p.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import dsnot_kernels as dk
    from dsnot_kernels.data import calibration_windows, load_texts, tokenize
    from dsnot_kernels.models import load_model

    model, tokenizer, desc = load_model(None)
    cal_text, _, _ = load_texts()
    calib = calibration_windows(tokenize(tokenizer, cal_text), args.nsamples, args.seqlen, 0)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    names = list(CASES) if args.cases == "all" else [list(CASES)[int(i) - 1] for i in args.cases.split(",")]
    rows = []
    for name in names:
        model.load_state_dict(dense)
        t0 = time.perf_counter()
        report = dk.prune_model(model, calib, dk.PruneConfig(batch_size=args.batch_size, progress=False,
                                                             **CASES[name]))
        wall = time.perf_counter() - t0
        parts = split(report)
        ratio = parts["total"] / parts["forward"]
        rows.append((name, parts, ratio, wall))
        print(f"{name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items())
              + f"; total / forward = {ratio:.2f} (target {TARGET[name]})", flush=True)

    from _common import command_line, machine, write_section
    cmd = command_line("benchmarks/profile_prune.py", argv)
    lines = [f"{desc}, {args.nsamples} x {args.seqlen} calibration tokens (pydoc), batch {args.batch_size}, "
             f"{args.threads} thread(s), {len(report['blocks'])} blocks. Code: {args.label}.", "",
             "| prune | capture s | forward s (2 passes) | statistics s | masks s | rest s | total s | "
             "total / forward | target |", "|---|---|---|---|---|---|---|---|---|"]
    for name, parts, ratio, _ in rows:
        lines.append(f"| {name} | {parts['capture']:.2f} | {parts['forward']:.2f} | {parts['statistics']:.2f} | "
                     f"{parts['masks']:.2f} | {parts['rest']:.2f} | {parts['total']:.2f} | {ratio:.2f} | "
                     f"{TARGET[name]} |")
    body = f"2026-12-01, 2-core CPU, shared ({machine()}). Command: `{cmd}`\n\n" + "\n".join(lines)
    print(body)
    if args.write:
        key = "profile-prune" + ("" if args.label == "this branch" else "-" + args.label.replace(" ", "-"))
        write_section(key, f"Whole-model prune time split ({args.label})", body)


if __name__ == "__main__":
    main()
