"""``DSnoTModifier``: DSnoT for llm-compressor's ``oneshot`` (tested with llmcompressor 0.14.0.1).

Usage, like llm-compressor's own ``WandaPruningModifier``::

    from llmcompressor import oneshot
    from dsnot_kernels.integrations.llmcompressor import DSnoTModifier

    oneshot(model=model, processor=tokenizer, dataset=calibration_dataset,
            recipe=[DSnoTModifier(sparsity=0.5, mask_structure="0:0")],   # or "2:4"
            num_calibration_samples=128, max_seq_length=2048)

Importing this module also registers the class with llm-compressor's ``ModifierFactory``, so YAML
recipes can name it (``DSnoTModifier:`` under a ``*_modifiers:`` group).

How it runs. The class subclasses llm-compressor's ``SparsityModifierBase`` (a pydantic model,
unknown options are rejected), so ``oneshot`` drives it through its sequential pipeline: one
decoder layer at a time, a calibration pass with the hooks on, then ``compress_modules`` at the
end of that layer's step, then a second pass (hooks off) whose outputs feed the next layer. That
is the same order as ``dsnot_kernels.prune_model``: every mask of a layer comes from statistics
of the unpruned layer, and the next layer sees the pruned layer's outputs.

* Statistics: the forward hook gives each target linear layer's input, (B, T, C) = B calibration
  samples of T tokens, to a ``dsnot_kernels.CalibrationStats`` (spec §1; a 2-D input counts as one
  sample), kept on the module's execution device. The (C, C) second moment is gathered only when
  the initial method or the objective needs it. Padding tokens of a padded batch are counted like
  any other token (as llm-compressor's Wanda does): with ``batch_size > 1`` use equal-length
  samples (``max_seq_length`` with ``concatenate_data=True``, or pre-tokenised equal lengths).
* Masks: per module, from ``dsnot_kernels.refine_mask`` through the same per-sub-layer function as
  ``prune_model`` (``dsnot_kernels.pruning.driver``), with a ``PruneConfig`` built from this
  modifier's options, so every choice of ``initial``/``objective``/``skip`` that ``PruneConfig``
  accepts (read at run time) is accepted here with the same meaning.
* Zeroing: as the base class's modifiers do, the weight is read inside
  ``compressed_tensors``' ``align_module_device`` (onloaded to the execution device), the masked
  copy is written back with ``update_offload_parameter``, so offloaded (CPU or disk) and
  device-mapped models are handled as llm-compressor's own modifiers handle them (disk offload is
  tested; a GPU run is not).

With ``sequential_targets_per_subgraph > 1`` llm-compressor calibrates several decoder layers in
one pass, so the later ones see the earlier ones unpruned (``prune_model`` always goes one block
at a time). ``oneshot(output_dir=...)`` writes the pruned model dense, with the zeros in place,
and a ``recipe.yaml`` that names ``DSnoTModifier`` with its options (it reloads once this module is
imported).

``skip`` is decided on the module's name relative to its decoder layer (the sequential target
that holds it): "mlp" (default, the authors') refines attention projections only, "self_attn"
refines the MLP only, "none" refines every target module.
"""
from __future__ import annotations

import time
from typing import Optional

try:
    import llmcompressor  # noqa: F401
    from compressed_tensors.utils import (align_module_device, get_execution_device, match_named_modules,
                                          match_targets, update_offload_parameter)
    from llmcompressor.modifiers import ModifierFactory
    from llmcompressor.modifiers.pruning.sparsegpt.sgpt_base import SparsityModifierBase
    from loguru import logger
    from pydantic import Field, PrivateAttr, field_validator, model_validator
except ImportError as exc:  # pragma: no cover - exercised only where llm-compressor is missing
    raise ImportError(
        "dsnot_kernels.integrations.llmcompressor needs llm-compressor, which is not importable here "
        f"({exc}). Install it in its own environment (it pins transformers<=5.17): "
        "pip install llmcompressor==0.14.0.1, or in this repository `make llmcompressor-venv` "
        "(.venv-llmc from the exact pins of requirements-llmcompressor.txt)."
    ) from exc

import torch
from torch import nn

from dsnot_kernels import ops
from dsnot_kernels.integrations import llmcompressor_experts as experts
from dsnot_kernels.integrations import llmcompressor_targets as coverage
from dsnot_kernels.pruning import sublayer
from dsnot_kernels.pruning.adapters import is_prunable, is_transposed, sublayer_kind, weight_view
from dsnot_kernels.pruning.config import PruneConfig, parse_pattern
from dsnot_kernels.stats import CalibrationStats

__all__ = ["DSnoTModifier"]


def _prune_config_error(**field) -> Optional[str]:
    """The message ``PruneConfig`` raises for this one field's value, or None when it accepts it."""
    try:
        PruneConfig(progress=False, **field)
    except (ValueError, TypeError) as err:
        return str(err)
    return None


class DSnoTModifier(SparsityModifierBase):
    """DSnoT (training-free mask refinement, ICLR 2024) as an llm-compressor oneshot modifier.

    Sample yaml::

        dsnot_stage:
          sparsity_modifiers:
            DSnoTModifier:
              sparsity: 0.5
              mask_structure: "2:4"
              objective: dsnot

    Options of the base class (``SparsityModifierBase``):
        sparsity: unstructured ratio per row in [0, 1) (default 0.5), or a list with one value per
            target layer; ignored for N:M (N of every M are pruned).
        mask_structure: "0:0" (unstructured, default) or "N:M" such as "2:4".
        targets, ignore: which modules to prune (llm-compressor's matching). ``targets`` defaults to
            ``["Linear", "Conv1D"]`` (nn.Linear and transformers' Conv1D, GPT-2's transposed layers);
            ``ignore`` to ``["re:.*lm_head"]`` (DSnoT, Wanda and SparseGPT never prune the output head).
            A prunable layer of a decoder layer that is neither a target, nor ignored, nor a router is
            a ValueError naming it before calibration (``llmcompressor_targets.py``).
        sparsity_profile="owl", owl_m, owl_lmbda: OWL layer-wise sparsities (llm-compressor's names,
            all three together), computed here by dsnot_kernels rather than by llm-compressor (whose
            0.14.0.1 OWL pass fails): one dense pass of the model over the calibration data, the
            published rule per decoder layer (``dsnot_kernels.pruning.profile``), the mean of the
            layer sparsities = ``sparsity``; the layers' sparsities and outlier ratios are in
            ``modifier.owl``. Unstructured only. Or pass per-layer ratios as ``sparsity=[...]``
            with decoder-layer ``targets``.

    Options of DSnoT, with ``dsnot_kernels.PruneConfig``'s names and meanings:
        initial: initial mask, "wanda" (default), "magnitude", or any other ``PruneConfig.initial``.
        refine: False = the initial mask alone (e.g. ``refine=False`` is Wanda).
        objective: swap rule, "dsnot" (default) or any other ``PruneConfig.objective``; the
            inputs' second moment is gathered only for objectives (and initial methods) that use it.
        skip: "mlp" (default: refine attention projections only), "self_attn" or "none".
        window: candidates per list for objective "cov_window" (default 100).
        max_cycle_time, update_threshold, pow_of_var_regrowing: spec §3 (50, 0.1, 1.0).
        backend: ``refine_mask`` backend (None = best for the weights' device).
        reconstruct: False (default) zeroes the pruned weights and keeps the others; True then
            re-solves each row's kept weights for the least output error on the calibration inputs
            (``dsnot_kernels.weights.reconstruct``, as ``PruneConfig.reconstruct``; gathers the (C, C)
            second moment). The mask is the same either way.

    Mixture-of-experts models (``llmcompressor_experts.py``, docs/INTEGRATIONS.md): llm-compressor
    linearizes the fused 3-D experts into per-expert ``nn.Linear`` layers; each expert is pruned as
    ``prune_model`` prunes it (its routed tokens, one sample per sequence, ``gate_proj`` and
    ``up_proj`` as the model's one ``gate_up_proj``). A 3-D weight left in a decoder layer, or any
    weight ``prune_model`` would refuse, is an error naming it before calibration.
        expert_tokens: None (default: follow oneshot's ``moe_calibrate_all_experts``, llm-compressor's
            default True = every token to every expert, i.e. "all"), or "routed" / "all", which must
            agree with that flag (ValueError otherwise).
        expert_min_tokens, expert_fallback, expert_report_tokens: as ``PruneConfig``'s (1,
            "magnitude", 128). ``modifier.experts_report``: per experts module, the tokens of each
            expert, the experts that fell back, how many had fewer than ``expert_report_tokens``.

    After ``oneshot``, ``modifier.report`` lists one entry per pruned module (name, shape,
    refined, sparsity, swaps, mask time, calibration samples; with ``reconstruct``, the solver's
    ``reconstruct`` info: iterations, residual, ``converged``). A module whose reconstruction did
    not converge is logged as a warning (its rows' losses still did not rise).
    """

    sparsity: float | list[float] | dict[str, float] | None = 0.5
    targets: str | list[str] = Field(default_factory=lambda: list(coverage.DEFAULT_TARGETS))
    ignore: list[str] = Field(default_factory=lambda: ["re:.*lm_head"])

    initial: str = "wanda"
    refine: bool = True
    objective: str = "dsnot"
    skip: str = "mlp"
    window: int = ops.DEFAULT_WINDOW
    max_cycle_time: int = 50
    update_threshold: float = 0.1
    pow_of_var_regrowing: float = 1.0
    backend: Optional[str] = None
    reconstruct: bool = False
    expert_tokens: Optional[str] = None
    expert_min_tokens: int = 1
    expert_fallback: str = "magnitude"
    expert_report_tokens: int = 128

    _stats: dict = PrivateAttr(default_factory=dict)          # module -> CalibrationStats
    _layers: dict = PrivateAttr(default_factory=dict)         # sequential target name -> module
    _collectors: list = PrivateAttr(default_factory=list)     # (layer name, HookedCollector) per experts module
    _expert_linears: set = PrivateAttr(default_factory=set)   # ids: Linear layers of experts (collectors) and routers
    _experts_report: list = PrivateAttr(default_factory=list)
    _layer_names: list = PrivateAttr(default_factory=list)    # names of the sequential targets
    _report: list = PrivateAttr(default_factory=list)
    _owl: dict = PrivateAttr(default_factory=dict)             # {"sparsity": {layer: s}, "outlier_ratios": ...}

    # -- validation: PruneConfig's own checks, read at run time -------------------------------
    @field_validator("initial", "objective", "skip")
    @classmethod
    def _check_choice(cls, value, info):
        message = _prune_config_error(**{info.field_name: value})
        if message:
            raise ValueError(message)
        return value

    @field_validator("expert_fallback", "expert_min_tokens", "expert_report_tokens")
    @classmethod
    def _check_expert_option(cls, value, info):
        message = _prune_config_error(**{info.field_name: value})
        if message:
            raise ValueError(message)
        return value

    @field_validator("expert_tokens")
    @classmethod
    def _check_expert_tokens(cls, value):
        message = None if value is None else _prune_config_error(expert_tokens=value)
        if message:
            raise ValueError(message + " (or None: follow oneshot's moe_calibrate_all_experts)")
        return value

    @field_validator("window")
    @classmethod
    def _check_window(cls, value):
        message = _prune_config_error(window=value)
        if message:
            raise ValueError(message)
        return value

    @field_validator("max_cycle_time")
    @classmethod
    def _check_cycles(cls, value):
        if value < 0:
            raise ValueError(f"max_cycle_time must be >= 0, got {value}")
        return value

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, value):
        if value is not None and value not in ops.BACKENDS:
            raise ValueError(f"unknown backend {value!r}; expected None or one of {sorted(ops.BACKENDS)}")
        return value

    @field_validator("mask_structure")
    @classmethod
    def _check_mask_structure(cls, value):
        try:
            n, m = (int(v) for v in str(value).split(":"))
        except ValueError:
            raise ValueError(f'mask_structure must be "0:0" (unstructured) or "N:M" such as "2:4", '
                             f"got {value!r}") from None
        if (n, m) != (0, 0):
            parse_pattern(f"{n}:{m}")  # 0 < N < M, else ValueError
        return value

    @field_validator("sparsity")
    @classmethod
    def _check_sparsity(cls, value):
        values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        for v in values:
            if v is not None:
                message = _prune_config_error(sparsity=v)
                if message:
                    raise ValueError(message)
        return value

    @model_validator(mode="after")
    def _check_structure_and_sparsity(self):
        unstructured = str(self.mask_structure).split(":")[0].strip() == "0"
        if unstructured and self.sparsity is None and self.sparsity_profile is None:
            raise ValueError("sparsity is required for an unstructured mask (mask_structure='0:0')")
        return self

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def report(self) -> list:
        """One dict per pruned module: name, shape, refined, sparsity, swaps, mask_time_s, nsamples."""
        return list(self._report)

    def _needs_second_moment(self) -> bool:
        return (self.initial.startswith("sparsegpt") or self.objective in ops.SECOND_MOMENT_OBJECTIVES
                or self.reconstruct)

    def _config(self, sparsity) -> PruneConfig:
        pattern = f"{self._prune_n}:{self._prune_m}" if self._prune_n else "unstructured"
        return PruneConfig(sparsity=0.5 if sparsity is None or self._prune_n else float(sparsity),
                           pattern=pattern, initial=self.initial, refine=self.refine, skip=self.skip,
                           max_cycle_time=self.max_cycle_time, update_threshold=self.update_threshold,
                           pow_of_var_regrowing=self.pow_of_var_regrowing, objective=self.objective,
                           window=self.window, backend=self.backend, reconstruct=self.reconstruct,
                           expert_min_tokens=self.expert_min_tokens, expert_fallback=self.expert_fallback,
                           expert_report_tokens=self.expert_report_tokens, progress=False)

    def _layer_of(self, name: str) -> str:
        """The sequential target (decoder layer) holding ``name`` ("" when none does)."""
        best = ""
        for layer in self._layer_names:
            if name.startswith(layer + ".") and len(layer) > len(best):
                best = layer
        return best

    @property
    def owl(self) -> dict:
        """``{"sparsity": {layer: s}, "outlier_ratios": {layer: D}}`` after an OWL run, else {}."""
        return dict(self._owl)

    def _owl_pass(self, state) -> None:
        from dsnot_kernels.integrations.llmcompressor_owl import owl_layer_sparsities
        if self._prune_n:
            raise ValueError("sparsity_profile='owl' is for unstructured masks (mask_structure='0:0')")
        modules = {}
        for layer_name, layer in self._target_layers.items():
            for name, module in match_named_modules(layer, ["Linear", "Conv1D"]):
                full = f"{layer_name}.{name}".rstrip(".")
                if not match_targets(full, module, self.ignore) and is_prunable(module):
                    modules[full] = module

        def weight_of(module):
            with align_module_device(module):
                return weight_view(module).detach().clone()
        sparsity, ratios = owl_layer_sparsities(state.model, state.data.calib, modules, self._layer_of, weight_of,
                                                float(self.sparsity), float(self.owl_m), float(self.owl_lmbda))
        self._owl = {"sparsity": sparsity, "outlier_ratios": ratios}
        for layer, value in sparsity.items():
            logger.info(f"DSnoT OWL: {layer or '(model)'}: outlier ratio {ratios[layer]:.4f}, sparsity {value:.4f}")

    def _relative_name(self, name: str) -> str:
        """``name`` relative to the sequential target (decoder layer) that holds it."""
        best = ""
        for layer in self._layer_names:
            if name.startswith(layer + ".") and len(layer) > len(best):
                best = layer
        return name[len(best) + 1:] if best else name

    def _module_sparsity(self, module, name):
        if self._owl:
            return self._owl["sparsity"][self._layer_of(name)]
        sparsity = self._module_sparsities[module]
        if isinstance(sparsity, dict):  # OWL: {decoder layer name: sparsity}
            for layer, value in sparsity.items():
                if name == layer or name.startswith(layer + "."):
                    return value
            raise ValueError(f"{name}: no sparsity for it among the OWL layers {sorted(sparsity)}")
        return sparsity

    # -- lifecycle -------------------------------------------------------------------------------
    def on_initialize(self, state, **kwargs) -> bool:
        profile, self._owl = self.sparsity_profile, {}
        if profile == "owl":  # computed here (_owl_pass), not by the base class
            if not isinstance(self.sparsity, (int, float)):
                raise ValueError("sparsity_profile='owl' needs one sparsity (the mean of the layers'), got "
                                 f"{self.sparsity!r}")
            self.sparsity_profile = None
        try:
            done = super().on_initialize(state, **kwargs)
        finally:
            self.sparsity_profile = profile
        self._layers = dict(match_named_modules(state.model, self._sequential_targets))
        self._layer_names = list(self._layers)
        self._report, self._experts_report = [], []
        if profile == "owl":
            self._owl_pass(state)
        return done

    def on_calibration_start(self, state, event, **kwargs):
        super().on_calibration_start(state, event, **kwargs)
        coverage.register_conv1d(self)  # the base class matches Linear, not transformers' Conv1D (GPT-2)
        for module, name in self._module_names.items():
            if not is_prunable(module):
                self.remove_hooks()
                raise ValueError(f"DSnoTModifier prunes linear layers (nn.Linear, transformers Conv1D); "
                                 f"{name.rstrip('.')} is a {type(module).__name__}: add it to `ignore` "
                                 "or narrow `targets`")
        try:
            experts.attach_experts(self)  # checks, routers, expert collectors (llmcompressor_experts.py)
            coverage.check_coverage(self)  # every prunable layer of a decoder layer: target, ignored or router
        except Exception:
            self.remove_hooks()
            raise

    def calibrate_module(self, module: nn.Module, args: tuple, _output) -> None:
        """Forward hook: add the module's input, (B, T, C) = B samples, to its CalibrationStats."""
        if not args or not isinstance(args[0], torch.Tensor):
            raise ValueError(f"{self._module_names.get(module, module).rstrip('.')}: DSnoTModifier expects "
                             "the layer's input as its first positional argument")
        if id(module) in self._expert_linears:  # an expert's Linear (its collector has the rows) or a router
            return
        x = args[0]
        stats = self._stats.get(module)
        if stats is None:
            stats = CalibrationStats(weight_view(module).shape[1], device=get_execution_device(module),
                                     hessian=self._needs_second_moment())
            self._stats[module] = stats
        if x.dim() > 3:
            x = x.reshape(-1, x.shape[-2], x.shape[-1])
        stats.add_batch(x)

    def compress_modules(self) -> None:
        """Masks of every calibrated module (statistics of the unpruned layer), then zero them."""
        for module in list(self._stats):
            stats = self._stats[module]
            name = self._module_names[module].rstrip(".")
            config = self._config(self._module_sparsity(module, name))
            relative = self._relative_name(name)
            logger.info(f"DSnoT: pruning {name} using {stats.nsamples} samples")
            t0 = time.perf_counter()
            with torch.no_grad(), align_module_device(module):
                result = sublayer.sublayer_mask(relative, module, stats, config, False)
                # (mask, entry), or (mask, new weight or None, entry) where the initial method updates
                # the kept weights (SparseGPT as published)
                mask, new_weight, entry = result if len(result) == 3 else (result[0], None, result[1])
                pruned = module.weight.data.clone()
                view = pruned.t() if is_transposed(module) else pruned  # (out, in), as the mask
                if new_weight is not None:
                    view.copy_(new_weight)
                view[mask.to(view.device)] = 0
            update_offload_parameter(module, "weight", pruned)
            entry.update(name=name, kind=sublayer_kind(relative), nsamples=stats.nsamples,
                         total_time_s=time.perf_counter() - t0)
            solved = entry.get("reconstruct")
            if solved is not None and not solved["converged"]:
                logger.warning(f"DSnoT: {name}: the reconstruction did not converge on "
                               f"{solved['rows_not_converged']} rows in {solved['iterations']} iterations "
                               "(their losses did not rise)")
            self._report.append(entry)
            del self._stats[module]
        experts.compress_experts(self)

    @property
    def experts_report(self) -> list:
        """One dict per experts module pruned: path, num_experts, expert_tokens ("routed" / "all"),
        tokens (per expert), fallback (the experts under expert_min_tokens), few_tokens (how many had
        fewer than expert_report_tokens)."""
        return list(self._experts_report)

    def on_finalize(self, state, **kwargs) -> bool:
        if not self.ended_:
            self.on_end(state, None)  # removes the hooks
        left = len(self._stats) + sum(1 for _, c in self._collectors if c.active)
        self._stats, self._collectors, self._expert_linears = {}, [], set()
        self._module_names = {}
        self._module_sparsities = {}
        if left:
            raise ValueError(f"DSnoTModifier: {left} calibrated modules were never pruned")
        return True


ModifierFactory.register("DSnoTModifier", DSnoTModifier)
