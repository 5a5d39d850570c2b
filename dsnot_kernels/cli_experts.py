"""The mixture-of-experts options of ``dsnot-prune`` and ``python/main.py`` (docs/MOE.md), defined once.

``dsnot-prune`` spells them ``--expert-tokens``, ``--expert-min-tokens``, ...; ``main.py`` (the
authors' underscore style) ``--expert_tokens``, ``--expert_min_tokens``, ... Defaults are
``PruneConfig``'s. They change nothing on a model without experts.
"""
from __future__ import annotations

import argparse
import dataclasses

from dsnot_kernels import cli_checks
from dsnot_kernels.pruning.config import EXPERT_FALLBACKS, EXPERT_TOKENS, PruneConfig

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PruneConfig)}

# (PruneConfig field, argparse keywords, smallest value of an int option)
EXPERT_OPTIONS = (
    ("expert_tokens", dict(choices=list(EXPERT_TOKENS), help=(
        "MoE: each expert's statistics from the tokens the model's router sends to it (routed) or from every "
        "calibration token (all; fused experts only, the block's output still follows the routing)")), None),
    ("expert_min_tokens", dict(type=int, metavar="N", help=(
        "MoE: an expert with fewer routed calibration tokens than N gets --expert-fallback instead")), 1),
    ("expert_fallback", dict(choices=list(EXPERT_FALLBACKS), help=(
        "MoE: what such an expert gets: magnitude (|W| at the asked sparsity or pattern, no refinement) or "
        "error (stop, naming the expert)")), None),
    ("expert_report_tokens", dict(type=int, metavar="N", help=(
        "MoE: the report counts, per block, the experts with fewer than N routed tokens (few_tokens)")), 0),
    ("expert_group_size", dict(type=int, metavar="N", help=(
        "MoE: experts whose (cols, cols) second moments are held at once, where the objective needs them; "
        "each further group reruns the block's forward")), 1),
)


def flag(field: str, sep: str = "-") -> str:
    return "--" + field.replace("_", sep)


def add_expert_flags(parser, sep: str = "-") -> None:
    """Add the options to ``parser``; ``sep``: "-" (dsnot-prune) or "_" (main.py)."""
    group = parser.add_argument_group("mixture-of-experts models (docs/MOE.md)")
    shown = isinstance(parser.formatter_class, type) and issubclass(parser.formatter_class,
                                                                    argparse.ArgumentDefaultsHelpFormatter)
    for field, kw, _ in EXPERT_OPTIONS:
        text = kw["help"].replace("--expert-fallback", flag("expert_fallback", sep))
        group.add_argument(flag(field, sep), dest=field, default=_DEFAULTS[field],
                           **dict(kw, help=text if shown else f"{text} (default: %(default)s)"))


def expert_options(args, sep: str = "-") -> dict:
    """The ``PruneConfig`` keywords of the parsed options; ValueError naming the flag for a bad value."""
    out = {}
    for field, _, minimum in EXPERT_OPTIONS:
        value = getattr(args, field)
        if minimum is not None:
            cli_checks.check_positive(flag(field, sep), value, minimum)
        out[field] = value
    return out


def describe_experts(report: dict) -> list:
    """One line per block with experts: how many had fewer than expert_report_tokens routed tokens, and
    which fell back (empty for a model without experts)."""
    cfg, lines = report.get("config", {}), []
    for b, block in enumerate(report.get("blocks", [])):
        for s in block.get("experts", []):
            lines.append(f"block {b} {s['path']}: {s['few_tokens']} of {s['num_experts']} experts had fewer than "
                         f"{cfg.get('expert_report_tokens')} routed tokens (min {min(s['tokens'])}); fallback "
                         f"({cfg.get('expert_fallback')}): {s['fallback'] or 'none'}")
    return lines
