"""``prune_model`` across the ranks of an initialised ``torch.distributed`` process group (issue #20).

How the work is split, and why the masks are bit-for-bit those of one process at the same torch
thread count per process:

- **Forward passes.** The calibration is split into batches of ``batch_size`` exactly as one process
  splits it; rank r runs a contiguous share of those batches (so every block call sees the very
  batch tensor one process would, and computes the same numbers). A world larger than the number
  of batches is refused.
- **Statistics.** They are per-sample float32 recurrences (spec §1), whose rounding depends on the
  sample order, so a plain all-reduce would change them. Instead every rank all-gathers the
  per-sample moment vectors (mean, var, sum, squared norm: 4 x (cols,) floats per sample) and
  every rank replays the same recurrence in global sample order. For the (cols, cols) second
  moment M (only where a sub-layer needs it), each rank computes the per-sample products
  ``(sqrt(2/n) x)(sqrt(2/n) x)ᵀ`` of its own samples in parallel (the matmuls, the costly part),
  then the recurrence ``M = M * (n-1)/n + P_n`` runs as a chain: rank 0 over its samples, sends M to
  rank 1, which continues, ...; the last rank broadcasts M. That is the one-process computation
  exactly. Cost: R-1 sequential sends plus one broadcast of cols² floats per shared input, and
  each rank keeps its samples' products (local samples x cols² floats) until the chain passes.
- **Masks.** Rows are independent (the initial selection is per row for every pattern, and the
  §3 refinement and every objective act on one row), so rank r refines a contiguous share of each
  sub-layer's rows; the masks are all-gathered and every rank applies the full masks. Methods that
  couple rows (see ``splits_rows``) are computed in full on every rank instead (same masks, no
  speed-up).

Failure handling: the arguments (config, calibration, batch count) are compared across ranks at
the start; a rank whose collective fails (a peer died or the process group's timeout passed)
raises a ``PruningError`` saying so. The process group's timeout is the caller's (the CLI sets
one, ``DSNOT_DIST_TIMEOUT`` seconds, default 1800).
"""
from __future__ import annotations

import hashlib
import json

import torch

from dsnot_kernels.stats import CalibrationStats, sample_moments, sample_product

# Initial methods whose mask rows depend only on their own weight row (and the shared statistics).
ROW_INDEPENDENT_INITIAL = ("wanda", "magnitude", "sparsegpt_metric")


def world():
    """``(rank, world_size)`` of the default process group, or None when there is none (or one rank)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return dist.get_rank(), dist.get_world_size()


def splits_rows(config) -> bool:
    """Whether each rank may compute only its share of a sub-layer's mask rows."""
    return (config.initial in ROW_INDEPENDENT_INITIAL and not config.record_error
            and not getattr(config, "reconstruct", False))


def share(n: int, rank: int, size: int) -> tuple:
    """Contiguous ``[start, stop)`` share of ``n`` items for ``rank`` of ``size`` (first ranks get one more)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def check_arguments(config, calibration: torch.Tensor, nbatches: int) -> None:
    """Raise ValueError on every rank if the ranks were given different arguments, or too many ranks."""
    import torch.distributed as dist
    rank, size = world()
    cfg = {k: v for k, v in config.to_dict().items() if k != "progress"}
    mine = {"config": hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest(),
            "calibration": [list(calibration.shape),
                            hashlib.sha256(calibration.cpu().contiguous().numpy().tobytes()).hexdigest()]}
    everyone = [None] * size
    dist.all_gather_object(everyone, mine)
    for key in ("config", "calibration"):
        differ = [r for r in range(size) if everyone[r][key] != everyone[0][key]]
        if differ:
            raise ValueError(f"prune_model under torch.distributed: ranks {differ} were given a different "
                             f"{key} than rank 0 (every rank must get the same arguments and calibration)")
    if size > nbatches:
        raise ValueError(f"prune_model under torch.distributed: {size} ranks but only {nbatches} calibration "
                         f"batch(es) ({calibration.shape[0]} samples, batch_size {config.batch_size}); use at "
                         f"most {nbatches} ranks or a smaller batch_size")


class SampleRecorder:
    """Per-sample moments (and second-moment products) of this rank's samples, for ``combine``.

    Duck-types ``CalibrationStats.add_batch``; ``first_sample`` is the global (0-based) index of
    this rank's first sample, so the products carry the one-process scaling ``2/n``.
    """

    def __init__(self, in_features: int, device, hessian: bool, first_sample: int):
        self.in_features, self.device, self.hessian = in_features, torch.device(device), hessian
        self.next_index = first_sample
        self.moments: list = []
        self.products: list = []

    def add_batch(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.in_features or not x.is_floating_point():
            raise ValueError(f"expected (B, T, {self.in_features}) floating inputs, got {tuple(x.shape)} {x.dtype}")
        x = x.detach().to(self.device)
        self.moments.append(sample_moments(x))
        for b in range(x.shape[0]):
            self.next_index += 1
            if self.hessian:
                self.products.append(sample_product(x[b].t().type(torch.float32), self.next_index))


def combine(recorder: SampleRecorder, counts: list) -> CalibrationStats:
    """The one-process ``CalibrationStats`` from every rank's recorder (collective; call on all ranks).

    ``counts[r]`` = samples held by rank r, in global sample order.
    """
    import torch.distributed as dist
    rank, size = world()
    C, dev = recorder.in_features, recorder.device
    cap = max(counts)
    local = torch.zeros((cap, 5, C), dtype=torch.float32, device=dev)
    if recorder.moments:
        keys = ("mean", "var", "sum", "sq_norm")
        stacked = torch.stack([torch.cat([m[k] for m in recorder.moments]) for k in keys], 1)
        nums = torch.cat([m["num"] for m in recorder.moments]).to(torch.float32)
        if stacked.shape[0] != counts[rank]:
            raise RuntimeError(f"rank {rank} recorded {stacked.shape[0]} samples, expected {counts[rank]}")
        local[:counts[rank], :4] = stacked
        local[:counts[rank], 4] = nums[:, None]  # token counts (exact in float32 below 2**24)
    gathered = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(gathered, local)
    stats = CalibrationStats(C, device=dev)
    for r in range(size):
        g = gathered[r][:counts[r]]
        moments = {"mean": g[:, 0], "var": g[:, 1], "sum": g[:, 2], "sq_norm": g[:, 3],
                   "num": g[:, 4, 0].to(torch.int64)}
        for b in range(counts[r]):
            stats.apply_sample(moments, b)
    if recorder.hessian:
        H = torch.zeros((C, C), dtype=torch.float32, device=dev)
        n = sum(counts[:rank])
        if rank > 0:
            dist.recv(H, src=rank - 1)
        for P in recorder.products:  # the exact one-process recurrence, continued from rank - 1
            H *= n / (n + 1)
            n += 1
            H += P
        recorder.products = []
        if rank < size - 1:
            dist.send(H, dst=rank + 1)
        dist.broadcast(H, src=size - 1)
        stats.hessian = H
    return stats


def gather_rows(part: torch.Tensor, rows: int) -> torch.Tensor:
    """All-gather contiguous row shares (rank order) of a (rows, cols) bool mask into the full mask."""
    import torch.distributed as dist
    rank, size = world()
    cap = share(rows, 0, size)[1]
    buf = torch.zeros((cap, part.shape[1]), dtype=torch.uint8, device=part.device)
    buf[:part.shape[0]] = part.to(torch.uint8)
    out = [torch.empty_like(buf) for _ in range(size)]
    dist.all_gather(out, buf)
    pieces = [out[r][:share(rows, r, size)[1] - share(rows, r, size)[0]] for r in range(size)]
    return torch.cat(pieces).bool()


def sum_across(values: list, device) -> list:
    """Element-wise sums over ranks of a few floats (float64)."""
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_finished(device) -> None:
    """Collective at the end of ``prune_model``: no rank returns (and so saves) before every rank got there."""
    import torch.distributed as dist
    t = torch.ones(1, dtype=torch.int64, device=device)
    dist.all_reduce(t)


def init_from_env() -> int:
    """Initialise the default process group from torchrun's environment (``WORLD_SIZE`` > 1).

    gloo on CPU, and NCCL for CUDA tensors where CUDA is available (each rank on ``LOCAL_RANK``).
    The timeout is ``DSNOT_DIST_TIMEOUT`` seconds (default 1800), so a dead rank ends the others.
    Returns this process's rank (0 without torchrun). Does nothing if a group is already set up.
    """
    import datetime
    import os

    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get("DSNOT_DIST_TIMEOUT", "1800")))
        backend = "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            backend = "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend=backend, timeout=timeout)
        _OWN_GROUP.append(True)
    return dist.get_rank()


_OWN_GROUP: list = []


def close_own_group() -> None:
    """Destroy the process group if ``init_from_env`` created it."""
    import torch.distributed as dist
    if _OWN_GROUP and dist.is_initialized():
        dist.destroy_process_group()
        _OWN_GROUP.clear()


class DeferredRecorder(SampleRecorder):
    """``SampleRecorder`` of an expert projection, whose samples (an expert's routed tokens of one
    calibration sequence) are numbered only once every rank's count is known: the raw samples are
    kept (only where the second moment is needed) until ``finalize``, which computes their products
    with the one-process scaling. Each ``add_batch`` is one (T, cols) or (1, T, cols) sample."""

    def __init__(self, in_features: int, device, hessian: bool):
        super().__init__(in_features, device, hessian, 0)
        self.raw: list = []
        self.samples = 0

    def add_batch(self, x: torch.Tensor) -> None:
        x = x.unsqueeze(0) if x.dim() == 2 else x
        if x.dim() != 3 or x.shape[0] != 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"expected one (T, {self.in_features}) sample, got {tuple(x.shape)}")
        x = x.detach().to(self.device)
        self.moments.append(sample_moments(x))
        self.samples += 1
        if self.hessian:
            self.raw.append(x[0].t().type(torch.float32))

    def finalize(self, first_sample: int) -> None:
        self.next_index = first_sample
        for inp in self.raw:
            self.next_index += 1
            self.products.append(sample_product(inp, self.next_index))
        self.raw = []


def combine_experts(collector) -> None:
    """Replace an expert collector's ``DeferredRecorder`` objects by the one-process
    ``CalibrationStats`` and its token counts by their sums over ranks (collective; every rank
    holds recorders for the same projections, in the same order)."""
    import torch.distributed as dist
    rank, size = world()
    names = list(collector.stats)
    dev = next(iter(collector.stats.values())).device if names else torch.device("cpu")
    local = torch.tensor([collector.stats[n].samples for n in names] + collector.tokens, dtype=torch.int64,
                         device=dev)
    gathered = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(gathered, local)
    table = torch.stack(gathered).tolist()  # (ranks, projections + experts)
    collector.tokens = [sum(row[len(names) + e] for row in table) for e in range(len(collector.tokens))]
    for j, name in enumerate(names):
        rec, counts = collector.stats[name], [row[j] for row in table]
        rec.finalize(sum(counts[:rank]))
        collector.stats[name] = (combine(rec, counts) if sum(counts) else
                                 CalibrationStats(rec.in_features, device=rec.device, hessian=rec.hessian))
