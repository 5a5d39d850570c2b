"""``PruneConfig``: every knob of the layer-by-layer driver (spec §4), with validation."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from dsnot_kernels.metrics import SQRT_MODES
from dsnot_kernels.objectives.common import ERR_SUM_MODES, NM_TIES
from dsnot_kernels.ops import OBJECTIVES

PATTERNS_HELP = '"unstructured" or "N:M" (e.g. "2:4", "4:8")'
INITIAL_METHODS = ("wanda", "magnitude", "sparsegpt", "sparsegpt_metric")
SKIP_CHOICES = ("mlp", "none", "self_attn")
OBJECTIVE_CHOICES = tuple(OBJECTIVES)
EXPERT_TOKENS = ("routed", "all")
EXPERT_FALLBACKS = ("magnitude", "error")

# Widest sub-layer input (columns) up to which the "best" preset uses objective "swap"; beyond it
# "cov_window" (benchmarks/RESULTS.md, "Objective swap": swap gives the lowest perplexity of every
# objective measured on the embedded model, 1536 columns at most, at 1.2-1.6x cov_window's prune
# time; its exact best-pair search costs about cols² per accepted swap, and the cap max(64, cols/4)
# makes it grow about as cols³ per row, so at 4096+ columns it costs many times cov_window).
SWAP_MAX_COLS = 4096
PRESETS = ("best", "paper")


def preset_settings(name: str, widest_cols: "int | None" = None) -> dict:
    """The objective and skip of a named preset: "paper" = the authors' settings (objective dsnot,
    skip mlp); "best" = the best measured choice: skip none, objective swap when the widest
    sub-layer has at most ``SWAP_MAX_COLS`` input columns (or is unknown), else cov_window."""
    if name == "paper":
        return {"objective": "dsnot", "skip": "mlp"}
    if name == "best":
        wide = widest_cols is not None and widest_cols > SWAP_MAX_COLS
        return {"objective": "cov_window" if wide else "swap", "skip": "none"}
    raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")


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
        its output error on the calibration inputs (``dsnot_kernels.weights.reconstruct``; any initial
        method and objective). The mask does not change; residual and iterations go in the report.
    window: candidates per list that objective "cov_window" compares each cycle (int >= 1).
    backend: refine_mask backend (None = best for the device).
    sqrt: the square root of ``scaler_row`` in the wanda metric (initial mask and prune candidates):
        "exact" (correctly rounded, every backend's contract) or "torch" (ATen's float32
        ``torch.sqrt`` on the statistics' device, as the authors' code takes it: on CPU it is one ulp
        off on about a fifth of inputs, which flips near-ties; on CUDA the two agree).
    err_sum: the order of each row's initial error sum in the refinement: "lanes" (the contract's
        fixed order, every backend) or "torch" (ATen's ``torch.sum``, as the authors' code: a few
        ulps away, which flips a row whose error lands that close to ``update_threshold``; the
        "torch" backend only, so ``backend`` must be None or "torch"). python/main.py's default.
    nm_ties: the N:M initial mask of a sub-layer that is not refined (``skip``): "lower" (ties by
        lower column, the spec) or "topk" (``torch.topk`` group by group, as the authors' code: on
        an exact tie of the metric it takes a later column). Any backend; python/main.py's default.
    batch_size: calibration samples per forward pass (statistics do not depend on it).
    device: where each block is computed (None = where the model is). Only the current block and
        the calibration activations live there; the rest of the model stays where it was.
    record_error: also record each sub-layer's output error before/after refinement (needs a
        (cols, cols) second-moment matrix per sub-layer).
    progress: show a tqdm bar over blocks.

    Mixture-of-experts layers (``docs/MOE.md``): every expert is pruned as a standalone linear layer
    per projection, on the calibration tokens the model's router sends to it; routers are never
    pruned.
    expert_tokens: "routed" (each expert's statistics from its routed tokens) or "all" (every
        token sent to every expert for the statistics only; fused experts only).
    expert_min_tokens: an expert with fewer routed calibration tokens than this (int >= 1;
        default 1: only experts no token reaches) gets ``expert_fallback`` instead.
    expert_fallback: "magnitude" (the |W| initial selection at the asked sparsity or pattern, no
        refinement, weights unchanged) or "error" (``PruningError`` naming the expert).
    expert_report_tokens: the report counts, per experts module of each block, the experts with
        fewer routed tokens than this (``blocks[i]["experts"][j]["few_tokens"]``).
    expert_group_size: experts whose (cols, cols) second moments are held at once, where a
        projection needs one (int >= 1); each further group reruns the block's forward.
    bos: "auto" | "always" | "never", the BOS rule of the calibration windows (docs/MODELS.md). The
        driver gets token ids, so the tokenizer's rule is applied where the windows are made
        (``calibration_windows(..., bos=..., tokenizer=...)``); here "auto" and "never" use the
        windows as given and "always" makes each window start with BOS (``[BOS] + its first
        seqlen - 1 tokens`` where it does not). The report's "bos" entry says what was used.
    bos_token_id: the BOS id for ``bos="always"`` (None = the model config's / generation config's).
    sparsity_profile: each sub-layer's unstructured sparsity (``dsnot_kernels.pruning.profile``):
        "uniform" (``sparsity`` everywhere), a list of one sparsity per block, a dict
        ``{block: s, "block.sublayer": s}`` (the rest get ``sparsity``), or "owl" (outlier-weighted
        layer-wise sparsity, arXiv 2310.05175: one dense calibration pass measures each block's
        outlier ratio; the block sparsities average to ``sparsity``). Unstructured only.
    owl_m, owl_lambda: OWL's hyperparameters (its code's ``--Hyper_m``, ``--Lamda``): a score is an
        outlier above ``owl_m`` x its block's mean score; block sparsities span at most
        2 x ``owl_lambda``. Defaults 5 and 0.08, the OWL README's LLaMA settings.
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
    err_sum: str = "lanes"
    nm_ties: str = "lower"
    batch_size: int = 8
    device: "str | None" = None
    record_error: bool = False
    progress: bool = True
    expert_tokens: str = "routed"
    expert_min_tokens: int = 1
    expert_fallback: str = "magnitude"
    expert_report_tokens: int = 128
    expert_group_size: int = 8
    bos: str = "auto"
    bos_token_id: "int | None" = None
    sparsity_profile: object = "uniform"
    owl_m: float = 5.0
    owl_lambda: float = 0.08
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
        if self.err_sum not in ERR_SUM_MODES:
            raise ValueError(f"err_sum must be one of {ERR_SUM_MODES}, got {self.err_sum!r}")
        if self.nm_ties not in NM_TIES:
            raise ValueError(f"nm_ties must be one of {NM_TIES}, got {self.nm_ties!r}")
        if self.err_sum == "torch" and self.backend not in (None, "torch"):
            raise ValueError(f'err_sum="torch" runs on the "torch" backend only, not backend={self.backend!r}')
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
        from dsnot_kernels.pruning.profile import check_owl_hyper, check_profile
        check_profile(self.sparsity_profile, self.prune_n)
        check_owl_hyper(self.owl_m, self.owl_lambda)
        if isinstance(self.sparsity_profile, tuple):
            self.sparsity_profile = list(self.sparsity_profile)
        from dsnot_kernels.bos import check_bos
        check_bos(self.bos)
        if self.bos_token_id is not None and (isinstance(self.bos_token_id, bool) or not
                                              isinstance(self.bos_token_id, int) or self.bos_token_id < 0):
            raise ValueError(f"bos_token_id must be None or an int >= 0, got {self.bos_token_id!r}")
        self._check_expert_fields()

    def _check_expert_fields(self):
        if self.expert_tokens not in EXPERT_TOKENS:
            raise ValueError(f"expert_tokens must be one of {EXPERT_TOKENS}, got {self.expert_tokens!r}")
        if self.expert_fallback not in EXPERT_FALLBACKS:
            raise ValueError(f"expert_fallback must be one of {EXPERT_FALLBACKS}, got {self.expert_fallback!r}")
        for name in ("expert_min_tokens", "expert_report_tokens", "expert_group_size"):
            v = getattr(self, name)
            low = 0 if name == "expert_report_tokens" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")

    @property
    def target_sparsity(self) -> float:
        return self.prune_n / self.prune_m if self.prune_n else float(self.sparsity)

    @classmethod
    def preset(cls, name: str, widest_cols: "int | None" = None, **overrides) -> "PruneConfig":
        """A ``PruneConfig`` with a named preset's objective and skip (``preset_settings``), every
        other field at its default unless given in ``overrides``. ``PruneConfig()`` itself keeps
        the authors' defaults (= ``preset("paper")``)."""
        return cls(**{**preset_settings(name, widest_cols), **overrides})

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
