"""Per-layer sparsity: ``PruneConfig(sparsity_profile=...)``.

A profile gives each linear sub-layer its own unstructured sparsity:

- ``"uniform"``: every sub-layer gets ``config.sparsity`` (the default, the published methods).
- a list (or tuple) of one float per block.
- a dict: ``{block: s}`` (int keys, or strings of digits as JSON writes them) and/or
  ``{"<block>.<sub-layer name>": s}`` (e.g. ``"3.mlp.down_proj"``); a sub-layer key wins over its
  block's key, and what the dict does not name gets ``config.sparsity``.
- ``"owl"``: outlier-weighted layer-wise sparsity (OWL, Yin et al. 2024, arXiv 2310.05175): for each
  block the *layer outlier ratio* D = 100 x the fraction of the block's Wanda scores
  ``|W_ij| * ||X_j||`` (all its sub-layers together) above ``owl_m`` times their mean; the ratios are
  scaled linearly onto [0, 2 * owl_lambda] and shifted so that their mean density is
  ``1 - sparsity``; block ``i`` gets sparsity ``1 - density_i``. Blocks with more outliers keep
  more weights; the mean of the block sparsities is the asked sparsity. The scores come from one
  dense pass over the model with the calibration inputs (every block sees the dense outputs of
  the block before, as the OWL code computes them), before any block is pruned.

Profiles apply to unstructured pruning only (an N:M pattern fixes every row's count).
"""
from __future__ import annotations

import dataclasses
import math

import torch

PROFILE_HELP = '"uniform", "owl", a list of one sparsity per block, or a dict {block or "block.sublayer": sparsity}'


def check_profile(profile, pattern_n: int) -> None:
    """Raise ``ValueError``/``TypeError`` (one line) for a profile ``PruneConfig`` cannot use."""
    if isinstance(profile, str):
        if profile not in ("uniform", "owl"):
            raise ValueError(f"sparsity_profile must be {PROFILE_HELP}, got {profile!r}")
        if profile == "owl" and pattern_n:
            raise ValueError("sparsity_profile 'owl' is for unstructured pruning; an N:M pattern prunes N of "
                             "every M weights in every layer")
        return
    if pattern_n:
        raise ValueError("a per-layer sparsity_profile is for unstructured pruning; an N:M pattern prunes N of "
                         "every M weights in every layer")
    if isinstance(profile, (list, tuple)):
        values = list(profile)
        if not values:
            raise ValueError("sparsity_profile: an empty list")
    elif isinstance(profile, dict):
        for key in profile:
            _parse_key(key)
        values = list(profile.values())
    else:
        raise TypeError(f"sparsity_profile must be {PROFILE_HELP}, got {type(profile).__name__}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < 1.0:
            raise ValueError(f"sparsity_profile: every sparsity must be a number in [0, 1), got {v!r}")


def _parse_key(key):
    """``3`` / ``"3"`` -> (3, None); ``"3.mlp.down_proj"`` -> (3, "mlp.down_proj")."""
    if isinstance(key, int) and not isinstance(key, bool) and key >= 0:
        return key, None
    if isinstance(key, str):
        head, _, rest = key.partition(".")
        if head.isdigit():
            return int(head), (rest or None)
    raise ValueError(f"sparsity_profile: a dict key must be a block index or '<block>.<sub-layer name>', got {key!r}")


def check_owl_hyper(m, lam) -> None:
    for name, v in (("owl_m", m), ("owl_lambda", lam)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")


def outlier_ratio(scores: torch.Tensor, m: float) -> float:
    """OWL's layer outlier ratio: 100 x fraction of ``scores`` (any shape) above ``m`` x their mean."""
    scores = scores.reshape(-1).float()
    return float((scores > scores.mean() * m).sum()) * 100.0 / scores.numel()


def owl_block_sparsity(ratios, sparsity: float, lam: float) -> list:
    """Per-block sparsities from the blocks' outlier ratios (OWL's rule, float64).

    ratios (len n) -> density_i = (ratios_i - min) / (max - min) * 2 * lam, minus its mean, plus
    ``1 - sparsity``; sparsity_i = 1 - density_i. Equal ratios (max == min) give uniform sparsity.
    Raises ValueError if a block's sparsity leaves [0, 1) (lambda too large for this sparsity).
    """
    r = torch.tensor([float(x) for x in ratios], dtype=torch.float64)
    span = float(r.max() - r.min())
    scaled = (r - r.min()) * (2.0 * lam / span) if span > 0 else torch.zeros_like(r)
    density = scaled - scaled.mean() + (1.0 - float(sparsity))
    out = [1.0 - float(d) for d in density]
    bad = [(i, s) for i, s in enumerate(out) if not 0.0 <= s < 1.0]
    if bad:
        i, s = bad[0]
        raise ValueError(f"OWL gives block {i} sparsity {s:.4f}, outside [0, 1): owl_lambda {lam} is too large "
                         f"for sparsity {sparsity}")
    return out


def wanda_scores(weight: torch.Tensor, scaler_row: torch.Tensor) -> torch.Tensor:
    """(rows, cols) Wanda scores |W| * sqrt(scaler_row) in float32."""
    return weight.detach().float().abs() * torch.sqrt(scaler_row.reshape(1, -1).float())


def resolve(config, num_blocks: int, owl_ratios=None):
    """``fn(block, name) -> sparsity`` of ``config.sparsity_profile`` for a model of ``num_blocks``.

    owl_ratios: the per-block sparsities computed by the OWL pass (for ``"owl"``)."""
    profile, base = config.sparsity_profile, float(config.target_sparsity)
    if profile == "uniform":
        return lambda block, name: base
    if profile == "owl":
        return lambda block, name: owl_ratios[block]
    if isinstance(profile, (list, tuple)):
        if len(profile) != num_blocks:
            raise ValueError(f"sparsity_profile lists {len(profile)} sparsities for a model of {num_blocks} blocks")
        return lambda block, name: float(profile[block])
    blocks, subs = {}, {}
    for key, value in profile.items():
        b, sub = _parse_key(key)
        if b >= num_blocks:
            raise ValueError(f"sparsity_profile names block {b}; the model has {num_blocks} blocks (0-{num_blocks - 1})")
        (blocks if sub is None else subs)[b if sub is None else (b, sub)] = float(value)
    return lambda block, name: subs.get((block, name), blocks.get(block, base))


def check_names(config, block: int, names) -> None:
    """Raise ValueError if the dict profile names a sub-layer of ``block`` that it does not have."""
    profile = config.sparsity_profile
    if not isinstance(profile, dict):
        return
    for key in profile:
        b, sub = _parse_key(key)
        if b == block and sub is not None and sub not in names:
            raise ValueError(f"sparsity_profile names sub-layer {key!r}; block {block} has {sorted(names)}")


def with_sparsity(config, sparsity: float):
    """``config`` with another uniform ``sparsity`` (what one sub-layer is pruned with)."""
    if float(sparsity) == float(config.sparsity) and config.sparsity_profile == "uniform":
        return config
    return dataclasses.replace(config, sparsity=float(sparsity), sparsity_profile="uniform")


def block_summary(report) -> list:
    """``[{"block", "sparsity", "target"}]``: each block's pruned fraction (weighted by sub-layer size)
    and the sparsity its sub-layers were asked for."""
    out = {}
    for e in report["sublayers"]:
        n = e["shape"][0] * e["shape"][1]
        acc = out.setdefault(e["block"], [0.0, 0.0, 0])
        acc[0] += e["sparsity"] * n
        acc[1] += e.get("target_sparsity", report["config"]["sparsity"]) * n
        acc[2] += n
    return [{"block": b, "sparsity": z / n, "target": t / n} for b, (z, t, n) in sorted(out.items())]


def format_blocks(report) -> str:
    """One line per block (asked and reached sparsity) and the model's total."""
    lines = [f"block {b['block']:>3}: sparsity {b['sparsity']:.4f} (asked {b['target']:.4f})"
             for b in block_summary(report)]
    prof = report.get("sparsity_profile", {})
    head = f"sparsity profile: {prof.get('kind', 'uniform')}"
    if prof.get("kind") == "owl":
        head += f" (M {prof['owl_m']}, lambda {prof['owl_lambda']})"
    return "\n".join([head] + lines + [f"total: sparsity {report['sparsity']:.4f} of the linear sub-layers' weights"])
