"""Perplexity of the embedded model (SmolLM2-135M-Instruct) pruned with Wanda, Wanda + DSnoT and
Wanda + DSnoT with the "mse", "cov", "cov_window" and "swap" objectives, SparseGPT as published, and the
same with the exact reconstruction of the kept weights (``reconstruct=True``), and Wanda and
Wanda + swap with OWL's per-block sparsities (``sparsity_profile="owl"``, M 5, lambda 0.08), at
50/60/70/80 % unstructured and 2:4.

Setup (stated in the JSON): calibration = --nsamples random windows x --seqlen tokens of the first
half of pydoc_data.topics (default 16 x 256: the recorded run was made on 2 CPU cores shared with
other jobs; 32 x 512 is the intended size, pass --nsamples 32 --seqlen 512 where there is time);
evaluation = the first --eval-windows windows of --eval-seqlen tokens of the second half (the
authors' perplexity protocol). The dense model is loaded once; each configuration starts from
a copy of the dense weights. Results are appended to the JSON after every configuration, and a run
resumes where a previous one stopped (configurations already in the file are skipped).

    python benchmarks/perplexity_table.py                # run what is missing, then print the table
    python benchmarks/perplexity_table.py --table-only   # print the markdown table from the JSON
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "perplexity.json"
PATTERNS = [("60%", 0.6, "unstructured"), ("70%", 0.7, "unstructured"), ("50%", 0.5, "unstructured"),
            ("2:4", 0.5, "2:4"), ("80%", 0.8, "unstructured")]
METHODS = {  # name -> PruneConfig overrides; run order = round 1 for all patterns, then round 2
    "wanda": dict(refine=False),
    "dsnot_all": dict(refine=True, skip="none", objective="dsnot"),
    "mse_all": dict(refine=True, skip="none", objective="mse"),
    "dsnot_attn": dict(refine=True, skip="mlp", objective="dsnot"),
    "cov_all": dict(refine=True, skip="none", objective="cov"),
    "cov_window_all": dict(refine=True, skip="none", objective="cov_window", window=50),
    "cov_window100_all": dict(refine=True, skip="none", objective="cov_window", window=100),
    "swap_all": dict(refine=True, skip="none", objective="swap"),
    "sparsegpt": dict(initial="sparsegpt", refine=False),
    # SparseGPT's mask refined against the dense weights, then the kept weights reconstructed
    "sparsegpt_cov_window_rec": dict(initial="sparsegpt", refine=True, skip="none", objective="cov_window",
                                     window=100, reconstruct=True),
    "cov_window100_all_rec": dict(refine=True, skip="none", objective="cov_window", window=100, reconstruct=True),
    "wanda_rec": dict(refine=False, reconstruct=True),
    "sparsegpt_rec": dict(initial="sparsegpt", refine=False, reconstruct=True),
    "swap_all_rec": dict(refine=True, skip="none", objective="swap", reconstruct=True),
    "sparsegpt_swap_rec": dict(initial="sparsegpt", refine=True, skip="none", objective="swap", reconstruct=True),
    # OWL's per-block sparsities (defaults M 5, lambda 0.08), the mean at the column's sparsity
    "owl_wanda": dict(refine=False, sparsity_profile="owl"),
    "owl_swap_all": dict(refine=True, skip="none", objective="swap", sparsity_profile="owl"),
}
ROUNDS = [["wanda", "dsnot_all", "mse_all"], ["dsnot_attn"], ["cov_all"], ["cov_window_all"], ["cov_window100_all"], ["swap_all"],
          ["sparsegpt", "sparsegpt_cov_window_rec", "cov_window100_all_rec"], ["wanda_rec", "sparsegpt_rec"],
          ["swap_all_rec", "sparsegpt_swap_rec"], ["owl_wanda", "owl_swap_all"]]
LABELS = {"dense": "dense", "wanda": "Wanda",
          "dsnot_attn": "Wanda + DSnoT, attention only (skip=mlp, the authors' default)",
          "dsnot_all": "Wanda + DSnoT, every sub-layer (skip=none)",
          "mse_all": "Wanda + DSnoT objective=mse, every sub-layer (skip=none)",
          "cov_all": "Wanda + DSnoT objective=cov, every sub-layer (skip=none)",
          "cov_window_all": "Wanda + DSnoT objective=cov_window (window 50), every sub-layer (skip=none)",
          "cov_window100_all": "Wanda + DSnoT objective=cov_window (window 100), every sub-layer (skip=none)",
          "swap_all": "Wanda + objective=swap (best pair of the whole row, to a local optimum), every sub-layer",
          "sparsegpt": "SparseGPT (as published: mask + weight updates)",
          "sparsegpt_rec": "SparseGPT + reconstruct",
          "wanda_rec": "Wanda + reconstruct",
          "cov_window100_all_rec": "Wanda + cov_window (window 100, skip=none) + reconstruct",
          "sparsegpt_cov_window_rec": "SparseGPT + cov_window (window 100, skip=none) + reconstruct",
          "swap_all_rec": "Wanda + swap (every sub-layer) + reconstruct",
          "sparsegpt_swap_rec": "SparseGPT + swap (every sub-layer) + reconstruct",
          "owl_wanda": "OWL + Wanda (M 5, lambda 0.08)",
          "owl_swap_all": "OWL + Wanda + swap, every sub-layer (M 5, lambda 0.08)"}


def load(path=RESULTS) -> dict:
    """``{"setups": {"16x256": {"setup": {...}, "runs": {...}}, ...}}`` (older single-setup files migrate)."""
    if not path.exists():
        return {"setups": {}}
    data = json.loads(path.read_text())
    if "runs" in data:  # one setup per file (first format)
        key = f"{data['setup'].get('nsamples', 16)}x{data['setup'].get('seqlen', 256)}"
        data = {"setups": {key: {"setup": data["setup"], "runs": data["runs"]}}}
    return data


def save(data, path=RESULTS):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def table(data, key) -> str:
    """Markdown table of one setup: perplexity (pruning time) per method and pattern."""
    runs = data["setups"][key]["runs"]
    order = [c for c in ["50%", "60%", "70%", "80%", "2:4"]
             if c != "80%" or any(k.endswith("@80%") for k in runs)]
    lines = ["| method | " + " | ".join(order) + " |", "|---|" + "---|" * len(order)]
    dense = runs.get("dense")
    if dense:
        lines.append("| dense | " + " | ".join(f"{dense['ppl']:.2f}" for _ in order) + " |")
    for method in ["wanda", "dsnot_attn", "dsnot_all", "mse_all", "cov_all", "cov_window_all", "cov_window100_all",
                   "swap_all", "sparsegpt", "sparsegpt_rec", "wanda_rec", "cov_window100_all_rec", "sparsegpt_cov_window_rec",
                   "swap_all_rec", "sparsegpt_swap_rec", "owl_wanda", "owl_swap_all"]:
        cells = []
        for c in order:
            r = runs.get(f"{method}@{c}")
            cells.append("–" if r is None else f"{r['ppl']:.2f} ({r['prune_time_s']:.0f} s)")
        if any(c != "–" for c in cells):
            lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=4)
    ap.add_argument("--eval-seqlen", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backend", default=None, help="refine_mask backend (default: the best for CPU tensors)")
    ap.add_argument("--patterns", default=",".join(p[0] for p in PATTERNS),
                    help="comma-separated subset of " + ",".join(p[0] for p in PATTERNS).replace("%", "%%") + ", run in that order")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    data = load(args.out)
    if args.table_only:
        for key, entry in data["setups"].items():
            print(f"### calibration {key}: {entry['setup'].get('calibration')}; "
                  f"evaluation {entry['setup'].get('evaluation')}\n")
            print(table(data, key) + "\n")
        return
    import dsnot_kernels as dk
    from dsnot_kernels.data import DEFAULT_TEXT_NAME, calibration_windows, default_texts, tokenize
    from dsnot_kernels.models import EMBEDDED_NAME, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tokenizer, _ = load_model()
    load_s = time.perf_counter() - t0
    cal_text, eval_text = default_texts()
    calib = calibration_windows(tokenize(tokenizer, cal_text), args.nsamples, args.seqlen, seed=0)
    eval_ids = tokenize(tokenizer, eval_text)
    key = f"{args.nsamples}x{args.seqlen}"
    entry = data["setups"].setdefault(key, {"setup": {}, "runs": {}})
    setup = {"model": EMBEDDED_NAME, "nsamples": args.nsamples, "seqlen": args.seqlen, "calibration": f"{args.nsamples} x {args.seqlen} tokens, random windows "
             f"(seed 0) of {DEFAULT_TEXT_NAME}, first half", "evaluation": f"first {args.eval_windows} "
             f"windows x {args.eval_seqlen} tokens of {DEFAULT_TEXT_NAME}, second half",
             "eval_tokens": args.eval_windows * args.eval_seqlen, "batch_size": args.batch_size,
             "torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads(),
             "model_load_s": load_s, "note": "2 shared CPU cores, other jobs running: times are indicative"}
    if entry["setup"] and any(entry["setup"].get(k) != setup[k] for k in ("calibration", "evaluation")):
        raise SystemExit(f"{args.out} holds {key} runs with another setup; move it away first")
    entry["setup"] = {**entry["setup"], **setup}
    runs = entry["runs"]
    by_label = {p[0]: p for p in PATTERNS}
    patterns = [by_label[name] for name in args.patterns.split(",")]  # in the order given
    wanted = set(args.methods.split(","))
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}

    def ppl():
        t = time.perf_counter()
        value = dk.perplexity(model, eval_ids, args.eval_seqlen, max_windows=args.eval_windows)
        return value, time.perf_counter() - t

    if "dense" not in runs:
        value, dt = ppl()
        runs["dense"] = {"ppl": value, "eval_time_s": dt}
        save(data, args.out)
        print(f"dense: {value:.3f} ({dt:.0f} s eval)", flush=True)
    for methods in ROUNDS:
        for label, sparsity, pattern in patterns:
            for method in [m for m in methods if m in wanted]:
                run_key = f"{method}@{label}"
                if run_key in runs:
                    continue
                model.load_state_dict(dense_state)
                # objectives "cov" and "cov_window": the "cpu" kernel when built, else the reference
                backend = args.backend or dk.available_backends("cpu")[0]
                cfg = dk.PruneConfig(**{"sparsity": sparsity, "pattern": pattern, "initial": "wanda",
                                        "batch_size": args.batch_size, "backend": backend, "progress": False,
                                        **METHODS[method]})
                report = dk.prune_model(model, calib, cfg)
                value, dt = ppl()
                runs[run_key] = {
                    "ppl": value, "method": method, "pattern": pattern, "sparsity": sparsity,
                    "config": cfg.to_dict(), "backend": backend, "reached_sparsity": report["sparsity"],
                    "swaps": report["swaps"], "prune_time_s": report["total_time_s"],
                    "block_sparsity": [b["sparsity"] for b in report["block_sparsity"]],
                    "sparsity_profile": report.get("sparsity_profile"),
                    "mask_time_s": report["mask_time_s"], "forward_time_s": report["forward_time_s"],
                    "stats_time_s": report["stats_time_s"], "eval_time_s": dt}
                if cfg.initial == "sparsegpt" or cfg.reconstruct:
                    recs = [e["reconstruct"] for e in report["sublayers"] if "reconstruct" in e]
                    runs[run_key].update(
                        reconstruct_time_s=report["reconstruct_time_s"],
                        reconstruct_not_converged=report["reconstruct_not_converged"],
                        reconstruct_max_iterations=max((r["iterations"] for r in recs), default=0),
                        reconstruct_mean_iterations=sum(r["iterations"] for r in recs) / max(len(recs), 1),
                        reconstruct_max_rel_residual=max((r["max_rel_residual"] for r in recs), default=0.0),
                        reconstruct_max_rel_decrease=max((r.get("max_rel_decrease", 0.0) for r in recs), default=0.0),
                        reconstruct_rows_reverted=sum(r["rows_reverted"] for r in recs),
                        sparsegpt_time_s=sum(e.get("sparsegpt_time_s", 0.0) for e in report["sublayers"]))
                save(data, args.out)
                print(f"{run_key}: ppl {value:.3f}, prune {report['total_time_s']:.0f} s "
                      f"(masks {report['mask_time_s']:.1f} s), {report['swaps']} swaps", flush=True)
    print(table(data, key))


if __name__ == "__main__":
    main()
