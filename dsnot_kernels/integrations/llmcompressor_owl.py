"""OWL layer sparsities for ``DSnoTModifier`` (``sparsity_profile="owl"``), computed by dsnot_kernels.

llm-compressor 0.14.0.1's own OWL pass fails before any modifier runs; this one runs the dense
model once over the calibration dataloader with forward hooks on the modules the modifier will
prune, gathers Wanda's statistics per module (``CalibrationStats.scaler_row``), and applies the
published rule per sequential target (decoder layer): ``dsnot_kernels.pruning.profile``. Every
layer sees the dense model's activations, as in OWL's code and in ``prune_model``'s OWL pass.
"""
from __future__ import annotations

import torch

from dsnot_kernels.pruning.owl import block_outlier_ratio
from dsnot_kernels.pruning.profile import owl_block_sparsity, wanda_scores
from dsnot_kernels.stats import CalibrationStats


def _to(batch, device):
    if isinstance(batch, dict):
        return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    raise TypeError(f"DSnoTModifier OWL: a calibration batch must be a dict of tensors, got {type(batch).__name__}")


def _input_device(model):
    try:
        from compressed_tensors.utils import get_execution_device
        return get_execution_device(model.get_input_embeddings())
    except Exception:  # no compressed_tensors helper for this model: where its first parameter is
        return next(model.parameters()).device


def owl_layer_sparsities(model, dataloader, modules: dict, layer_of, weight_of, sparsity: float, m: float,
                         lam: float) -> tuple:
    """``({layer name: sparsity}, {layer name: outlier ratio})`` of OWL over ``modules``
    (``{full name: module}``), grouped by ``layer_of(full name)`` (the decoder layer holding it), in
    the layers' order of appearance. ``weight_of(module)``: its (rows, cols) weight, onloaded.

    The statistics are float32 where each module's input is; every batch of ``dataloader`` (dicts
    of tensors, as llm-compressor's calibration loader gives) goes through ``model`` once, dense."""
    if dataloader is None:
        raise ValueError("DSnoTModifier sparsity_profile='owl' needs calibration data")
    stats, hooks = {}, []

    def hook(name):
        def fn(module, args, _out):
            x = args[0]
            x = x.reshape(-1, x.shape[-2], x.shape[-1]) if x.dim() >= 3 else x.reshape(1, -1, x.shape[-1])
            if name not in stats:
                stats[name] = CalibrationStats(x.shape[-1], device=x.device)
            stats[name].add_batch(x.detach())
        return fn
    for name, module in modules.items():
        hooks.append(module.register_forward_hook(hook(name)))
    device = _input_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in dataloader:
                model(**_to(batch, device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    groups: dict = {}
    for name, module in modules.items():
        if name not in stats:
            raise ValueError(f"DSnoTModifier OWL: {name} was never called by the model's forward")
        weight = weight_of(module)
        groups.setdefault(layer_of(name), []).append(wanda_scores(weight.to(stats[name].device),
                                                                  stats[name].scaler_row))
    layers = list(groups)
    ratios = [block_outlier_ratio(groups[layer], m) for layer in layers]
    return dict(zip(layers, owl_block_sparsity(ratios, sparsity, lam))), dict(zip(layers, ratios))
