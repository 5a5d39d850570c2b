"""Drop-in replacement for Intel Neural Compressor's DSnoT, backed by ``refine_mask``.

Neural Compressor (INC, versions 2.4 to 3.7) ships DSnoT as
``neural_compressor.compression.pruner.dsnot.DSnoT(initial_metric, sparsity_ratio, wrapped_layer,
...)``; its Wanda pruner (``prune_wanda(..., dsnot=True)``) imports that name at call time. This
module offers a function with the same signature, argument meanings and return value, and
``patch()`` to install it there, so an INC pipeline runs our kernels unchanged.

What INC's function reads from ``wrapped_layer`` (its ``WrappedGPT``): ``layer.weight`` (the
layer's weight, (out, in) for ``nn.Linear``), ``sum_metric_row`` and ``scaler_row`` ((in,)), and
``var`` ((in,) or (in, 1): INC keeps the variance with a trailing unit dimension).

Deliberate differences from INC's own code, all within docs/ALGORITHM.md's stated semantics:
  * the masks are those of the spec (§2-§3): INC sorts N:M groups without a stable order, sums the
    row error in its own order and lets exhausted cursors run into the middle of its lists (see
    the spec §3); on ordinary layers the masks agree (the test checks this on INC itself);
  * ``var == 0`` is legal here (INC divides by zero there);
  * ``initial_metric`` is not modified (INC overwrites it in place for N:M);
  * a ``transformers`` ``Conv1D`` layer's weight is transposed to (out, in) (INC's check looks at
    the wrapper instead of the layer and never transposes);
  * the mask is returned on ``initial_metric``'s device, computed on the weight's device.
"""
from __future__ import annotations

import contextlib
import importlib

import torch

from dsnot_kernels.ops import refine_mask

__all__ = ["DSnoT", "make_dsnot", "patch", "unpatch", "is_patched", "INC_MODULE"]

INC_MODULE = "neural_compressor.compression.pruner.dsnot"


def _layer_weight(layer, shape) -> torch.Tensor:
    """The layer's weight as (rows, cols) = (out, in), matching ``initial_metric``'s ``shape``."""
    weight = layer.weight.detach()
    is_conv1d = type(layer).__name__ == "Conv1D" and type(layer).__module__.startswith("transformers")
    if is_conv1d or (tuple(weight.shape) != tuple(shape) and tuple(weight.t().shape) == tuple(shape)):
        weight = weight.t()
    if tuple(weight.shape) != tuple(shape):
        raise ValueError(f"initial_metric has shape {tuple(shape)} but wrapped_layer.layer.weight has "
                         f"shape {tuple(layer.weight.shape)}")
    return weight


def _stat(wrapped_layer, name, cols, device) -> torch.Tensor:
    if not hasattr(wrapped_layer, name):
        raise AttributeError(f"wrapped_layer has no {name!r}; DSnoT needs the wrapped layer's calibration "
                             "statistics (scaler_row, sum_metric_row, var) gathered by add_batch")
    t = getattr(wrapped_layer, name)
    if not isinstance(t, torch.Tensor) or t.numel() != cols:
        raise ValueError(f"wrapped_layer.{name} must be a tensor of {cols} values, got "
                         f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    return t.reshape(-1).to(device=device, dtype=torch.float32)


def make_dsnot(backend=None):
    """Return an INC-compatible ``DSnoT`` function that calls ``refine_mask`` with ``backend``."""

    def DSnoT(initial_metric, sparsity_ratio, wrapped_layer, prune_n=0, prune_m=0,
              pow_of_var_regrowing=1.0, max_cycle_time=100, without_same_sign=True,
              update_threshold=0.1):
        """DSnoT mask of one wrapped layer, as INC's ``DSnoT`` (spec §2-§3).

        Args:
            initial_metric: (rows, cols) float, the initial pruning metric (INC passes Wanda's).
            sparsity_ratio: unstructured sparsity in [0, 1) (ignored for N:M).
            wrapped_layer: INC's ``WrappedGPT`` or any object with ``layer.weight``,
                ``sum_metric_row``, ``var`` and ``scaler_row``.
            prune_n, prune_m: N:M pattern when ``prune_n > 0``.
            pow_of_var_regrowing, max_cycle_time, without_same_sign, update_threshold: as in
                ``refine_mask`` (INC's default ``max_cycle_time`` is 100).

        Returns:
            (rows, cols) bool mask, True = pruned, on ``initial_metric``'s device.
        """
        if not isinstance(initial_metric, torch.Tensor) or initial_metric.dim() != 2:
            raise ValueError("initial_metric must be a 2-D tensor (out_features, in_features)")
        if getattr(wrapped_layer, "nsamples", None) == 0:  # INC's WrappedGPT counts its add_batch samples
            raise ValueError("wrapped_layer has seen no calibration sample (nsamples == 0): its statistics are "
                             "all 0 and would prune by column index; run calibration inputs through it first")
        weight = _layer_weight(wrapped_layer.layer, initial_metric.shape)
        cols = weight.shape[1]
        dev = weight.device
        stats = [_stat(wrapped_layer, n, cols, dev) for n in ("sum_metric_row", "var", "scaler_row")]
        mask = refine_mask(weight, *stats, initial_metric=initial_metric.to(dev),
                           sparsity=float(sparsity_ratio), prune_n=int(prune_n), prune_m=int(prune_m),
                           max_cycle_time=int(max_cycle_time), update_threshold=float(update_threshold),
                           pow_of_var_regrowing=float(pow_of_var_regrowing),
                           without_same_sign=bool(without_same_sign), backend=backend)
        return mask.to(initial_metric.device)

    DSnoT.__dsnot_kernels__ = True  # marks the replacement, so patch() can tell it from INC's own
    return DSnoT


DSnoT = make_dsnot()

_original = None  # INC's own DSnoT while patched


def _inc_module():
    try:
        return importlib.import_module(INC_MODULE)
    except ImportError as exc:
        raise ImportError(f"neural-compressor with {INC_MODULE} is not importable ({exc}); "
                          "DSnoT is in neural-compressor 2.4 to 3.7") from exc


def is_patched() -> bool:
    """True while INC's ``DSnoT`` is this module's replacement."""
    try:
        module = importlib.import_module(INC_MODULE)
    except ImportError:
        return False
    return getattr(module.DSnoT, "__dsnot_kernels__", False)


class _Patch(contextlib.AbstractContextManager):
    """Handle returned by ``patch()``: ``with patch(): ...`` restores INC's function on exit."""

    def __exit__(self, *exc):
        unpatch()
        return False


def patch(backend=None) -> _Patch:
    """Swap ``neural_compressor.compression.pruner.dsnot.DSnoT`` for ours (``backend`` as in
    ``refine_mask``). INC's Wanda pruner imports the name at call time, so ``prune_wanda(...,
    dsnot=True)`` then runs our kernels. Reversible with ``unpatch()`` or as a context manager.
    Patching again only changes the backend; code that bound INC's function to another name before
    patching keeps it.
    """
    global _original
    module = _inc_module()
    if _original is None:
        _original = module.DSnoT
    module.DSnoT = make_dsnot(backend)
    return _Patch()


def unpatch() -> None:
    """Put INC's own ``DSnoT`` back (no-op when not patched)."""
    global _original
    if _original is None:
        return
    module = importlib.import_module(INC_MODULE)
    module.DSnoT = _original
    _original = None
