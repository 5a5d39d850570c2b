"""N:M validation and 2:4 export to PyTorch semi-structured sparse weights (sparse tensor cores).

``nm_violations`` / ``check_nm`` say whether a mask (True = pruned) or a weight is N:M: in each group
of M consecutive columns of a row, a mask must prune exactly N and a weight may hold at most M - N
nonzeros (spec §2). ``to_sparse_24`` swaps the weights of a 2:4-pruned model's ``nn.Linear`` layers
for ``torch.sparse`` semi-structured tensors, so that ``F.linear`` runs on sparse tensor cores.

Where PyTorch's 2:4 kernels run (torch 2.11-2.13, ``torch/sparse/semi_structured.py``):
  * CUDA only, compute capability 8.0 or newer;
  * cuSPARSELt (``SparseSemiStructuredTensorCUSPARSELT``, PyTorch's default): sm80+, so Ampere and
    Hopper; fp16/bf16 weights with both dimensions multiples of 16 (at least 16);
  * CUTLASS (``SparseSemiStructuredTensorCUTLASS``, when cuSPARSELt is missing): built for sm8x
    only (not Hopper); fp16/bf16 weights with rows a multiple of 32 and columns a multiple of 64;
  * weights 2-D and contiguous; inputs are padded by PyTorch to its dense minimum shape itself.
The compression itself does not check the pattern (it keeps two values per group whatever they
are), so every layer is validated with ``nm_violations`` before anything is converted.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["nm_violations", "check_nm", "nm_report", "to_sparse_24", "sparse24_backend", "SPARSE24_DTYPES",
           "DEFAULT_MIN_SIZE"]

# Layers with fewer rows or columns stay dense in to_sparse_24 (and dsnot-prune --sparse24-min-size):
# too small to gain from sparse tensor cores.
DEFAULT_MIN_SIZE = 512

SPARSE24_DTYPES = (torch.float16, torch.bfloat16)
# (min_rows, min_cols) of the sparse weight, each dimension a multiple of it; read from torch when
# it has the class, these are torch 2.11-2.13's values.
_SHAPE_MULTIPLES = {"cusparselt": (16, 16), "cutlass": (32, 64)}
_TORCH_CLASSES = {"cusparselt": "SparseSemiStructuredTensorCUSPARSELT", "cutlass": "SparseSemiStructuredTensorCUTLASS"}


# ---------------------------------------------------------------------------------------------
# N:M validation

def _grouped(t, n: int, m: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor (weight or bool mask), got {type(t).__name__}")
    for name, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < n < m, got n={n}, m={m}")
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise ValueError(f"expected a 1-D row or a 2-D (rows, cols) tensor, got shape {tuple(t.shape)}")
    if t.shape[1] % m:
        raise ValueError(f"{t.shape[1]} columns are not divisible by m={m}: N:M groups are m consecutive "
                         f"columns of a row, so cols must be a multiple of {m}")
    return t.reshape(t.shape[0], t.shape[1] // m, m)


def _bad_groups(t, n: int, m: int) -> torch.Tensor:
    """(rows, groups) bool: True where a group breaks N:M."""
    groups = _grouped(t, n, m)
    if groups.dtype == torch.bool:
        return groups.sum(-1) != n
    return (groups != 0).sum(-1) > m - n


def nm_violations(weight_or_mask, n: int = 2, m: int = 4) -> list:
    """The (row, group) pairs that break N:M, row-major; ``[]`` when the tensor is N:M.

    Args:
        weight_or_mask: a bool mask (True = pruned): a group breaks N:M when it prunes a count other
            than ``n``; or a weight (any other dtype): a group breaks it when it has more than
            ``m - n`` nonzeros. 1-D = one row; 2-D = (rows, cols) with cols divisible by ``m``.
        n, m: the pattern (2:4 by default). Group ``g`` covers columns ``g*m`` to ``g*m + m - 1``.
    """
    bad = _bad_groups(weight_or_mask, n, m)
    return [tuple(p) for p in bad.nonzero().tolist()]


def _format(v) -> str:
    return "True" if v is True else "False" if v is False else f"{v:.4g}"


def nm_report(weight_or_mask, n: int = 2, m: int = 4, name: str = "tensor", max_rows: int = 5,
              max_groups: int = 3) -> "str | None":
    """A readable account of the N:M violations (None when there are none)."""
    bad = _bad_groups(weight_or_mask, n, m)
    count = int(bad.sum())
    if count == 0:
        return None
    groups = _grouped(weight_or_mask, n, m)
    is_mask = groups.dtype == torch.bool
    rows_hit = bad.any(1).nonzero().flatten().tolist()
    rule = (f"a mask group must prune exactly {n} of {m}" if is_mask
            else f"a weight group may hold at most {m - n} nonzeros of {m}")
    lines = [f"{name} is not {n}:{m}: {count} of {bad.numel()} groups in {len(rows_hit)} of {bad.shape[0]} "
             f"rows break it ({rule}). First offending rows:"]
    for row in rows_hit[:max_rows]:
        gs = bad[row].nonzero().flatten().tolist()
        for g in gs[:max_groups]:
            vals = groups[row, g].detach().cpu()
            got = (f"{int(vals.sum())} pruned" if is_mask else f"{int((vals != 0).sum())} nonzeros")
            lines.append(f"  row {row}, group {g} (columns {g * m}-{g * m + m - 1}): "
                         f"[{', '.join(_format(v) for v in vals.tolist())}] -> {got}")
        if len(gs) > max_groups:
            lines.append(f"  row {row}: {len(gs) - max_groups} more groups")
    if len(rows_hit) > max_rows:
        lines.append(f"  ... {len(rows_hit) - max_rows} more rows")
    return "\n".join(lines)


def check_nm(weight_or_mask, n: int = 2, m: int = 4, name: str = "tensor", max_rows: int = 5) -> None:
    """Raise ``ValueError`` with the first offending rows (row, group, columns, values) unless N:M."""
    report = nm_report(weight_or_mask, n, m, name=name, max_rows=max_rows)
    if report is not None:
        raise ValueError(report)


# ---------------------------------------------------------------------------------------------
# 2:4 export

def _shape_multiples(backend: str, dtype: torch.dtype) -> tuple:
    cls = getattr(torch.sparse, _TORCH_CLASSES[backend], None)
    table = getattr(cls, "_DTYPE_SHAPE_CONSTRAINTS", None) or {}
    if dtype in table:
        return int(table[dtype].sparse_min_rows), int(table[dtype].sparse_min_cols)
    return _SHAPE_MULTIPLES[backend]


def _cusparselt_available() -> bool:
    try:
        return bool(torch.backends.cusparselt.is_available())
    except Exception:  # noqa: BLE001  (older torch without the module, or a broken library)
        return False


def sparse24_backend(device, backend=None) -> tuple:
    """``(name, reason)``: the semi-structured backend that serves ``device`` and ``None``, or
    ``(name, reason it cannot)``. ``backend``: None (cuSPARSELt, else CUTLASS), "cusparselt", "cutlass".
    """
    if backend not in (None, "cusparselt", "cutlass"):
        raise ValueError(f"backend must be None, 'cusparselt' or 'cutlass', got {backend!r}")
    device = torch.device(device)
    name = backend or ("cusparselt" if _cusparselt_available() or device.type != "cuda" else "cutlass")
    if device.type != "cuda":
        return name, (f"the weights are on {device.type}: PyTorch's 2:4 semi-structured kernels run only on "
                      "CUDA GPUs of compute capability 8.0+ (Ampere, Hopper); move the model to such a GPU")
    if not torch.cuda.is_available():
        return name, "CUDA is not available in this torch build"
    major, minor = torch.cuda.get_device_capability(device)
    gpu = f"{torch.cuda.get_device_name(device)} (sm{major}{minor})"
    if major < 8:
        return name, f"{gpu} has no sparse tensor cores: 2:4 semi-structured sparsity needs sm80+ (Ampere, Hopper)"
    if name == "cusparselt" and not _cusparselt_available():
        return name, "this torch build has no cuSPARSELt (torch.backends.cusparselt.is_available() is False)"
    if name == "cutlass" and major != 8:
        return name, (f"{gpu}: PyTorch's CUTLASS 2:4 kernels are built for sm8x (Ampere) only and this torch "
                      "has no cuSPARSELt, which Hopper and newer need")
    return name, None


def _skip(report, name, shape, reason):
    report["skipped"].append({"name": name, "shape": list(shape), "reason": reason})


def to_sparse_24(model: nn.Module, dtype=None, min_size: int = DEFAULT_MIN_SIZE, dry_run: bool = False, backend=None,
                 skip_dense: bool = True) -> dict:
    """Convert the ``nn.Linear`` layers of a 2:4-pruned model to semi-structured sparse weights.

    Every layer is validated before any is converted, so a refusal leaves the model untouched.

    Args:
        model: modified in place (each converted layer's ``weight`` becomes a frozen
            ``SparseSemiStructuredTensor`` parameter; its bias is cast to the same dtype).
        dtype: float16 or bfloat16 for the sparse weights; None = each layer's own dtype, which must
            be one of those. Inputs must then have that dtype (e.g. ``model.half()`` first).
        min_size: layers with ``min(out_features, in_features) < min_size`` stay dense (too small to
            gain from sparse tensor cores).
        dry_run: check everything and report what would be converted, change nothing; without a
            usable GPU it reports the reason (``refusal``) instead of raising.
        backend: None (cuSPARSELt when present, else CUTLASS on sm8x), "cusparselt" or "cutlass".
        skip_dense: layers with no 2:4 group at all (never pruned, e.g. ``lm_head``) are skipped;
            False = they are errors too. A layer that is partly 2:4 is always an error.

    Returns:
        JSON-serialisable dict: ``backend``, ``dtype``, ``dry_run``, ``refusal`` (None or the reason),
        ``converted`` (name, shape) and ``skipped`` (name, shape, reason).

    Raises:
        RuntimeError: no CUDA device of sm80+ (CPU, older GPU), or no backend for it (not in dry_run).
        ValueError: a dtype other than float16/bfloat16, or layers that are not 2:4 (with the first
            offending rows of each, from ``nm_violations``).
    """
    if backend not in (None, "cusparselt", "cutlass"):
        raise ValueError(f"backend must be None, 'cusparselt' or 'cutlass', got {backend!r}")
    if dtype is not None and dtype not in SPARSE24_DTYPES:
        raise ValueError(f"to_sparse_24: dtype must be torch.float16 or torch.bfloat16 (the dtypes of sparse "
                         f"tensor cores), got {dtype}")
    report = {"backend": None, "dtype": None if dtype is None else str(dtype), "dry_run": bool(dry_run),
              "refusal": None, "converted": [], "skipped": []}
    layers = _candidates(model, min_size, report)
    if not layers:
        return report
    _check_environment(layers, dtype, backend, dry_run, report)      # 1. one refusal for the whole model
    ready = _check_layers(layers, dtype, backend, skip_dense, report)  # 2. shapes and 2:4, before any change
    for name, module, target, chosen in ready:                        # 3. convert
        report["converted"].append({"name": name, "shape": [module.out_features, module.in_features]})
        if dry_run:
            continue
        cls = getattr(torch.sparse, _TORCH_CLASSES[chosen])
        with torch.no_grad():
            weight = module.weight.detach().to(target).contiguous()
            module.weight = nn.Parameter(cls.from_dense(weight), requires_grad=False)
            if module.bias is not None:
                module.bias = nn.Parameter(module.bias.detach().to(target), requires_grad=False)
    if report["dtype"] is None:
        report["dtype"] = "/".join(sorted({str(t) for _, _, t, _ in ready})) or None
    return report


def _candidates(model, min_size, report) -> list:
    """``[(name, module)]`` of the plain ``nn.Linear`` layers to convert; the others are recorded
    in ``report["skipped"]`` with the reason."""
    sparse_cls = tuple(getattr(torch.sparse, c) for c in _TORCH_CLASSES.values() if hasattr(torch.sparse, c))
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        shape = (module.out_features, module.in_features)
        if hasattr(module, "parametrizations"):
            _skip(report, name, shape, "the weight is parametrized (a torch.ao sparsifier?): call squash_mask() first")
        elif type(module) is not nn.Linear:
            _skip(report, name, shape, f"{type(module).__name__} is a subclass of nn.Linear whose forward may "
                                       "not go through F.linear")
        elif sparse_cls and isinstance(module.weight, sparse_cls):
            _skip(report, name, shape, "already semi-structured")
        elif min(shape) < min_size:
            _skip(report, name, shape, f"smaller than min_size={min_size}")
        else:
            layers.append((name, module))
    return layers


def _check_environment(layers, dtype, backend, dry_run, report) -> None:
    """A backend for every device the layers are on, and a sparse dtype for every layer: raises
    (``dry_run``: records the refusal) before any change."""
    refusals, backends = [], set()
    for device in sorted({str(mod.weight.device) for _, mod in layers}):
        chosen, why = sparse24_backend(device, backend)
        backends.add(chosen)
        if why is not None:
            refusals.append(why)
    report["backend"] = "/".join(sorted(backends))
    if refusals:
        reason = "to_sparse_24 cannot run here: " + "; ".join(refusals)
        if not dry_run:
            raise RuntimeError(reason)
        report["refusal"] = reason
    wrong = [(n, mod.weight.dtype) for n, mod in layers if (dtype or mod.weight.dtype) not in SPARSE24_DTYPES]
    if wrong:
        raise ValueError(f"to_sparse_24: {len(wrong)} layers have {wrong[0][1]} weights (first: {wrong[0][0]}); "
                         "sparse tensor cores take float16 or bfloat16: pass dtype=torch.float16 or "
                         "torch.bfloat16, or convert the model first (model.half())")


def _check_layers(layers, dtype, backend, skip_dense, report) -> list:
    """``[(name, module, dtype, backend)]`` of the layers that convert: the backend's shape
    multiples (others skipped) and the 2:4 pattern after the cast (a partly 2:4 layer raises, with
    the first offending rows of each)."""
    ready, broken = [], []
    for name, module in layers:
        shape = (module.out_features, module.in_features)
        target = dtype or module.weight.dtype
        chosen = sparse24_backend(module.weight.device, backend)[0]
        mr, mc = _shape_multiples(chosen, target)
        if shape[0] % mr or shape[1] % mc or shape[0] < mr or shape[1] < mc:
            _skip(report, name, shape, f"{chosen} needs {target} weights with rows a multiple of {mr} and columns "
                                       f"a multiple of {mc}")
            continue
        weight = module.weight.detach().to(target)  # validate after the cast: fp16 may add zeros
        bad = _bad_groups(weight, 2, 4)
        nbad = int(bad.sum())
        if nbad == bad.numel() and skip_dense:
            _skip(report, name, shape, "not pruned: no group of 4 has 2 or more zeros (skip_dense=True)")
        elif nbad:
            broken.append(nm_report(weight, 2, 4, name=f"{name}.weight", max_rows=3))
        else:
            ready.append((name, module, target, chosen))
    if broken:
        more = f"\n({len(broken) - 3} more layers are not 2:4)" if len(broken) > 3 else ""
        raise ValueError(f"to_sparse_24: {len(broken)} linear layers are not 2:4 (nothing was converted):\n"
                         + "\n".join(broken[:3]) + more)
    return ready
