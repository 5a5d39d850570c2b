"""Held-out perplexity of objective "cov_window" for other windows, thresholds and cycle counts.

Same setup as the tables of docs/RESULTS.md (``_harness``: embedded SmolLM2-135M, 32 x 512 calibration tokens,
4 x 512 held-out tokens, batch 8, Wanda initial mask, every sub-layer refined). Each run is
``prune_model`` with ``PruneConfig(objective="cov_window", window=K, update_threshold=T,
max_cycle_time=C, skip="none")`` on the package's CPU kernel: no prototype code. Resumes: runs
already in the JSON are skipped.

    OMP_NUM_THREADS=1 python benchmarks/experiments/window_sweep.py --runs 70%:100:0.1:50,70%:50:0:50
    python benchmarks/experiments/window_sweep.py --table
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

import dsnot_kernels as dk  # noqa: E402
import _harness as H  # noqa: E402

OUT = Path(__file__).resolve().parent / "window_sweep.json"
PATTERNS = {"50%": (0.5, "unstructured"), "60%": (0.6, "unstructured"), "70%": (0.7, "unstructured"),
            "2:4": (0.5, "2:4")}


def table(data) -> str:
    """Markdown: one row per run, by pattern then window, threshold and cycles."""
    order = {p: i for i, p in enumerate(PATTERNS)}
    runs = sorted(data["runs"].values(), key=lambda r: (order[r["pattern"]], r["window"], -r["update_threshold"],
                                                       r["max_cycle_time"]))
    lines = ["| pattern | window | update_threshold | max_cycle_time | perplexity | swaps | mask time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['pattern']} | {r['window']} | {r['update_threshold']:g} | {r['max_cycle_time']} | "
                     f"{r['ppl']:.2f} | {r['swaps']} | {r['mask_time_s']:.1f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="", help="comma-separated PATTERN:WINDOW:THRESHOLD:CYCLES")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--table", action="store_true", help="print the markdown table of the JSON and exit")
    args = ap.parse_args()
    data = json.loads(OUT.read_text()) if OUT.exists() else {"setup": {}, "runs": {}}
    if args.table:
        print(table(data))
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model, calib, eval_ids, load_s = H.setup()
    data["setup"] = {"calibration": f"{H.NSAMPLES} x {H.SEQLEN} tokens, random windows (seed 0), "
                                    "pydoc_data.topics first half",
                     "evaluation": f"first {H.EVAL_WINDOWS} x {H.EVAL_SEQLEN} tokens, second half",
                     "batch_size": H.BATCH, "threads": torch.get_num_threads(), "torch": torch.__version__}
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    for spec in args.runs.split(","):
        if spec in data["runs"]:
            continue
        pat, window, thr, cycles = spec.rsplit(":", 3)  # the pattern may be N:M
        sparsity, pattern = PATTERNS[pat]
        model.load_state_dict(dense)
        cfg = dk.PruneConfig(sparsity=sparsity, pattern=pattern, initial="wanda", batch_size=H.BATCH,
                             backend=args.backend, progress=False, refine=True, skip="none",
                             objective="cov_window", window=int(window), update_threshold=float(thr),
                             max_cycle_time=int(cycles))
        report = dk.prune_model(model, calib, cfg)
        t = time.perf_counter()
        value = H.ppl(model, eval_ids)
        data["runs"][spec] = {"ppl": value, "pattern": pat, "window": int(window), "update_threshold": float(thr),
                              "max_cycle_time": int(cycles), "swaps": report["swaps"],
                              "prune_time_s": report["total_time_s"], "mask_time_s": report["mask_time_s"],
                              "stats_time_s": report["stats_time_s"], "eval_time_s": time.perf_counter() - t,
                              "backend": args.backend}
        tmp = OUT.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, OUT)
        r = data["runs"][spec]
        print(f"{spec}: ppl {value:.3f} prune {r['prune_time_s']:.0f}s masks {r['mask_time_s']:.1f}s "
              f"stats {r['stats_time_s']:.1f}s swaps {r['swaps']}", flush=True)


if __name__ == "__main__":
    main()
