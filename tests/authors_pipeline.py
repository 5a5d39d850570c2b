"""A transcription, written for these tests, of the authors' layer-by-layer DSnoT pipeline
(zyxxmu/DSnoT ``prune_DSnoT`` with its ``WrappedGPT`` statistics), for parity tests.

What it transcribes: block 0's inputs gathered one calibration sample per model call; per block,
every linear sub-layer hooked at once and the dense block run one sample at a time; each hook
updates float32 running statistics per call with the wrapper's own order of operations
(``scaler_row *= n / (n + t); n += t; scaler_row += ||x||² / n``, and the same for the sum; the
within-sample variance pooled by token count); then every sub-layer's mask from those statistics
(initial metric ``|W| * torch.sqrt(scaler_row)``, ATen's float32 square root, as their code;
refinement of the attention projections by ``tests/oracle.py`` fed those square roots, with each
row's initial error summed by ``torch.sum`` as their code, ``err_sum="torch"``); all
pruned weights zeroed; the block run again one sample at a time to make the next block's inputs.
Shares no statistics or driver code with ``dsnot_kernels`` (it borrows only the capture of the
block calls' keyword arguments, which the authors take from their catcher).
"""
from __future__ import annotations

import torch
from torch import nn

from oracle import oracle


class RunningStats:
    """The wrapper's per-call recurrences, transcribed."""

    def __init__(self, cols):
        z = lambda: torch.zeros(cols, dtype=torch.float32)  # noqa: E731
        self.scaler_row, self.sum_metric_row, self.mean, self.var = z(), z(), z(), z()
        self.nsamples = self.ntokens = 0

    def add(self, inp):
        if inp.dim() == 2:
            inp = inp.unsqueeze(0)
        t = inp.shape[0]
        inp = inp.reshape(-1, inp.shape[-1]).t().type(torch.float32)
        mean = torch.mean(inp, dim=1, keepdim=True)
        var = torch.var(inp, dim=1, unbiased=False, keepdim=True)
        num = inp.shape[1]
        if self.ntokens == 0:
            self.var, self.mean = var, mean
        else:
            self.var = (self.var * self.ntokens + var * num) / (self.ntokens + num)
            self.mean = (self.mean * self.ntokens + mean * num) / (self.ntokens + num)
        self.ntokens += num
        self.scaler_row *= self.nsamples / (self.nsamples + t)
        self.sum_metric_row *= self.nsamples / (self.nsamples + t)
        self.nsamples += t
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples
        self.sum_metric_row += torch.sum(inp, dim=1) / self.nsamples


def initial_mask(metric, sparsity, prune_n, prune_m):
    """Lowest metric pruned: unstructured, the first ``int(cols * sparsity)`` of a stable sort; N:M,
    the N smallest of each group of M (stable order, ties by lower index)."""
    mask = torch.zeros_like(metric, dtype=torch.bool)
    if prune_n:
        for g in range(0, metric.shape[1], prune_m):
            idx = torch.sort(metric[:, g:g + prune_m], dim=1, stable=True)[1][:, :prune_n] + g
            mask.scatter_(1, idx, True)
    else:
        k = int(metric.shape[1] * sparsity)
        mask.scatter_(1, torch.sort(metric, dim=1, stable=True)[1][:, :k], True)
    return mask


def _linears(block):
    return {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}


def authors_masks(model, calibration, sparsity=0.5, prune_n=0, prune_m=0, skip="mlp",
                  max_cycle_time=50, update_threshold=0.1, skipped_ties="lower"):
    """Prune ``model`` (a Llama-like causal LM) in place as the authors' pipeline does; returns
    ``{(block, name): mask}`` (True = pruned) and ``{(block, name): RunningStats}``.

    skipped_ties="topk": a skipped sub-layer's N:M mask by ``torch.topk(largest=False)`` per group,
    as their code picks it (its tie order; "lower": ties to the lower column)."""
    from dsnot_kernels.pruning.capture import block_output, capture_block_calls

    blocks = model.model.layers
    masks, all_stats = {}, {}
    with torch.no_grad():
        cap = capture_block_calls(model, blocks, [calibration[i:i + 1] for i in range(calibration.shape[0])],
                                  torch.device("cpu"))
        inps = list(cap.inputs)
        for i, block in enumerate(blocks):
            calls = [c[i] for c in cap.calls]
            subs = _linears(block)
            stats = {n: RunningStats(m.in_features) for n, m in subs.items()}
            hooks = [m.register_forward_hook(lambda mod, a, o, n=n: stats[n].add(a[0].data))
                     for n, m in subs.items()]
            for x, call in zip(inps, calls):
                block(x, *call.args, **call.kwargs)
            for h in hooks:
                h.remove()
            for name, module in subs.items():
                st, W = stats[name], module.weight.data
                roots = torch.sqrt(st.scaler_row.reshape(1, -1)).reshape(-1)
                start = initial_mask(W.abs() * roots.reshape(1, -1), sparsity, prune_n, prune_m)
                if name.split(".")[0] == skip:
                    mask = start
                    if prune_n and skipped_ties == "topk":
                        metric = W.abs() * roots.reshape(1, -1)
                        mask = torch.zeros_like(start)
                        for g in range(0, W.shape[1], prune_m):
                            idx = torch.topk(metric[:, g:g + prune_m], prune_n, dim=1, largest=False)[1] + g
                            mask.scatter_(1, idx, True)
                else:
                    mask, _ = oracle(W, st.sum_metric_row, st.var.reshape(-1), st.scaler_row, initial_mask=start,
                                     sparsity=sparsity, prune_n=prune_n, prune_m=prune_m,
                                     max_cycle_time=max_cycle_time, update_threshold=update_threshold,
                                     sqrt_scaler=roots, err_sum="torch")
                masks[(i, name)], all_stats[(i, name)] = mask, st
            for name, module in subs.items():
                module.weight.data[masks[(i, name)]] = 0
            inps = [block_output(block(x, *call.args, **call.kwargs)) for x, call in zip(inps, calls)]
    return masks, all_stats
