"""Text for calibration and evaluation, offline.

Default: the English prose of the standard library's ``pydoc_data.topics`` (the help topics of the
Python language reference, ~65k words), topics joined in sorted order; its first half calibrates,
its second half evaluates (split at the paragraph break nearest the middle). Or a user's files.
Calibration samples are random windows of ``seqlen`` tokens, drawn as the authors draw theirs
(``random.seed(seed)``; ``randint(0, len - seqlen - 1)`` per sample). Where windows start with BOS
(``bos``, ``dsnot_kernels.bos``) a window is BOS and the next ``seqlen - 1`` stream tokens, drawn the
same way from the stream without its leading BOS (``randint(0, len - (seqlen - 1) - 1)``).
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

from dsnot_kernels.bos import resolve_bos, strip_leading_bos

DEFAULT_TEXT_NAME = "pydoc_data.topics (Python standard library help topics)"


def pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def split_halves(text: str):
    """``(first half, second half)``, cut at the paragraph break nearest the middle."""
    mid = len(text) // 2
    cut = text.find("\n\n", mid)
    cut = mid if cut < 0 else cut
    return text[:cut], text[cut:].lstrip("\n")


def default_texts():
    """``(calibration text, evaluation text)``: the two halves of ``pydoc_text()``."""
    return split_halves(pydoc_text())


def read_text(path) -> str:
    return Path(path).read_text(encoding="utf-8", errors="replace")


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """(N,) token ids of ``text``, encoded once: a tokenizer that adds a BOS puts one at the start
    of the stream only (never mid-stream); the window helpers drop it where windows get their own."""
    return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long).reshape(-1)


def calibration_windows(token_ids: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0, *,
                        bos: str = "auto", tokenizer=None, bos_token_id=None,
                        return_rule: bool = False):
    """(nsamples, seqlen) long tensor of random windows of ``token_ids`` ((N,) ints; the authors' sampling).

    bos: "auto" | "always" | "never" (``dsnot_kernels.bos``): with BOS, each window is the BOS id and
    the next ``seqlen - 1`` tokens of the stream (a leading BOS of the stream dropped first).
    "auto" follows ``tokenizer`` (or, without one, whether the stream begins with ``bos_token_id``;
    neither given: no BOS). "never" is the plain slices of before. return_rule: also return the
    resolved ``BosRule``.
    """
    ids = token_ids.reshape(-1)
    rule = resolve_bos(bos, tokenizer=tokenizer, bos_token_id=bos_token_id, stream=ids)
    body = seqlen - 1 if rule.use else seqlen
    if rule.use:
        ids = strip_leading_bos(ids, rule.bos_token_id)
    if seqlen < 1 or ids.numel() <= body + 1:
        raise ValueError(f"{ids.numel()} calibration tokens cannot give windows of {seqlen}"
                         + (" (BOS + stream tokens)" if rule.use else ""))
    rng = random.Random(seed)
    rows = []
    for _ in range(nsamples):
        i = rng.randint(0, ids.numel() - body - 1)
        rows.append(ids[i:i + body])
    out = torch.stack(rows)
    if rule.use:
        out = torch.cat([torch.full((nsamples, 1), rule.bos_token_id, dtype=out.dtype), out], dim=1)
    return (out, rule) if return_rule else out


def load_texts(calib=None, eval_file=None):
    """``(calibration text, evaluation text, description)`` from files or the default."""
    cal_default, eval_default = default_texts()
    cal = read_text(calib) if calib else cal_default
    ev = read_text(eval_file) if eval_file else eval_default
    desc = {"calibration": str(calib) if calib else DEFAULT_TEXT_NAME + ", first half",
            "evaluation": str(eval_file) if eval_file else DEFAULT_TEXT_NAME + ", second half"}
    return cal, ev, desc


def wikitext2_test_text(local=None) -> str:
    """WikiText-2's test split joined as the published protocol does (``dsnot_kernels.wikitext``):
    from ``local`` (raw file, parquet/arrow file or folder) or the ``datasets`` library."""
    from dsnot_kernels.wikitext import wikitext2_test_text as text
    return text(local)
