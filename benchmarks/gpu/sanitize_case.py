"""A few small refine_mask calls for compute-sanitizer (memcheck / racecheck) in gpu_check.sh.

    compute-sanitizer --tool memcheck python benchmarks/gpu/sanitize_case.py --backend cuda

Covers the kernel's paths on small inputs: unstructured with list refills (many cycles, threshold
0), N:M, the mse objective, an initial mask, an odd row length (unaligned rows), fp32/fp16/bf16.
Exits 1 if a mask differs from the reference (computed by the same process).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import dsnot_kernels as dk  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--small", action="store_true", help="fewer, smaller cases (racecheck is slow)")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only to test this script")
    ap.add_argument("--cov", action="store_true", help="objectives cov and cov_window (second moment M)")
    args = ap.parse_args()
    dev = args.device
    if args.cov:
        return cov_cases(args.backend, dev)
    cases = [
        (48, 1000, torch.float16, dict(max_cycle_time=200, update_threshold=0.0)),
        (16, 1024, torch.bfloat16, dict(prune_n=2, prune_m=4, update_threshold=0.0)),
        (16, 515, torch.float32, dict(objective="mse", update_threshold=0.0, max_cycle_time=100)),
        (8, 4099, torch.float16, dict(sparsity=0.7)),
        (8, 640, torch.float32, dict(initial_mask=True, update_threshold=0.0)),
    ]
    if args.small:
        cases = [(8, 700, torch.float16, dict(max_cycle_time=150, update_threshold=0.0)),
                 (8, 512, torch.bfloat16, dict(prune_n=2, prune_m=4, update_threshold=0.0))]
    bad = 0
    for rows, cols, dtype, kw in cases:
        g = torch.Generator().manual_seed(rows * cols)
        w = torch.randn(rows, cols, generator=g).to(dtype).to(dev)
        smr, var, scaler, mean = (torch.randn(cols, generator=g).to(dev), (torch.rand(cols, generator=g) + 0.05).to(dev),
                                  torch.rand(cols, generator=g).to(dev), torch.randn(cols, generator=g).to(dev))
        kw = dict(kw)
        if kw.get("objective") == "mse":
            kw["mean"] = mean
        if kw.pop("initial_mask", False):
            kw["initial_mask"] = torch.rand(rows, cols, generator=g).to(dev) < 0.5
        mask, swaps = dk.refine_mask(w, smr, var, scaler, backend=args.backend, return_swaps=True, **kw)
        ref, ref_swaps = dk.refine_mask(w, smr, var, scaler, backend="torch", return_swaps=True, **kw)
        ok = torch.equal(mask, ref) and torch.equal(swaps, ref_swaps)
        bad += not ok
        print(f"{args.backend} {rows}x{cols} {dtype} {sorted(kw)}: {'ok' if ok else 'MISMATCH'}", flush=True)
    if dev == "cuda":
        torch.cuda.synchronize()
    return 1 if bad else 0


def cov_cases(backend, dev):
    """Objectives cov / cov_window / swap: odd widths, windows past the list ends, M float32 and float64."""
    bad = 0
    for rows, cols, dtype, kw in [(8, 515, torch.float16, dict(objective="cov", update_threshold=0.0)),
                                  (8, 700, torch.bfloat16, dict(objective="cov_window", window=100)),
                                  (8, 512, torch.float32, dict(objective="cov_window", window=7, prune_n=2, prune_m=4)),
                                  (4, 48, torch.float16, dict(objective="cov_window", window=100, update_threshold=0.0)),
                                  (4, 301, torch.float16, dict(objective="swap", max_cycle_time=20)),
                                  (4, 256, torch.bfloat16, dict(objective="swap", prune_n=2, prune_m=4))]:
        g = torch.Generator().manual_seed(rows * cols)
        x = torch.randn(64, cols, generator=g)
        M = (x.t() @ x).to(torch.float64 if dtype == torch.float32 else torch.float32).to(dev)
        w = (0.05 * torch.randn(rows, cols, generator=g)).to(dtype).to(dev)
        stats = (x.mean(0).to(dev), x.var(0).to(dev), (x * x).mean(0).to(dev))
        args = (w, stats[0] * 64, stats[1], stats[2])
        mask, swaps = dk.refine_mask(*args, backend=backend, return_swaps=True, second_moment=M, **kw)
        ref, ref_swaps = dk.refine_mask(*args, backend="torch", return_swaps=True, second_moment=M, **kw)
        ok = torch.equal(mask, ref) and torch.equal(swaps, ref_swaps)
        bad += not ok
        print(f"{backend} {rows}x{cols} {dtype} {kw}: {'ok' if ok else 'MISMATCH'}", flush=True)
    if dev == "cuda":
        torch.cuda.synchronize()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
