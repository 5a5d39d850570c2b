"""End-to-end held-out perplexity of the embedded model with swap rules for objective "mse".

Setup = README / benchmarks/perplexity_table.py with --nsamples 32 --seqlen 512 (4 x 512 eval
tokens, batch 8, skip="none", wanda initial mask, 50 cycles, threshold 0.1), 1 thread.
Methods: wanda (refine=False), mse (the package's objective "mse", cpu backend, unpatched driver),
and prototypes from objective_variants.VARIANTS substituted per sub-layer into the package's driver.
Resumes: runs already in the JSON are skipped.
Run: OMP_NUM_THREADS=1 python benchmarks/experiments/run_ppl.py --methods wanda,mse,C --patterns 70%,60%
"""
import argparse, json, os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
torch.set_num_threads(1)
import dsnot_kernels as dk
import _harness as H

OUT = Path(__file__).resolve().parent / "ppl_objective_variants.json"
PATTERNS = {"50%": (0.5, "unstructured"), "60%": (0.6, "unstructured"), "70%": (0.7, "unstructured"),
            "2:4": (0.5, "2:4")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="wanda,mse,C")
    ap.add_argument("--patterns", default="70%,60%,50%,2:4")
    ap.add_argument("--order", default="pattern", choices=["pattern", "method"])
    args = ap.parse_args()
    data = json.loads(OUT.read_text()) if OUT.exists() else {"setup": {}, "runs": {}}
    model, calib, eval_ids, load_s = H.setup()
    data["setup"] = {"calibration": f"{H.NSAMPLES} x {H.SEQLEN} tokens, random windows (seed 0), pydoc_data.topics first half",
                     "evaluation": f"first {H.EVAL_WINDOWS} x {H.EVAL_SEQLEN} tokens, second half", "batch_size": H.BATCH,
                     "threads": torch.get_num_threads(), "torch": torch.__version__, "model_load_s": load_s,
                     "note": "2 CPU cores, the other one busy with another job; times indicative"}
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    if "dense" not in data["runs"]:
        data["runs"]["dense"] = {"ppl": H.ppl(model, eval_ids)}
    methods, patterns = args.methods.split(","), args.patterns.split(",")
    pairs = [(m, p) for p in patterns for m in methods] if args.order == "pattern" else \
        [(m, p) for m in methods for p in patterns]
    for method, pat in pairs:
        key = f"{method}@{pat}"
        if key in data["runs"]:
            continue
        sparsity, pattern = PATTERNS[pat]
        model.load_state_dict(dense)
        over = dict(refine=False) if method == "wanda" else dict(refine=True, skip="none", objective="mse")
        backend = dk.available_backends("cpu")[0]
        cfg = dk.PruneConfig(sparsity=sparsity, pattern=pattern, initial="wanda", batch_size=H.BATCH,
                             backend=backend, progress=False, **over)
        variant = None if method in ("wanda", "mse") else method
        H.install(variant, hessian=variant is not None and H.VARIANTS[variant][0] == "cov")
        try:
            report = dk.prune_model(model, calib, cfg)
        finally:
            H.install(None)
        t = time.perf_counter()
        value = H.ppl(model, eval_ids)
        own = [e["own_loss"] for e in report["sublayers"] if "own_loss" in e]
        data["runs"][key] = {
            "ppl": value, "method": method, "pattern": pat, "reached_sparsity": report["sparsity"],
            "swaps": report["swaps"], "prune_time_s": report["total_time_s"], "mask_time_s": report["mask_time_s"],
            "stats_time_s": report["stats_time_s"], "forward_time_s": report["forward_time_s"],
            "eval_time_s": time.perf_counter() - t, "backend": backend if variant is None else "prototype (torch)",
            "own_loss_rows_increased": sum(o["rows_increased"] for o in own) if own else None,
            "own_loss_L0": sum(o["L0"] for o in own) if own else None,
            "own_loss_L1": sum(o["L1"] for o in own) if own else None,
            "max_track_drift_rel": max(o["max_track_drift_rel"] for o in own) if own else None}
        tmp = OUT.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, OUT)
        r = data["runs"][key]
        print(f"{key}: ppl {value:.3f} prune {r['prune_time_s']:.0f}s masks {r['mask_time_s']:.1f}s "
              f"stats {r['stats_time_s']:.1f}s swaps {r['swaps']} rows_inc {r['own_loss_rows_increased']}", flush=True)


if __name__ == "__main__":
    main()
