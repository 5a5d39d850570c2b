"""Calibration statistics of one linear layer's inputs (spec §1).

The statistics follow the authors' ``WrappedGPT.add_batch`` recurrences exactly, one calibration
sample at a time (the per-sample reductions of a batch are computed together, ``sample_moments``,
bit-for-bit as one sample at a time), in float32 on the statistics' device. A batch of B samples is split into its
samples and each goes through the same per-sample update, so B samples in one call give bit-for-bit
the numbers of B single-sample calls, and the numbers of the authors' driver on the same inputs.
"""
from __future__ import annotations

import math
import operator

import torch


class CalibrationStats:
    """Running input statistics of a linear layer with ``in_features`` input channels.

    Attributes (all float32 on ``device``):
        scaler_row: (in_features,) mean over samples of the per-sample sum over tokens of x_j².
        sum_metric_row: (in_features,) mean over samples of the per-sample sum over tokens of x_j.
        var: (in_features,) within-sample population variance, pooled over samples by token count
            (between-sample spread is not included, as in the authors' code).
        mean: (in_features,) per-token mean over all tokens seen.
        hessian: (in_features, in_features) ``(2/S) * sum X Xᵀ`` (only with ``hessian=True``).
            The authors' DSnoT wrapper allocates H but never accumulates it; this one does, with
            SparseGPT's own recurrence.
        nsamples: samples seen.
    """

    def __init__(self, in_features: int, device="cpu", hessian: bool = False):
        if isinstance(in_features, bool):
            raise TypeError("in_features must be an int, got bool")
        try:
            in_features = operator.index(in_features)  # ints and numpy ints; not 2.5 or "4"
        except TypeError:
            raise TypeError(f"in_features must be an int, got {type(in_features).__name__}") from None
        if in_features <= 0:
            raise ValueError(f"in_features must be positive, got {in_features}")
        self.in_features = in_features
        self.device = torch.device(device)
        zeros = lambda: torch.zeros(self.in_features, dtype=torch.float32, device=self.device)  # noqa: E731
        self.scaler_row = zeros()
        self.sum_metric_row = zeros()
        self.var = zeros()
        self.mean = zeros()
        self.nsamples = 0
        self.ntokens = 0
        self.hessian = (torch.zeros((self.in_features, self.in_features), dtype=torch.float32, device=self.device)
                        if hessian else None)

    @property
    def is_empty(self) -> bool:
        """True until a sample has been added (every statistic is then 0: no mask can be chosen
        from it; ``check_not_empty`` raises instead)."""
        return self.nsamples == 0

    def check_not_empty(self, what: str = "these statistics") -> "CalibrationStats":
        """Return self; raise ``ValueError`` if no sample was added (what the driver and the
        integrations call before a mask is chosen from the statistics)."""
        if self.nsamples == 0:
            raise ValueError(f"{what}: CalibrationStats has seen no sample (all statistics are 0, so the "
                             "Wanda metric would prune by column index); run calibration inputs through "
                             "add_batch first")
        return self

    def add_batch(self, x: torch.Tensor) -> None:
        """Add samples: ``x`` (B, T, in_features) = B samples of T tokens, or (T, in_features) = one.

        Any floating dtype and device; moved to the statistics' device and float32.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"add_batch: x must be a torch.Tensor, got {type(x).__name__}")
        if x.layout != torch.strided:
            raise TypeError(f"add_batch: x must be a dense (strided) tensor, got layout {x.layout}")
        if not x.is_floating_point():
            raise TypeError(f"add_batch: x must be a floating-point tensor, got {x.dtype}")
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if x.dim() != 3 or x.shape[-1] != self.in_features:
            raise ValueError(f"add_batch expects (B, T, {self.in_features}) or (T, {self.in_features}), "
                             f"got {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError("add_batch got samples of 0 tokens")
        x = x.detach().to(self.device)
        moments = sample_moments(x)
        for b in range(x.shape[0]):
            inp = x[b].t().type(torch.float32) if self.hessian is not None else None
            self.apply_sample(moments, b, inp=inp)

    def apply_sample(self, moments: dict, b: int, inp=None, product=None) -> None:
        """One step of the per-sample recurrences, with sample ``b`` of ``sample_moments(...)``.

        ``inp`` (C, T) is the sample (needed for ``hessian`` unless ``product`` is given);
        ``product`` (C, C) is ``sample_product(inp, n)`` precomputed for this sample's 1-based
        index n = ``nsamples + 1`` (the distributed driver computes it on the rank that holds the
        sample). The order of operations on each tensor is the authors' (``WrappedGPT.add_batch``).
        """
        mean_inp, var_inp, num = moments["mean"][b], moments["var"][b], int(moments["num"][b])
        if self.ntokens == 0:
            self.var, self.mean = var_inp.clone(), mean_inp.clone()
        else:
            self.var = (self.var * self.ntokens + var_inp * num) / (self.ntokens + num)
            self.mean = (self.mean * self.ntokens + mean_inp * num) / (self.ntokens + num)
        self.ntokens += num

        self.scaler_row *= self.nsamples / (self.nsamples + 1)
        self.sum_metric_row *= self.nsamples / (self.nsamples + 1)
        if self.hessian is not None:  # SparseGPT's recurrence, one sample
            self.hessian *= self.nsamples / (self.nsamples + 1)
        self.nsamples += 1
        self.scaler_row += moments["sq_norm"][b] / self.nsamples
        self.sum_metric_row += moments["sum"][b] / self.nsamples
        if self.hessian is not None:
            self.hessian += product if product is not None else sample_product(inp, self.nsamples)

    def to_dict(self) -> dict:
        """The statistics as a dict of tensors (for saving with ``torch.save``)."""
        out = {"scaler_row": self.scaler_row, "sum_metric_row": self.sum_metric_row, "var": self.var,
               "mean": self.mean, "nsamples": self.nsamples, "ntokens": self.ntokens}
        if self.hessian is not None:
            out["hessian"] = self.hessian
        return out


def sample_product(inp: torch.Tensor, n: int) -> torch.Tensor:
    """(C, C) contribution ``(sqrt(2/n) inp)(sqrt(2/n) inp)ᵀ`` of the n-th sample (1-based), inp (C, T)."""
    scaled = math.sqrt(2 / n) * inp
    return scaled.matmul(scaled.t())


def sample_moments(x: torch.Tensor) -> dict:
    """Per-sample reductions of ``x`` (B, T, C): ``mean``, ``var`` (population), ``sum``, ``sq_norm``
    (the 2-norm over tokens, squared), each (B, C) float32, and ``num`` (B,) int64 token counts.

    Each row is bit-for-bit what the authors' per-sample ``torch.mean/var/sum/norm(inp, dim=1)`` on
    the (C, T) sample gives: a reduction over the token dimension is computed for each output
    element by one thread in the same order whether the output has C or B·C elements. The one
    exception is C == 1 on several threads (torch then splits a single output's reduction across
    threads), which is computed sample by sample. Raises ValueError on non-finite input: the
    per-sample sums are finite exactly when the input is (or a sum overflowed, which the full check
    that follows then tells apart).
    """
    B, T, C = x.shape
    if C == 1 and B > 1 and torch.get_num_threads() > 1:
        parts = [sample_moments(x[b:b + 1]) for b in range(B)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    xf = x.type(torch.float32)
    total = torch.sum(xf, dim=1)
    if not bool(torch.isfinite(total).all()) and not bool(torch.isfinite(x).all()):
        raise ValueError("add_batch got non-finite inputs (NaN or inf)")
    return {"mean": torch.mean(xf, dim=1), "var": torch.var(xf, dim=1, unbiased=False), "sum": total,
            "sq_norm": torch.norm(xf, p=2, dim=1) ** 2,
            "num": torch.full((B,), T, dtype=torch.int64)}
