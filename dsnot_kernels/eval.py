"""Perplexity with the authors' WikiText-2 protocol (their ``eval_ppl_wikitext``), on any token stream.

The stream is cut into ``len // seqlen`` consecutive windows (the tail is dropped); each window's
mean next-token cross-entropy is weighted by ``seqlen`` (as theirs is), and
ppl = exp(sum / (windows · seqlen)).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


@torch.no_grad()
def perplexity(model, token_ids: torch.Tensor, seqlen: int, *, max_windows=None, batch_size: int = 1,
               device=None, progress: bool = False, desc: str = "perplexity") -> float:
    """Perplexity of ``model`` on ``token_ids`` ((N,) or (1, N) ints) in windows of ``seqlen`` tokens.

    max_windows: evaluate only the first windows (None = all). device: where inputs go (default:
    the model's first parameter's device). progress: a tqdm bar over the windows, labelled ``desc``.
    """
    ids = token_ids.reshape(-1).long()
    seqlen = int(seqlen)
    if seqlen < 2:
        raise ValueError(f"seqlen must be >= 2, got {seqlen}")
    windows = ids.numel() // seqlen
    if max_windows is not None:
        windows = min(windows, int(max_windows))
    if windows == 0:
        raise ValueError(f"{ids.numel()} tokens are fewer than one window of {seqlen}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        starts = range(0, windows, batch_size)
        if progress:
            from tqdm.auto import tqdm
            starts = tqdm(starts, desc=desc, unit="batch")
        for start in starts:
            stop = min(start + batch_size, windows)
            inputs = ids[start * seqlen: stop * seqlen].reshape(stop - start, seqlen).to(device)
            logits = model(input_ids=inputs, use_cache=False).logits
            loss = F.cross_entropy(logits[:, :-1, :].float().reshape(-1, logits.shape[-1]),
                                   inputs[:, 1:].reshape(-1))
            total += float(loss) * seqlen * (stop - start)
    finally:
        model.train(was_training)
    return math.exp(total / (windows * seqlen))
