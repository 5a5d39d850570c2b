"""Which layers ``DSnoTModifier`` prunes under llm-compressor, and the error for any it would miss.

llm-compressor 0.14.0.1 (``SparsityModifierBase``) hooks, inside every module its ``targets`` match,
the layers of its ``PRUNABLE_LAYER_TYPES`` (``"Linear"``, ``"Conv1d"``, ...), matched by exact class
name. transformers' ``Conv1D`` (GPT-2's attention and MLP layers, weight stored (in, out)) is none of
those, so its base class would leave GPT-2's decoder layers dense. ``register_conv1d`` adds the
``Conv1D`` layers inside the matched modules (the modifier's default ``targets`` name ``"Conv1D"``
beside ``"Linear"``); the statistics and the zeroing already read its weight as (out, in)
(``pruning.adapters.weight_view`` / ``is_transposed``).

``check_coverage`` then refuses, before any calibration, a run that would leave a prunable layer of a
decoder layer dense without being told: every ``nn.Linear`` / ``Conv1D`` of each sequential target
must be a target, in ``ignore``, or a router (``pruning.coverage.SKIPPED``, never pruned).
"""
from __future__ import annotations

from compressed_tensors.utils import match_targets
from loguru import logger

from dsnot_kernels.pruning.adapters import is_prunable, is_transposed

DEFAULT_TARGETS = ["Linear", "Conv1D"]


def register_conv1d(modifier) -> None:
    """Hook the transformers ``Conv1D`` layers inside ``modifier._target_layers`` that the base class
    skipped (not in ``ignore``), with the sparsity of their target as the base class assigns it."""
    for index, (layer_name, layer) in enumerate(modifier._target_layers.items()):
        sparsity = modifier.sparsity[index] if isinstance(modifier.sparsity, list) else modifier.sparsity
        for name, module in layer.named_modules():
            if not is_transposed(module) or module in modifier._module_names:
                continue
            full = f"{layer_name}.{name}"   # "<target>." for the target itself, as the base class names it
            if match_targets(full.rstrip("."), module, modifier.ignore) or match_targets(full, module, modifier.ignore):
                continue
            if full.rstrip(".").endswith("lm_head"):
                logger.warning("DSnoTModifier: pruning an lm_head; add `re:.*lm_head` to `ignore` if unintended")
            modifier._module_names[module] = full
            modifier._module_sparsities[module] = sparsity
            modifier.register_hook(module, modifier.calibrate_module, "forward")


def uncovered(modifier) -> list:
    """Names of the prunable layers inside the sequential targets (``modifier._layers``) that are
    neither targets, nor in ``ignore``, nor routers / collected experts (``modifier._expert_linears``)."""
    targets = {id(m) for m in modifier._module_names}
    out = []
    for layer_name, layer in modifier._layers.items():
        for name, module in layer.named_modules():
            if not name or not is_prunable(module):
                continue
            full = f"{layer_name}.{name}"
            if id(module) in targets or id(module) in modifier._expert_linears:
                continue
            if match_targets(full, module, modifier.ignore):
                continue
            out.append(f"{full} ({type(module).__name__})")
    return out


def check_coverage(modifier, show: int = 4) -> None:
    """ValueError naming the first ``show`` layers ``uncovered`` finds (no silent partial prune)."""
    left = uncovered(modifier)
    if not left:
        return
    more = f" and {len(left) - show} more" if len(left) > show else ""
    raise ValueError(
        f"DSnoTModifier would leave {len(left)} prunable layers of the decoder layers dense: "
        f"{', '.join(left[:show])}{more}. They match neither `targets` ({modifier.targets!r}) nor `ignore` "
        f"({modifier.ignore!r}). To prune them add their class or names to `targets` (the default "
        f"{DEFAULT_TARGETS!r} takes nn.Linear and transformers Conv1D); to keep them dense on purpose add "
        "them to `ignore` (e.g. 're:.*mlp.*')")
