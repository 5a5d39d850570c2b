"""Merge gpu_check.sh's stage outputs into results.json, bench.csv, sparse24.csv and a markdown
fragment ready to paste into benchmarks/RESULTS.md.

    python benchmarks/gpu/report.py --work /tmp/gpu_check --out $OUT --command "bash benchmarks/gpu_check.sh"

Reads (any may be missing: the stage failed or was skipped): stages.tsv (stage, status, seconds),
env.json, refine.json, sparse24.json. Writes only into --out.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def stages(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 3:
                    rows.append({"stage": parts[0], "status": parts[1], "seconds": parts[2],
                                 "note": parts[3] if len(parts) > 3 else ""})
    except OSError:
        pass
    return rows


def ms(x):
    return "—" if x is None else f"{x * 1e3:.3f}"


def fnum(x, fmt="{:.1f}"):
    return "—" if x is None else fmt.format(x)


def write_csv(path, rows, keys):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def refine_tables(refine):
    lines = []
    cases = refine.get("cases", [])
    by = {}
    names = []
    for r in cases:
        by.setdefault((r["shape"], r["pattern"]), {})[r["backend"]] = r
        if r["backend"] not in names:
            names.append(r["backend"])
    fast = [n for n in names if n != "torch"]
    lines += [f"Copy bandwidth measured: {refine.get('copy_bandwidth_GBps', 0):.0f} GB/s (device-to-device, read + write). "
              f"Weights {refine.get('dtype')}; max_cycle_time 50, threshold 0.1, LLM-like statistics "
              "(benchmarks/_common.synthetic_layer). Times: median of CUDA-event timings, ms. "
              "floor = (W read + statistics + bool mask write) / copy bandwidth. "
              "x floor = time / floor; speedup = reference (torch) time / time. "
              "match = masks and swap counts equal the reference's.",
              "",
              "| shape | pattern | floor ms | " + " | ".join(f"{n} ms" for n in names) + " | "
              + " | ".join(f"{n} speedup | {n} x floor | {n} match" for n in fast) + " | mean swaps |",
              "|" + "---|" * (3 + len(names) + 3 * len(fast) + 1)]

    def match(x):
        if not x:
            return "—"
        if "error" in x:
            return "error"
        if "mask_equal" not in x:
            return "—"
        return "yes" if x.get("mask_equal") and x.get("swaps_equal") else "NO"

    for (shape, pattern), d in by.items():
        floor = next((x.get("floor_seconds") for x in d.values() if x.get("floor_seconds")), None)
        swaps = next((x.get("mean_swaps") for x in d.values() if x.get("mean_swaps") is not None), None)
        cells = [shape, pattern, ms(floor)] + [ms(d.get(n, {}).get("seconds")) for n in names]
        for n in fast:
            x = d.get(n, {})
            cells += [fnum(x.get("speedup_vs_torch")), fnum(x.get("x_floor"), "{:.2f}"), match(x)]
        cells.append(fnum(swaps))
        lines.append("| " + " | ".join(cells) + " |")
    errors = [f"- {r['shape']} {r['pattern']} {r['backend']}: {r['error']}" for r in cases if "error" in r]
    if errors:
        lines += ["", "Errors:"] + errors
    if refine.get("scaling"):
        lines += ["", f"Scaling in columns ({refine['scaling'][0]['rows']} rows, 50% unstructured):", "",
                  "| cols | backend | ms | x floor |", "|---|---|---|---|"]
        for r in refine["scaling"]:
            lines.append(f"| {r['cols']} | {r['backend']} | {ms(r.get('seconds'))} | {fnum(r.get('x_floor'), '{:.2f}')} |")
    if refine.get("layout_sweep"):
        lines += ["", "CUDA shared-memory layouts (50% unstructured; 0 = key cache + staged row, 1 = key cache, "
                  "2 = staged row, 3 = neither, auto = the launcher's pick; DSNOT_KERNELS_CUDA_LAYOUT):", "",
                  "| shape | layout | ms | same mask as auto |", "|---|---|---|---|"]
        for r in refine["layout_sweep"]:
            lines.append(f"| {r['shape']} | {r['layout']} | {ms(r.get('seconds'))} | "
                         f"{r.get('mask_equal_auto', r.get('error', '—'))} |")
    if refine.get("skipped"):
        lines += ["", "Not run (time budget): " + "; ".join(refine["skipped"])]
    return lines


def sparse_tables(sp):
    lines = [f"Backend: {sp.get('backend', '?')}. Dense vs 2:4 sparse `F.linear(x, W)`, W (out, in); decode = 16 tokens, "
             "prefill = 4096 tokens. speedup = dense / sparse (< 1: sparse is SLOWER).", "",
             "| W (out x in) | dtype | phase | dense us | sparse us | speedup | sparse slower? | rel err |",
             "|---|---|---|---|---|---|---|---|"]
    for c in sp.get("cases", []):
        if "error" in c:
            lines.append(f"| {c['shape']} | {c['dtype']} | {c['phase']} | error: {c['error'][:80]} | | | | |")
            continue
        lines.append(f"| {c['shape']} | {c['dtype']} | {c['phase']} | {c['dense_s'] * 1e6:.1f} | {c['sparse_s'] * 1e6:.1f} | "
                     f"{c['speedup']:.2f} | {'yes' if c['sparse_slower'] else 'no'} | {c['rel_err']:.1e} |")
    if sp.get("skipped"):
        lines += ["", "Not run: " + "; ".join(sp["skipped"])]
    return lines


def cov_table(cov):
    rows = ["| shape | objective | window | pattern | torch s | triton s | speedup | masks equal |",
            "|---|---|---|---|---|---|---|---|"]
    for r in cov.get("cases", []):
        rows.append(f"| {r.get('shape')} | {r.get('objective')} | {r.get('window', '')} | {r.get('pattern', '')} | "
                    f"{fnum(r.get('torch_s'), '{:.4f}')} | {fnum(r.get('triton_s'), '{:.4f}')} | "
                    f"{fnum(r.get('speedup'))}x | {r.get('mask_equal', r.get('error', '?'))} |")
    rows += ["", f"LLaMA-7B layer set (q k v o gate up down), triton cov_window 100 at 60 %: "
             f"{fnum(cov.get('layer_set_total_s'), '{:.3f}')} s (target < 1 s)"]
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", default="bash benchmarks/gpu_check.sh")
    args = ap.parse_args(argv)
    env = load(os.path.join(args.work, "env.json")) or {}
    refine = load(os.path.join(args.work, "refine.json"))
    sp = load(os.path.join(args.work, "sparse24.json"))
    st = stages(os.path.join(args.work, "stages.tsv"))
    cov = load(os.path.join(args.work, "cov.json"))  # bench_cov.py: objectives cov / cov_window
    results = {"env": env, "stages": st, "refine": refine, "sparse24": sp, "cov": cov}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if refine:
        keys = ["shape", "rows", "cols", "pattern", "dtype", "backend", "seconds", "reps", "floor_seconds", "x_floor",
                "speedup_vs_torch", "mask_equal", "swaps_equal", "mean_swaps", "error"]
        write_csv(os.path.join(args.out, "bench.csv"),
                  [dict(r, kind="llama") for r in refine.get("cases", [])] + [dict(r, kind="scaling") for r in refine.get("scaling", [])],
                  ["kind"] + keys)
    if sp:
        write_csv(os.path.join(args.out, "sparse24.csv"), sp.get("cases", []),
                  ["shape", "dtype", "phase", "tokens", "dense_s", "sparse_s", "speedup", "sparse_slower", "rel_err",
                   "dense_TFLOPs", "error"])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = ["<!-- gpu-check:begin -->", "## GPU check: CUDA / Triton / reference on one GPU", "",
          f"- date: {now}", f"- device: {env.get('gpu', '?')}", f"- torch {env.get('torch', '?')}, triton {env.get('triton', '?')}, "
          f"nvcc {env.get('nvcc', '?')}", f"- command: `{args.command}` (from the repo root; outputs under $OUT)", "",
          "| stage | status | seconds | note |", "|---|---|---|---|"]
    for s in st:
        md.append(f"| {s['stage']} | {s['status']} | {s['seconds']} | {s['note']} |")
    md += ["", "### refine_mask: reference vs triton vs cuda (LLaMA shapes)", ""]
    md += refine_tables(refine) if refine else ["(not run: see the stage table)"]
    md += ["", "### objectives cov / cov_window: reference vs triton", ""]
    md += cov_table(cov) if cov else ["(not run: see the stage table)"]
    md += ["", "### 2:4 semi-structured sparse vs dense linear", ""]
    md += sparse_tables(sp) if sp else ["(not run: see the stage table)"]
    md.append("<!-- gpu-check:end -->")
    with open(os.path.join(args.out, "RESULTS_fragment.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md[:40]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
