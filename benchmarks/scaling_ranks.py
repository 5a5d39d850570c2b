"""Whole-model prune of the embedded model on 1 and 2 processes (torch.distributed, gloo, 127.0.0.1)
and an estimate, from the measured split, of LLaMA-2-70B on 8 GPUs against 1 (issue #20).

    python benchmarks/scaling_ranks.py [--ranks 1,2 --nsamples 16 --seqlen 256 --threads 1] [--write]

Each world size launches that many worker processes (this script with ``--worker``), each loading
the embedded SmolLM2-135M-Instruct and pruning it with ``prune_model``; the table gives the slowest
rank's split into capture, forward passes, statistics (local hooks), reduction (the statistics'
all-gather and the second-moment chain, plus the mask all-gather) and masks, and checks that every
world size gives the same pruned weights (a hash of rank 0's state).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

CASES = {"dsnot": dict(), "cov_window, skip none": dict(objective="cov_window", skip="none")}


def worker(args):
    import datetime

    import torch.distributed as dist

    import dsnot_kernels as dk
    from dsnot_kernels.data import calibration_windows, load_texts, tokenize
    from dsnot_kernels.models import load_model
    torch.set_num_threads(args.threads)
    if int(os.environ["WORLD_SIZE"]) > 1:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=900))
    model, tokenizer, _ = load_model(None)
    calib = calibration_windows(tokenize(tokenizer, load_texts()[0]), args.nsamples, args.seqlen, 0)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    out = {}
    for name, kw in CASES.items():
        model.load_state_dict(dense)
        report = dk.prune_model(model, calib, dk.PruneConfig(batch_size=args.batch_size, progress=False, **kw))
        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(v.numpy().tobytes())
        gather = sum(e.get("gather_time_s", 0.0) for e in report["sublayers"])
        out[name] = {"total": report["total_time_s"], "capture": report["capture_time_s"],
                     "forward": report["forward_time_s"], "statistics": report["stats_time_s"],
                     "reduce": report.get("reduce_time_s", 0.0) + gather,
                     "masks": report["mask_time_s"], "hash": h.hexdigest()[:16]}
    with open(os.path.join(args.out, f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(out, f)
    if dist.is_initialized():
        dist.destroy_process_group()


def launch(world, args, out):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(world):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS=str(args.threads),
                   PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", "--out", out,
                                       "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
                                       "--batch-size", str(args.batch_size), "--threads", str(args.threads)],
                                      env=env))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a worker of world size {world} failed (exit {p.returncode})")
    return [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(world)]


# --- the LLaMA-2-70B estimate ----------------------------------------------------------------------
# Shapes: 80 blocks, hidden 8192, intermediate 28672, 64 query heads and 8 key/value heads of 128.
# Calibration: the authors' 128 samples x 2048 tokens. Assumed device figures (stated, not measured):
GPU = {"bf16_flops": 400e12,   # sustained dense bf16 matmul, H100-class (forward passes)
       "fp32_flops": 50e12,    # fp32 matmul without TF32 (the float32 statistics' second moment)
       "link_Bps": 150e9,      # NVLink all-gather / send bandwidth per GPU
       "h2d_Bps": 25e9}        # host -> device (layer streaming), per GPU, not shared


def estimate_70b(measured_mask_share: float, world: int, need_m: bool) -> dict:
    """Seconds per stage for one prune of LLaMA-2-70B on ``world`` GPUs (one process per GPU)."""
    d, f, kv, blocks, S, T = 8192, 28672, 1024, 80, 128, 2048
    params = 2 * d * d + 2 * d * kv + 3 * d * f            # per block
    tokens = S * T
    forward = blocks * 2 * (2 * params * tokens + 4 * T * d * tokens) / GPU["bf16_flops"] / world
    cols = [d, d, d, f]                                     # distinct inputs: qkv, o, gate/up, down
    stats_vec = blocks * tokens * sum(cols) * 4 * 4 / 2e12 / world   # 4 reductions, memory-bound at 2 TB/s
    m_products = blocks * sum(2 * c * c * T for c in cols) * S / GPU["fp32_flops"] / world if need_m else 0.0
    # all-gather of 4 moment vectors per sample and input; the M chain: world - 1 sends + 1 broadcast
    reduce = blocks * (S * 4 * sum(cols) * 4 / GPU["link_Bps"])
    if need_m and world > 1:
        reduce += blocks * world * sum(c * c * 4 for c in cols) / GPU["link_Bps"]
    streaming = blocks * params * 2 / GPU["h2d_Bps"]        # every rank loads every block (bf16)
    masks = measured_mask_share * forward                   # the measured share of the forward time; rows split
    reduce += blocks * params / 8 / GPU["link_Bps"] if world > 1 else 0.0  # mask all-gather (bits)
    parts = {"forward": forward, "statistics": stats_vec + m_products, "reduce": reduce if world > 1 else 0.0,
             "masks": masks, "streaming": streaming}
    parts["total"] = sum(parts.values())
    return parts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", default="1,2")
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    rows, hashes = [], {}
    for world in [int(w) for w in args.ranks.split(",")]:
        with tempfile.TemporaryDirectory() as out:
            ranks = launch(world, args, out)
        for name in CASES:
            slow = max(ranks, key=lambda r: r[name]["total"])[name]
            hashes.setdefault(name, set()).update(r[name]["hash"] for r in ranks)
            rows.append((name, world, slow))
            print(name, world, json.dumps(slow), flush=True)
    same = {name: len(h) == 1 for name, h in hashes.items()}
    base = {name: next(s for n, w, s in rows if n == name and w == 1) for name in CASES}
    lines = ["| prune | ranks | total s | capture s | forward s | statistics s | reduction s | masks s | "
             "speed-up | pruned weights = 1 rank |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, world, s in rows:
        lines.append(f"| {name} | {world} | {s['total']:.1f} | {s['capture']:.1f} | {s['forward']:.1f} | "
                     f"{s['statistics']:.1f} | {s['reduce']:.2f} | {s['masks']:.2f} | "
                     f"{base[name]['total'] / s['total']:.2f}x | {'yes' if same[name] else 'NO'} |")
    share = {name: base[name]["masks"] / base[name]["forward"] for name in CASES}
    est = ["", "Estimate for LLaMA-2-70B (not measured; `estimate_70b` in the script): 128 x 2048 calibration "
           "tokens, bf16 forward passes at 400 TFLOP/s, the float32 second moment at 50 TFLOP/s, 150 GB/s "
           "links, 25 GB/s layer streaming per GPU (every rank streams every block), masks taking the "
           "same share of the forward time as measured above.", "",
           "| prune | GPUs | forward s | statistics s | reduction s | masks s | streaming s | total s | speed-up |",
           "|---|---|---|---|---|---|---|---|---|"]
    for name in CASES:
        need_m = "cov" in name
        one = estimate_70b(share[name], 1, need_m)
        for world in (1, 8):
            e = estimate_70b(share[name], world, need_m)
            est.append(f"| {name} | {world} | {e['forward']:.0f} | {e['statistics']:.0f} | {e['reduce']:.1f} | "
                       f"{e['masks']:.1f} | {e['streaming']:.0f} | {e['total']:.0f} | "
                       f"{one['total'] / e['total']:.1f}x |")
    from _common import command_line, machine, write_section
    body = (f"2026-12-01, 2-core CPU, shared ({machine()}), every process at {args.threads} thread(s), "
            f"{args.nsamples} x {args.seqlen} calibration tokens, batch {args.batch_size}. Command: "
            f"`{command_line('benchmarks/scaling_ranks.py', argv)}`\n\n" + "\n".join(lines + est))
    print(body)
    if args.write:
        write_section("scaling-ranks", "Pruning on several processes (torch.distributed)", body)


if __name__ == "__main__":
    main()
