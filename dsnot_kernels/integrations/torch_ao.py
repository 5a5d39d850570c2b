"""``DSnoTSparsifier``: DSnoT as a ``torch.ao.pruning`` sparsifier.

The usual sparsifier life cycle, as torchao's ``WandaSparsifier``::

    sparsifier = DSnoTSparsifier(sparsity_level=0.5)        # or semi_structured_block_size=4 (2:4)
    sparsifier.prepare(model, config=None)                   # every nn.Linear, or [{"tensor_fqn": ...}]
    for batch in calibration: model(batch)                   # hooks gather CalibrationStats per layer
    sparsifier.step()                                        # masks from refine_mask (spec §2-§3)
    sparsifier.squash_mask()                                 # zeros baked into the weights, hooks gone

Instead of quantization observers, ``prepare`` puts a forward pre-hook on each configured module
that feeds its input to a ``CalibrationStats`` (spec §1): an input (B, T, in) is B samples of T
tokens, (T, in) is one sample, more leading dimensions are flattened into samples.

torch.ao masks are 1 = keep (float, the weight's dtype); ``refine_mask`` returns True = pruned, so
``mask = ~pruned``. Masks are computed from the original (unmasked) weight each ``step()``.

Per-layer options go in the config entries and override the constructor's defaults, e.g. OWL-style
ratios: ``[{"tensor_fqn": "0.weight", "sparsity_level": 0.55}, ...]``. Options: ``sparsity_level``,
``semi_structured_block_size`` (M of N:M with N = M/2), ``prune_n``/``prune_m`` (any N:M),
``initial`` ("wanda", "magnitude", "sparsegpt", "sparsegpt_metric"), ``refine`` (False = initial
mask only), ``reconstruct``, ``max_cycle_time``, ``update_threshold``, ``pow_of_var_regrowing``,
``without_same_sign``, ``objective``, ``window``, ``backend``.

Weight updates (``initial="sparsegpt"``: SparseGPT as published; ``reconstruct=True``: the kept
weights re-solved for the final mask; the rule of docs/KERNEL_CONTRACT.md, "Weight updates"): the
updated weights are written into the parametrization's ``original`` and the dense weights are kept
aside until ``squash_mask``, so every ``step()`` starts again from the dense weights.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.ao.pruning import BaseSparsifier

from dsnot_kernels.metrics import initial_metric as compute_metric
from dsnot_kernels.ops import SECOND_MOMENT_OBJECTIVES, refine_mask
from dsnot_kernels.weights.reconstruct import reconstruct as reconstruct_weights
from dsnot_kernels.weights.sparsegpt import sparsegpt
from dsnot_kernels.stats import CalibrationStats

__all__ = ["DSnoTSparsifier"]


class DSnoTSparsifier(BaseSparsifier):
    """DSnoT (training-free mask refinement) on top of an initial Wanda/magnitude/SparseGPT mask.

    Args:
        sparsity_level: unstructured sparsity per row, in [0, 1).
        semi_structured_block_size: M for an (M/2):M pattern (4 = 2:4); overrides sparsity_level.
        prune_n, prune_m: any N:M pattern (overrides the two above when prune_n > 0).
        initial: "wanda" (default), "magnitude", "sparsegpt" (SparseGPT as published: its mask and
            its weight updates) or "sparsegpt_metric" (SparseGPT's saliency for the mask only, the
            authors' DSnoT flag). Both SparseGPT options gather a Hessian, as objectives "cov",
            "cov_window" and "swap" and ``reconstruct`` do.
        refine: False = the initial mask alone (the plain Wanda/magnitude/SparseGPT baseline).
            After "sparsegpt" the refinement starts from its mask and the kept weights are then
            reconstructed.
        reconstruct: re-solve each row's kept weights for the final mask (``dk.reconstruct``).
        max_cycle_time, update_threshold, pow_of_var_regrowing, without_same_sign, objective,
        window, backend: as in ``dsnot_kernels.refine_mask`` (``max_cycle_time=None``: the
        objective's default; objective "swap" needs a Hessian too).
        stats_device: where statistics are kept (None = each layer's weight device).
    """

    def __init__(self, sparsity_level: float = 0.5, semi_structured_block_size=None, prune_n: int = 0,
                 prune_m: int = 0, initial: str = "wanda", refine: bool = True, max_cycle_time=None,
                 update_threshold: float = 0.1, pow_of_var_regrowing: float = 1.0,
                 without_same_sign: bool = True, objective: str = "dsnot", window: int = 100, backend=None,
                 stats_device=None, reconstruct: bool = False):
        defaults = dict(sparsity_level=sparsity_level, semi_structured_block_size=semi_structured_block_size,
                        prune_n=prune_n, prune_m=prune_m, initial=initial, refine=refine,
                        max_cycle_time=max_cycle_time, update_threshold=update_threshold,
                        pow_of_var_regrowing=pow_of_var_regrowing, without_same_sign=without_same_sign,
                        objective=objective, window=window, backend=backend, reconstruct=reconstruct)
        super().__init__(defaults=defaults)
        self.stats_device = stats_device
        self.stats: dict = {}     # tensor_fqn -> CalibrationStats
        self._hooks: dict = {}    # tensor_fqn -> hook handle
        self._dense: dict = {}    # tensor_fqn -> dense weight, kept while weights are updated

    # -- prepare: parametrizations (BaseSparsifier) + calibration hooks -------------------------
    def prepare(self, model: nn.Module, config=None) -> None:
        """Add the mask parametrizations and the hooks that gather calibration statistics."""
        super().prepare(model, config)
        for group in self.groups:
            module, name, fqn = group["module"], group["tensor_name"], group["tensor_fqn"]
            weight = getattr(module.parametrizations, name).original
            if weight.dim() != 2:
                raise ValueError(f"{fqn}: DSnoTSparsifier prunes 2-D (out_features, in_features) weights, "
                                 f"got shape {tuple(weight.shape)}")
            n, m = _pattern(group)
            if n and weight.shape[1] % m:
                raise ValueError(f"{fqn}: {n}:{m} needs in_features divisible by {m}, got {weight.shape[1]}")
            device = self.stats_device if self.stats_device is not None else weight.device
            self.stats[fqn] = CalibrationStats(weight.shape[1], device=device,
                                               hessian=group["initial"] in ("sparsegpt", "sparsegpt_metric")
                                               or group["objective"] in SECOND_MOMENT_OBJECTIVES
                                               or bool(group.get("reconstruct")))
            self._hooks[fqn] = module.register_forward_pre_hook(self._make_hook(fqn), with_kwargs=True)

    def _make_hook(self, fqn):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["input"]
            if x.dim() > 3:
                x = x.reshape(-1, x.shape[-2], x.shape[-1])
            self.stats[fqn].add_batch(x)
        return hook

    # -- step: one mask per configured tensor ----------------------------------------------------
    def update_mask(self, module: nn.Module, tensor_name: str, tensor_fqn: str = "", **config) -> None:
        """Recompute ``module``'s mask (1 = keep) from the statistics gathered so far."""
        stats = self.stats.get(tensor_fqn)
        if stats is None or stats.nsamples == 0:
            raise RuntimeError(f"{tensor_fqn}: no calibration inputs seen; run forward passes on calibration "
                               "data between prepare() and step()")
        parametrization = getattr(module.parametrizations, tensor_name)
        updating = config["initial"] == "sparsegpt" or bool(config.get("reconstruct"))
        weight = parametrization.original.detach()
        if updating:  # start from the dense weights, whatever an earlier step() wrote
            weight = self._dense.setdefault(tensor_fqn, weight.clone())
        mask = parametrization[0].mask
        n, m = _pattern(config)
        metric = (None if config["initial"] in ("wanda", "sparsegpt")
                  else compute_metric(config["initial"], weight, stats))
        hessian = stats.hessian.to(weight.device) if stats.hessian is not None else None
        initial_mask = new_w = None
        if config["initial"] == "sparsegpt":
            initial_mask, new_w = sparsegpt(weight, hessian, sparsity=float(config["sparsity_level"]),
                                            prune_n=n, prune_m=m)
        pruned, swaps = refine_mask(
            weight, stats.sum_metric_row.to(weight.device), stats.var.to(weight.device),
            stats.scaler_row.to(weight.device),
            initial_metric=None if metric is None else metric.to(weight.device), initial_mask=initial_mask,
            sparsity=config["sparsity_level"], prune_n=n, prune_m=m,
            max_cycle_time=config["max_cycle_time"] if config["refine"] else 0,
            update_threshold=config["update_threshold"], pow_of_var_regrowing=config["pow_of_var_regrowing"],
            without_same_sign=config["without_same_sign"], objective=config["objective"],
            mean=stats.mean.to(weight.device) if config["objective"] == "mse" else None,
            second_moment=(stats.hessian.to(weight.device) if config["objective"] in SECOND_MOMENT_OBJECTIVES
                           else None),
            window=config["window"], backend=config["backend"], return_swaps=True)
        if config.get("reconstruct") or (initial_mask is not None and not torch.equal(pruned, initial_mask)):
            new_w = reconstruct_weights(weight, pruned, hessian, init=new_w)
        if new_w is not None:
            parametrization.original.data.copy_(new_w)
        mask.data.copy_(~pruned)
        self.state[tensor_fqn]["swaps"] = int(swaps.sum())
        self.state[tensor_fqn]["sparsity"] = float(pruned.float().mean())

    # -- squash_mask: bake zeros, drop hooks and statistics ----------------------------------------
    def squash_mask(self, params_to_keep=None, params_to_keep_per_layer=None, *args, **kwargs):
        """Remove the hooks and parametrizations; pruned weights stay exactly zero."""
        self.remove_hooks()
        super().squash_mask(params_to_keep=params_to_keep, params_to_keep_per_layer=params_to_keep_per_layer)
        self.stats.clear()
        self._dense.clear()

    def remove_hooks(self) -> None:
        """Stop gathering statistics (the masks stay)."""
        for handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()


def _pattern(config) -> tuple:
    """(prune_n, prune_m) of a group's config: explicit N:M, else semi_structured_block_size, else (0, 0)."""
    if config.get("prune_n"):
        return int(config["prune_n"]), int(config["prune_m"])
    block = config.get("semi_structured_block_size")
    if block:
        if int(block) % 2:
            raise ValueError(f"semi_structured_block_size must be even (M of M/2:M), got {block}")
        return int(block) // 2, int(block)
    return 0, 0
