"""Perplexity with the authors' WikiText-2 protocol (their ``eval_ppl_wikitext``), on any token stream.

Without BOS (``bos="never"``, or "auto" for a model whose tokenizer adds none): the stream is cut
into ``len // seqlen`` consecutive windows (the tail is dropped); each window's mean next-token
cross-entropy over its ``seqlen - 1`` predicted tokens is weighted by ``seqlen`` (as theirs is),
and ppl = exp(sum / (windows · seqlen)).

With BOS (``dsnot_kernels.bos``): a BOS at the start of the stream is dropped, the rest is cut into
``len // (seqlen - 1)`` consecutive pieces of ``seqlen - 1`` tokens (the tail dropped), and each
window is BOS followed by one piece, so every stream token of the evaluated pieces is predicted
exactly once and no prediction is of BOS. Each window's mean cross-entropy over its ``seqlen - 1``
predicted tokens is weighted as above (equal weights: ppl = exp(mean of the window means)).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dsnot_kernels.bos import resolve_bos, strip_leading_bos


@torch.no_grad()
def perplexity(model, token_ids: torch.Tensor, seqlen: int, *, max_windows=None, batch_size: int = 1,
               device=None, progress: bool = False, desc: str = "perplexity", bos: str = "auto",
               tokenizer=None, bos_token_id=None) -> float:
    """Perplexity of ``model`` on ``token_ids`` ((N,) or (1, N) ints) in windows of ``seqlen`` tokens.

    max_windows: evaluate only the first windows (None = all). device: where inputs go (default:
    the model's first parameter's device). progress: a tqdm bar over the windows, labelled ``desc``.
    bos: "auto" | "always" | "never" (module docstring, ``dsnot_kernels.bos``). "auto" follows
    ``tokenizer`` when given, else uses BOS windows when the stream begins with the BOS id
    (``bos_token_id``, else the model's config), as a BOS tokenizer's ``tokenize`` output does.
    """
    ids = token_ids.reshape(-1).long()
    seqlen = int(seqlen)
    if seqlen < 2:
        raise ValueError(f"seqlen must be >= 2, got {seqlen}")
    rule = resolve_bos(bos, tokenizer=tokenizer, bos_token_id=bos_token_id, model=model, stream=ids)
    body = seqlen - 1 if rule.use else seqlen
    if rule.use:
        ids = strip_leading_bos(ids, rule.bos_token_id)
    windows = ids.numel() // body
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
            inputs = ids[start * body: stop * body].reshape(stop - start, body)
            if rule.use:
                inputs = torch.cat([torch.full((stop - start, 1), rule.bos_token_id, dtype=inputs.dtype),
                                    inputs], dim=1)
            inputs = inputs.to(device)
            logits = model(input_ids=inputs, use_cache=False).logits
            loss = F.cross_entropy(logits[:, :-1, :].float().reshape(-1, logits.shape[-1]),
                                   inputs[:, 1:].reshape(-1))
            total += float(loss) * seqlen * (stop - start)
    finally:
        model.train(was_training)
    return math.exp(total / (windows * seqlen))
