"""Loads the optional compiled extension ``dsnot_kernels._C`` and remembers why it is absent."""
from __future__ import annotations

import warnings

import torch  # noqa: F401  (must be imported before _C: the extension links against libtorch)

import importlib
import importlib.util

EXTENSION_ERROR: "str | None" = None
_C = None
if importlib.util.find_spec("dsnot_kernels._C") is None:
    EXTENSION_ERROR = ("dsnot_kernels._C was not built: no compiler at install time, "
                       "DSNOT_KERNELS_NO_EXT=1, or the package is used from a source tree without a build")
else:
    try:
        _C = importlib.import_module("dsnot_kernels._C")
    except ImportError as exc:  # ABI mismatch with the installed torch, missing libraries...
        EXTENSION_ERROR = f"dsnot_kernels._C failed to load: {exc}"

_warned = False


def has_kernel(dispatch_key: str, op: str = "refine_mask") -> bool:
    """True if the compiled op ``dsnot_kernels::<op>`` has a kernel for ``dispatch_key``."""
    if _C is None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"dsnot_kernels::{op}", dispatch_key)
    except RuntimeError:
        return False


def warn_once_missing() -> None:
    """Say once, clearly, why the compiled kernels are not used."""
    global _warned
    if _warned or EXTENSION_ERROR is None:
        return
    _warned = True
    warnings.warn(
        f"dsnot_kernels: compiled kernels unavailable ({EXTENSION_ERROR}); falling back to the PyTorch reference backend. Build it with "
        "`pip install --no-build-isolation -e .` (see README).",
        RuntimeWarning,
        stacklevel=3,
    )
