"""Capture sub-layers (W and stats with hessian) of given blocks of the embedded model, the setup of
docs/RESULTS.md
(`python benchmarks/experiments/capture_layer.py 3 15` writes /tmp/i15b/layer3.pt, layer15.pt:
what `benchmarks/bench_swap.py --captured` reads)
(32 x 512 calibration tokens; earlier blocks pruned with wanda 60 %, no refinement).
Environment: CAPTURE_NSAMPLES, CAPTURE_SEQLEN (e.g. 4 and 64: the small calibration of
benchmarks/bench_reconstruct_small.py) and CAPTURE_DIR (default /tmp/i15b)."""
import os, sys, torch
OUT_DIR = os.environ.get("CAPTURE_DIR", "/tmp/i15b")
os.makedirs(OUT_DIR, exist_ok=True)
sys.path.insert(0, "benchmarks/experiments")
import _harness as H
import dsnot_kernels as dk
from dsnot_kernels.pruning import PruningError
from dsnot_kernels.pruning.adapters import weight_view
torch.set_num_threads(1)
BLOCKS = [int(b) for b in sys.argv[1:]] or [5]
out = {}
seen = {"n": -1}
class Done(Exception): pass
def per(name, module, stats, config):
    if name.endswith("q_proj"):
        seen["n"] += 1
    b = seen["n"]
    if b in BLOCKS:
        out[f"{b}.{name}"] = dict(W=weight_view(module).detach().clone(), smr=stats.sum_metric_row.clone(), var=stats.var.clone(),
                         scaler=stats.scaler_row.clone(), H=stats.hessian.clone())
        print("captured", b, name, tuple(out[f"{b}.{name}"]["W"].shape), flush=True)
        if name.endswith("down_proj"):
            torch.save({k: v for k, v in out.items() if k.startswith(f"{b}.")}, f"{OUT_DIR}/layer{b}.pt")
            if b == max(BLOCKS):
                raise Done()
    return None
H.NSAMPLES = int(os.environ.get("CAPTURE_NSAMPLES", H.NSAMPLES))
H.SEQLEN = int(os.environ.get("CAPTURE_SEQLEN", H.SEQLEN))
model, calib, eval_ids, _ = H.setup()
H.install(variant=None, hessian=True, per_sublayer=per)
cfg = dk.PruneConfig(sparsity=0.6, skip="none", refine=False)
try:
    dk.prune_model(model, calib, cfg)
except PruningError as exc:  # the driver wraps what the hook raised
    if not isinstance(exc.__cause__, Done):
        raise
    print("done")
finally:
    H.install(None)
