"""Text for calibration and evaluation, offline.

Default: the English prose of the standard library's ``pydoc_data.topics`` (the help topics of the
Python language reference, ~65k words), topics joined in sorted order; its first half calibrates,
its second half evaluates (split at the paragraph break nearest the middle). Or a user's files.
Calibration samples are random windows of ``seqlen`` tokens, drawn as the authors draw theirs
(``random.seed(seed)``; ``randint(0, len - seqlen - 1)`` per sample).
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

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
    """(N,) token ids of ``text``."""
    return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long).reshape(-1)


def calibration_windows(token_ids: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """(nsamples, seqlen) random windows of ``token_ids`` (the authors' sampling)."""
    ids = token_ids.reshape(-1)
    if ids.numel() <= seqlen + 1:
        raise ValueError(f"{ids.numel()} calibration tokens cannot give windows of {seqlen}")
    rng = random.Random(seed)
    rows = []
    for _ in range(nsamples):
        i = rng.randint(0, ids.numel() - seqlen - 1)
        rows.append(ids[i:i + seqlen])
    return torch.stack(rows)


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
