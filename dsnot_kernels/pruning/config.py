"""``PruneConfig``: every knob of the layer-by-layer driver (spec §4), with validation."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from dsnot_kernels.metrics import SQRT_MODES
from dsnot_kernels.ops import OBJECTIVES

PATTERNS_HELP = '"unstructured" or "N:M" (e.g. "2:4", "4:8")'
INITIAL_METHODS = ("wanda", "magnitude", "sparsegpt", "sparsegpt_metric")
SKIP_CHOICES = ("mlp", "none", "self_attn")
OBJECTIVE_CHOICES = tuple(OBJECTIVES)


@dataclass
class PruneConfig:
    """What ``prune_model`` does.

    sparsity: unstructured ratio in [0, 1) (ignored for N:M patterns, which prune N of every M).
    pattern: "unstructured" or "N:M".
    initial: initial method, "wanda" | "magnitude" (spec §2) | "sparsegpt" (SparseGPT as published:
        its mask and its OBS weight updates; a refinement then starts from its mask and the kept
        weights are reconstructed, docs/KERNEL_CONTRACT.md) | "sparsegpt_metric" (the authors' DSnoT
        flag: SparseGPT's saliency W²/d² for the mask only, no weight update).
    refine: False = the initial mask alone (no §3 swaps anywhere).
    skip: which sub-layers get the initial mask only: "mlp" (the authors' default), "self_attn",
        or "none" (refine every linear sub-layer).
    skip_sublayers: extra sub-layer names (last name component, e.g. "down_proj") that are not
        refined (the authors' ``--skip_sub_layer``).
    max_cycle_time, update_threshold, pow_of_var_regrowing, without_same_sign: spec §3.
        ``max_cycle_time=None`` is the objective's default per sub-layer
        (``ops.default_max_cycle_time``: 50; "swap": ``max(64, cols // 4)``).
    objective: "dsnot" (the authors' rule), "mse" (swap only when the row's mean² + variance
        output error drops; uses ``CalibrationStats.mean``) or "cov" (swap only when the row's full
        output error drops, with the inputs' (cols, cols) second moment: keeps one per sub-layer
        and runs on the "cpu" or "torch" backend) or "cov_window" (as "cov", but each cycle applies
        the best swap among the next ``window`` candidates of each cursor; "cpu" or "torch") or
        "swap" (each cycle the best swap among all pairs of the row, until none lowers the error).
    reconstruct: after each sub-layer's final mask, re-solve every row's kept weights to minimise
        its output error on the calibration inputs (``dsnot_kernels.reconstruct``; any initial
        method and objective). The mask does not change; residual and iterations go in the report.
    window: candidates per list that objective "cov_window" compares each cycle (int >= 1).
    backend: refine_mask backend (None = best for the device).
    sqrt: the square root of ``scaler_row`` in the wanda metric (initial mask and prune candidates):
        "exact" (correctly rounded, every backend's contract) or "torch" (ATen's float32
        ``torch.sqrt`` on the statistics' device, as the authors' code takes it: on CPU it is one ulp
        off on about a fifth of inputs, which flips near-ties; on CUDA the two agree).
    batch_size: calibration samples per forward pass (statistics do not depend on it).
    device: where each block is computed (None = where the model is). Only the current block and
        the calibration activations live there; the rest of the model stays where it was.
    record_error: also record each sub-layer's output error before/after refinement (needs a
        (cols, cols) second-moment matrix per sub-layer).
    progress: show a tqdm bar over blocks.
    """

    sparsity: float = 0.5
    pattern: str = "unstructured"
    initial: str = "wanda"
    refine: bool = True
    skip: str = "mlp"
    skip_sublayers: tuple = ()
    max_cycle_time: "int | None" = None
    update_threshold: float = 0.1
    pow_of_var_regrowing: float = 1.0
    without_same_sign: bool = True
    objective: str = "dsnot"
    window: int = 100
    reconstruct: bool = False
    backend: "str | None" = None
    sqrt: str = "exact"
    batch_size: int = 8
    device: "str | None" = None
    record_error: bool = False
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.skip == "no_skip":  # the authors' spelling
            self.skip = "none"
        if self.skip not in SKIP_CHOICES:
            raise ValueError(f"skip must be one of {SKIP_CHOICES}, got {self.skip!r}")
        if self.initial not in INITIAL_METHODS:
            raise ValueError(f"initial must be one of {INITIAL_METHODS}, got {self.initial!r}")
        if self.objective not in OBJECTIVE_CHOICES:
            raise ValueError(f"objective must be one of {OBJECTIVE_CHOICES}, got {self.objective!r}")
        if self.sqrt not in SQRT_MODES:
            raise ValueError(f"sqrt must be one of {SQRT_MODES}, got {self.sqrt!r}")
        if not isinstance(self.reconstruct, bool):
            raise TypeError(f"reconstruct must be a bool, got {type(self.reconstruct).__name__}")
        if self.backend is not None:
            from dsnot_kernels.ops import BACKENDS
            if self.backend not in BACKENDS:
                raise ValueError(f"backend must be None or one of {sorted(BACKENDS)}, got {self.backend!r}")
        if self.max_cycle_time is not None and (isinstance(self.max_cycle_time, bool) or not
                                                isinstance(self.max_cycle_time, int) or self.max_cycle_time < 0):
            raise ValueError(f"max_cycle_time must be None (the objective's default) or an int >= 0, "
                             f"got {self.max_cycle_time!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be an int >= 1, got {self.window!r}")
        self.prune_n, self.prune_m = parse_pattern(self.pattern)
        if self.prune_n == 0 and not (0.0 <= float(self.sparsity) < 1.0):
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self.skip_sublayers = tuple(self.skip_sublayers or ())

    @property
    def target_sparsity(self) -> float:
        return self.prune_n / self.prune_m if self.prune_n else float(self.sparsity)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["skip_sublayers"] = list(d["skip_sublayers"])
        return d


def parse_pattern(pattern: str):
    """``"unstructured"`` -> (0, 0); ``"2:4"`` -> (2, 4)."""
    if pattern == "unstructured":
        return 0, 0
    try:
        n, m = (int(v) for v in str(pattern).split(":"))
    except ValueError:
        raise ValueError(f"pattern must be {PATTERNS_HELP}, got {pattern!r}") from None
    if not 0 < n < m:
        raise ValueError(f"an N:M pattern needs 0 < N < M, got {pattern!r}")
    return n, m
