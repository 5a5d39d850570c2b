"""The BOS rule of calibration and evaluation windows (docs/MODELS.md, "BOS").

Windows are cut from one token stream (the whole text tokenised once). A model trained with a BOS
token at the start of every sequence sees none in a window cut mid-stream, so its statistics and
perplexities are off its distribution. ``bos`` chooses:

- ``"never"``: windows are plain slices of the stream, exactly as before this option existed.
- ``"always"``: every window is ``[BOS] + the next (seqlen - 1) stream tokens``; a BOS that the
  tokenizer put at the start of the stream is dropped from it first (so no window holds two).
  Needs a BOS id: ``bos_token_id=``, else the tokenizer's, else the model's config or generation
  config; none is a ``ValueError``.
- ``"auto"``: ``"always"`` where the tokenizer adds a BOS to an encoded text
  (``tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id``), else ``"never"``. Without a
  tokenizer it decides from the stream: a stream that begins with the BOS id is one that a BOS
  tokenizer encoded (``dsnot_kernels.data.tokenize`` keeps that leading BOS), so ``"always"``;
  any other stream, or no BOS id known, ``"never"``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

BOS_CHOICES = ("auto", "always", "never")


@dataclass
class BosRule:
    """What a window rule resolved to: ``use`` (windows start with BOS), ``bos_token_id``, ``why``."""
    rule: str
    use: bool
    bos_token_id: "int | None"
    why: str

    def to_dict(self) -> dict:
        return {"rule": self.rule, "used": self.use, "bos_token_id": self.bos_token_id, "why": self.why}

    def describe(self) -> str:
        if self.use:
            return f"BOS {self.rule}: each window starts with BOS (id {self.bos_token_id}; {self.why})"
        return f"BOS {self.rule}: windows are plain slices of the stream ({self.why})"


def check_bos(bos) -> str:
    if bos not in BOS_CHOICES:
        raise ValueError(f"bos must be one of {BOS_CHOICES}, got {bos!r}")
    return bos


def tokenizer_adds_bos(tokenizer) -> bool:
    """True when ``tokenizer`` puts its BOS token at the start of an encoded text."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return len(ids) > 0 and int(ids[0]) == int(bos_id)


def model_bos_token_id(model) -> "int | None":
    """The BOS id of ``model.config`` or ``model.generation_config`` (None when neither has one)."""
    for cfg in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        bos = getattr(cfg, "bos_token_id", None)
        if isinstance(bos, (list, tuple)):
            bos = bos[0] if bos else None
        if bos is not None:
            return int(bos)
    return None


def resolve_bos(bos, *, tokenizer=None, bos_token_id=None, model=None, stream=None) -> BosRule:
    """Resolve ``bos`` ("auto" | "always" | "never") to a ``BosRule`` (module docstring)."""
    check_bos(bos)
    if bos == "never":
        return BosRule("never", False, None, "as asked")
    bos_id, source = bos_token_id, "given"
    if bos_id is None and tokenizer is not None and getattr(tokenizer, "bos_token_id", None) is not None:
        bos_id, source = tokenizer.bos_token_id, "the tokenizer's"
    if bos_id is None and model is not None:
        bos_id, source = model_bos_token_id(model), "the model config's"
    if bos == "always":
        if bos_id is None:
            raise ValueError('bos="always" needs a BOS token id, and none is known: pass bos_token_id=, or a '
                             "tokenizer or model whose config has bos_token_id")
        return BosRule("always", True, int(bos_id), f"as asked; id from {source}")
    if tokenizer is not None:
        if tokenizer_adds_bos(tokenizer):
            return BosRule("auto", True, int(tokenizer.bos_token_id), "the tokenizer adds one")
        return BosRule("auto", False, None, "the tokenizer adds none")
    if bos_id is None:
        return BosRule("auto", False, None, "no tokenizer and no BOS id known")
    ids = None if stream is None else stream.reshape(-1)
    if ids is not None and ids.numel() and int(ids[0]) == int(bos_id):
        return BosRule("auto", True, int(bos_id), "the stream begins with BOS")
    return BosRule("auto", False, None, "the stream does not begin with BOS")


def strip_leading_bos(ids: torch.Tensor, bos_id: int) -> torch.Tensor:
    """(N,) ``ids`` without the one BOS a tokenizer puts at the start of the stream, if there."""
    ids = ids.reshape(-1)
    return ids[1:] if ids.numel() and int(ids[0]) == int(bos_id) else ids


def calibration_bos(calibration: torch.Tensor, bos: str, model=None, bos_token_id=None):
    """``(calibration, report entry)`` of ``prune_model``'s rule for the (nsamples, seqlen) windows it is given.

    The driver gets token ids, not text, so the tokenizer's rule is applied where the windows are
    made (``calibration_windows(..., bos="auto", tokenizer=...)``). Here "auto" and "never" use the
    windows as given; "always" makes every window start with BOS: a window that does not becomes
    ``[BOS] + its first seqlen - 1 tokens`` (same shape). The entry says which rule ran, the BOS id
    and how many windows start with BOS (and how many were changed).
    """
    check_bos(bos)
    bos_id = bos_token_id if bos_token_id is not None else model_bos_token_id(model)
    entry = {"rule": bos, "bos_token_id": None if bos_id is None else int(bos_id), "windows_prefixed": 0}
    if bos == "always":
        if bos_id is None:
            raise ValueError('bos="always" needs a BOS token id: the model config has no bos_token_id; '
                             "pass PruneConfig(bos_token_id=...)")
        missing = calibration[:, 0] != int(bos_id)
        if bool(missing.any()):
            calibration = calibration.clone()
            shifted = calibration[missing, :-1]
            calibration[missing, 1:] = shifted
            calibration[missing, 0] = int(bos_id)
        entry["windows_prefixed"] = int(missing.sum())
    entry["windows_with_bos"] = 0 if bos_id is None else int((calibration[:, 0] == int(bos_id)).sum())
    entry["used"] = entry["windows_with_bos"] > 0
    return calibration, entry
