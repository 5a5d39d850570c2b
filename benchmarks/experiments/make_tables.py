"""Print the markdown tables of RESULTS_objective_variants.md from layer_check.json and
ppl_objective_variants.json. Run: python benchmarks/experiments/make_tables.py"""
import json
from pathlib import Path
HERE = Path(__file__).resolve().parent
L = json.loads((HERE / "layer_check.json").read_text())["rows"]
meths = ["wanda", "dsnot", "mse", "B", "C", "BC", "B50", "BC50"]
print("### Layer level: output MSE relative to Wanda (dense-model inputs)\n")
print("| block | sub-layer | setting | Wanda MSE | " + " | ".join(meths[1:]) + " |")
print("|---|---|---|---|" + "---|" * (len(meths) - 1))
for r in L:
    w = r["wanda"]["mse"]
    print(f"| {r['block']} | {r['name']} | {r['setting']} | {w:.4g} | " + " | ".join(f"{r[m]['mse']/w:.3f}" for m in meths[1:]) + " |")
import math
print("\n| geometric mean over the rows above, per setting | " + " | ".join(meths[1:]) + " |")
print("|---|" + "---|" * (len(meths) - 1))
for s in ["60%", "70%", "2:4"]:
    rows = [r for r in L if r["setting"] == s]
    print(f"| {s} | " + " | ".join(f"{math.exp(sum(math.log(r[m]['mse']/r['wanda']['mse']) for r in rows)/len(rows)):.3f}" for m in meths[1:]) + " |")
print("\n| mean time per sub-layer call (s), 1 thread | " + " | ".join(meths) + " |")
print("|---|" + "---|" * len(meths))
for s in ["60%", "70%", "2:4"]:
    rows = [r for r in L if r["setting"] == s]
    print(f"| {s} | " + " | ".join(f"{sum(r[m]['time_s'] for r in rows)/len(rows):.2f}" for m in meths) + " |")
inc = {m: sum(r[m]["own"]["rows_increased"] for r in L) for m in ["mse_proto", "B", "C", "BC", "B50", "BC50"]}
inc["mse (package)"] = sum(r["mse"]["rows_increased_diag"] for r in L)
drift = max(r[m]["own"]["max_track_drift_rel"] for r in L for m in ["mse_proto", "B", "C", "BC", "B50", "BC50"])
print(f"\nRows whose own-model loss increased (final vs initial mask, recomputed in float64), all 27 cases: {inc}; "
      f"max |tracked sum of deltas - recomputed change| / max L0: {drift:.1e}; prototype mse == package mse in "
      f"{sum(r['proto_equals_pkg_mse'] for r in L)}/{len(L)} cases.")

P = HERE / "ppl_objective_variants.json"
if P.exists():
    D = json.loads(P.read_text())["runs"]
    order = ["50%", "60%", "70%", "2:4"]
    print(f"\n### End to end: held-out perplexity (pruning wall time, of which mask time)\n\ndense: {D['dense']['ppl']:.2f}\n")
    print("| method | " + " | ".join(order) + " |")
    print("|---|" + "---|" * len(order))
    for m in ["wanda", "mse", "C", "BC50", "B", "BC", "BC16"]:
        cells = []
        for p in order:
            r = D.get(f"{m}@{p}")
            cells.append("–" if r is None else f"{r['ppl']:.2f} ({r['prune_time_s']:.0f} s; masks {r['mask_time_s']:.1f} s; stats {r['stats_time_s']:.0f} s)")
        if any(c != "–" for c in cells):
            print(f"| {m} | " + " | ".join(cells) + " |")
    print("\nOwn-model check over all refined sub-layers (prototypes): " + "; ".join(
        f"{k}: rows increased {v['own_loss_rows_increased']}, L {v['own_loss_L0']:.4g} -> {v['own_loss_L1']:.4g}"
        for k, v in D.items() if v.get("own_loss_rows_increased") is not None))
