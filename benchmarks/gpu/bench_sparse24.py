"""2:4 semi-structured sparse vs dense linear layers on a GPU (LLaMA shapes, fp16/bf16, prefill-
and decode-sized inputs). Part of benchmarks/gpu_check.sh.

    python benchmarks/gpu/bench_sparse24.py --out /tmp/gpu_check/sparse24.json [--dry-run]

Uses torch.sparse.to_sparse_semi_structured; on Hopper only the cuSPARSELt backend serves, so
SparseSemiStructuredTensor._FORCE_CUTLASS is set to False. Each case reports dense and sparse
median times (CUDA events), the speedup (dense / sparse, below 1 = sparse is slower) and the
relative error of the sparse product against the dense product of the same 2:4-pruned weight.
Cases that fail (unsupported shape, dtype or backend) are recorded with the error, not hidden.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (4096, 14336), (28672, 8192)]  # (out, in)
TOKENS = {"decode": 16, "prefill": 4096}


def median_time(fn, reps=30):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return statistics.median(ts)


def prune_24(w):
    """Keep the 2 largest magnitudes of every 4 consecutive inputs."""
    g = w.view(w.shape[0], -1, 4)
    idx = g.abs().argsort(dim=-1)[..., :2]
    return g.scatter(-1, idx, 0).view_as(w)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--deadline", type=float, default=float(os.environ.get("BENCH_DEADLINE", "0")) or None)
    args = ap.parse_args(argv)
    out = {"cases": [], "skipped": []}
    if not torch.cuda.is_available():
        out["skipped"].append("no CUDA device: nothing to measure")
        json.dump(out, open(args.out, "w"), indent=1)
        print("sparse24: no CUDA device, skipped")
        return 0
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = False  # cuSPARSELt (the only backend on sm_90)
    out["device"] = torch.cuda.get_device_name()
    out["torch"] = torch.__version__
    out["backend"] = "cuSPARSELt (_FORCE_CUTLASS = False)"
    shapes = SHAPES[:1] if args.dry_run else SHAPES
    for dtype in (torch.float16, torch.bfloat16):
        for n_out, n_in in shapes:
            for phase, tokens in TOKENS.items():
                if args.deadline and time.time() > args.deadline:
                    out["skipped"].append(f"{n_out}x{n_in} {dtype} {phase}: deadline")
                    continue
                case = {"shape": f"{n_out}x{n_in}", "dtype": str(dtype).split(".")[-1], "phase": phase, "tokens": tokens}
                try:
                    torch.manual_seed(0)
                    w = prune_24(torch.randn(n_out, n_in, device="cuda", dtype=dtype) * 0.02)
                    x = torch.randn(tokens, n_in, device="cuda", dtype=dtype)
                    ws = to_sparse_semi_structured(w)
                    dense = F.linear(x, w)
                    sparse = F.linear(x, ws)
                    case["rel_err"] = float((sparse.float() - dense.float()).norm() / dense.float().norm())
                    case["dense_s"] = median_time(lambda: F.linear(x, w))
                    case["sparse_s"] = median_time(lambda: F.linear(x, ws))
                    case["speedup"] = case["dense_s"] / case["sparse_s"]
                    case["sparse_slower"] = case["speedup"] < 1.0
                    flops = 2 * tokens * n_out * n_in
                    case["dense_TFLOPs"] = flops / case["dense_s"] / 1e12
                    del w, x, ws, dense, sparse
                except Exception as exc:
                    case["error"] = f"{type(exc).__name__}: {exc}"[:300]
                out["cases"].append(case)
                json.dump(out, open(args.out, "w"), indent=1)
                msg = case.get("error") or f"dense {case['dense_s'] * 1e6:.1f}us sparse {case['sparse_s'] * 1e6:.1f}us x{case['speedup']:.2f}"
                print(f"sparse24 {case['shape']} {case['dtype']} {phase}: {msg}", flush=True)
    json.dump(out, open(args.out, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
