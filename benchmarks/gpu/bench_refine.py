"""refine_mask on a GPU: the reference ("torch" on the GPU) vs "triton" vs "cuda", against the
memory-bandwidth floor; plus a scaling-in-columns run. Part of benchmarks/gpu_check.sh.

    python benchmarks/gpu/bench_refine.py --out /tmp/gpu_check/refine.json [--quick] [--dry-run]

Floor of one call = (one read of W + the three statistics + one write of the bool mask) / the copy
bandwidth measured here (a large device-to-device copy, bytes read + bytes written). Each timing is
the median of CUDA-event-timed calls after a warm-up; inputs rotate among copies of W when W is
small enough to stay in L2. Every timed backend's masks are also compared with the reference's.
``--dry-run`` runs tiny shapes on whatever device there is (the CPU here), to test the script.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # benchmarks/
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # repo root

import dsnot_kernels as dk  # noqa: E402
from _common import synthetic_layer  # noqa: E402

LLAMA = [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (4096, 14336), (8192, 28672)]
PATTERNS = [("50%", dict(sparsity=0.5)), ("60%", dict(sparsity=0.6)), ("70%", dict(sparsity=0.7)),
            ("2:4", dict(prune_n=2, prune_m=4))]
SCALING_COLS = [512, 1024, 2048, 4096, 8192, 16384, 32768]


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, dev, budget_s=1.0, min_reps=3, max_reps=50):
    """Median seconds of fn() after one warm-up; the repeat count fits the time budget."""
    fn()
    sync(dev)
    t0 = time.perf_counter()
    fn()
    sync(dev)
    first = time.perf_counter() - t0
    reps = int(max(min_reps, min(max_reps, budget_s / max(first, 1e-6))))
    times = []
    for _ in range(reps):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), reps


def copy_bandwidth(dev, nbytes=2 << 30):
    """Bytes/s of a device-to-device copy, counting bytes read + bytes written (median)."""
    n = nbytes // 4
    src = torch.randn(n, device=dev)
    dst = torch.empty_like(src)
    t, _ = time_fn(lambda: dst.copy_(src), dev, budget_s=0.5, min_reps=5, max_reps=30)
    del src, dst
    return 2 * nbytes / t


def floor_bytes(rows, cols, elem):
    return rows * cols * elem + 3 * cols * 4 + rows * cols  # W read, smr/var/scaler, bool mask


def layer(rows, cols, dtype, dev, seed=0):
    _, stats = synthetic_layer(1, cols, seed=seed)  # LLM-like statistics (means, outlier channels)
    g = torch.Generator(device=dev).manual_seed(seed)
    w = (0.02 * torch.randn(rows, cols, generator=g, device=dev)).to(dtype)
    return w, stats.sum_metric_row.to(dev), stats.var.to(dev), stats.scaler_row.to(dev)


def bench_case(rows, cols, pattern, kw, backends, dtype, dev, bw, budget_s, log):
    w, smr, var, scaler = layer(rows, cols, dtype, dev)
    nbytes = w.numel() * w.element_size()
    copies = [w] + [w.clone() for _ in range(min(3, math.ceil(200e6 / nbytes)) - 1)] if dev.type == "cuda" else [w]
    state = {"i": 0}
    results = {}

    def run(name):
        ww = copies[state["i"] % len(copies)]
        state["i"] += 1
        return dk.refine_mask(ww, smr, var, scaler, backend=name, return_swaps=True, **kw)

    ref = None
    for name in backends:
        row = {"shape": f"{rows}x{cols}", "rows": rows, "cols": cols, "pattern": pattern, "dtype": str(dtype).split(".")[-1],
               "backend": name}
        try:
            mask, swaps = dk.refine_mask(w, smr, var, scaler, backend=name, return_swaps=True, **kw)
            if name == "torch":
                ref = (mask, swaps)
            elif ref is not None:
                row["mask_equal"] = bool(torch.equal(mask, ref[0]))
                row["swaps_equal"] = bool(torch.equal(swaps, ref[1]))
            row["mean_swaps"] = float(swaps.float().mean())
            # The reference is slow and only the denominator of a ~100x ratio: fewer repeats.
            t, reps = time_fn(lambda: run(name), dev, budget_s=budget_s / 2 if name == "torch" else budget_s,
                              min_reps=2 if name == "torch" else 3)
            row.update(seconds=t, reps=reps)
        except Exception as exc:  # one backend failing must not stop the others
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
            log(traceback.format_exc())
        results[name] = row
    floor = floor_bytes(rows, cols, w.element_size()) / bw if bw else None
    t_ref = results.get("torch", {}).get("seconds")
    for row in results.values():
        row["floor_seconds"] = floor
        t = row.get("seconds")
        if t:
            row["x_floor"] = t / floor if floor else None
            row["speedup_vs_torch"] = t_ref / t if t_ref else None
    del copies, w
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return list(results.values())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the available device")
    ap.add_argument("--quick", action="store_true", help="fewer shapes (the first three LLaMA shapes)")
    ap.add_argument("--backends", default="torch,triton,cuda")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--deadline", type=float, default=float(os.environ.get("BENCH_DEADLINE", "0")) or None,
                    help="unix time after which no new case starts")
    ap.add_argument("--skip-scaling", action="store_true")
    args = ap.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    wanted = args.backends.split(",")
    if args.dry_run and dev.type == "cpu":
        wanted.append("cpu")  # exercise the comparison paths with the compiled CPU backend
    backends = [b for b in wanted if b in dk.available_backends(dev)]
    if "torch" in args.backends.split(",") and "torch" not in backends:
        backends.insert(0, "torch")
    logf = open(args.out + ".log", "w")

    def log(msg):
        print(msg, file=logf, flush=True)

    out = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
           "torch": torch.__version__, "backends": backends, "dtype": args.dtype, "cases": [], "scaling": [],
           "skipped": []}
    try:
        import triton
        out["triton"] = triton.__version__
    except Exception:
        pass
    shapes = [(64, 256), (48, 1000)] if args.dry_run else (LLAMA[:3] if args.quick else LLAMA)
    bw = copy_bandwidth(dev, nbytes=(64 << 20) if args.dry_run else (2 << 30))
    out["copy_bandwidth_GBps"] = bw / 1e9
    print(f"device {out['device']}  copy bandwidth {bw / 1e9:.0f} GB/s  backends {backends}", flush=True)
    budget = 0.05 if args.dry_run else 0.6

    def expired():
        return args.deadline is not None and time.time() > args.deadline

    def flush():
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)

    for rows, cols in shapes:
        for pname, kw in PATTERNS:
            if expired():
                out["skipped"].append(f"{rows}x{cols} {pname}: deadline")
                continue
            rows_out = bench_case(rows, cols, pname, kw, backends, dtype, dev, bw, budget, log)
            out["cases"].extend(rows_out)
            flush()
            line = "  ".join(f"{r['backend']}={r.get('seconds', float('nan')) * 1e3:.3f}ms"
                             + ("" if r.get("mask_equal", True) else "(MISMATCH)") for r in rows_out)
            print(f"{rows}x{cols} {pname}: {line}", flush=True)
    # Shared-memory layouts of the CUDA kernel (DSNOT_KERNELS_CUDA_LAYOUT, read at each call):
    # 0 = key cache + staged row, 1 = key cache, 2 = staged row, 3 = neither; auto = the launcher's pick.
    sweep = "cuda" if "cuda" in backends else ("cpu" if args.dry_run and "cpu" in backends else None)
    if sweep is not None:
        for rows, cols in ([(32, 512)] if args.dry_run else [(4096, 4096), (4096, 11008), (8192, 28672)]):
            if expired():
                out["skipped"].append(f"layout sweep {rows}x{cols}: deadline")
                continue
            w, smr, var, scaler = layer(rows, cols, dtype, dev)
            ref = dk.refine_mask(w, smr, var, scaler, backend=sweep, sparsity=0.5)
            for layout in ["auto", "0", "1", "2", "3"]:
                rec = {"shape": f"{rows}x{cols}", "layout": layout, "backend": sweep}
                try:
                    if layout == "auto":
                        os.environ.pop("DSNOT_KERNELS_CUDA_LAYOUT", None)
                    else:
                        os.environ["DSNOT_KERNELS_CUDA_LAYOUT"] = layout
                    m = dk.refine_mask(w, smr, var, scaler, backend=sweep, sparsity=0.5)
                    rec["mask_equal_auto"] = bool(torch.equal(m, ref))
                    rec["seconds"], rec["reps"] = time_fn(
                        lambda: dk.refine_mask(w, smr, var, scaler, backend=sweep, sparsity=0.5), dev, budget_s=0.3)
                except Exception as exc:
                    rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
                finally:
                    os.environ.pop("DSNOT_KERNELS_CUDA_LAYOUT", None)
                out.setdefault("layout_sweep", []).append(rec)
            flush()
            print(f"layouts {rows}x{cols}: " + "  ".join(
                f"{r['layout']}={r.get('seconds', float('nan')) * 1e3:.3f}ms" for r in out["layout_sweep"][-5:]), flush=True)
            del w
    if not args.skip_scaling:
        srows = 64 if args.dry_run else 4096
        scols = [256, 512] if args.dry_run else SCALING_COLS
        fast = [b for b in backends if b != "torch"]
        for cols in scols:
            if expired():
                out["skipped"].append(f"scaling {srows}x{cols}: deadline")
                continue
            rows_out = bench_case(srows, cols, "50%", dict(sparsity=0.5), fast, dtype, dev, bw, budget, log)
            out["scaling"].extend(rows_out)
            flush()
            print(f"scaling {srows}x{cols}: " + "  ".join(
                f"{r['backend']}={r.get('seconds', float('nan')) * 1e3:.3f}ms" for r in rows_out), flush=True)
    flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
