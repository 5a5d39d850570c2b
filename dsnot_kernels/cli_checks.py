"""Checks of command-line arguments that need no model: run before anything loads (dsnot-prune and
python/main.py). Each returns nothing or raises ``ValueError`` with a one-line reason, which the
command lines report argparse-style (``prog: error: ...``, exit status 2)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from dsnot_kernels.ops import BACKENDS, OBJECTIVES, backend_report

_TRUE = ("1", "true", "yes", "on")


class ArgumentError(ValueError):
    """An argument that cannot work, found after the model loaded (e.g. a calibration file too short
    for ``--seqlen``); reported like the checks before loading (exit status 2)."""


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


HUB_PROBE_TIMEOUT_S = 3.0


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub's host (HF_ENDPOINT, default huggingface.co) opens within
    ``timeout`` seconds: without it, transformers retries for about half a minute before failing."""
    import socket
    from urllib.parse import urlparse
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def world_size() -> int:
    """Ranks of a torchrun launch (WORLD_SIZE), 1 otherwise."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def batch_size_for_ranks(nsamples: int, batch_size: int, world: int) -> int:
    """The batch size under ``world`` ranks: each rank needs at least one of the
    ``ceil(nsamples / batch_size)`` batches, so when there are fewer, the largest smaller batch size
    that gives every rank one, as evenly as it can (the statistics, and so the masks, do not depend on the batch size)."""
    if world <= 1:
        return batch_size
    if nsamples < world:
        raise ValueError(f"--nsamples {nsamples}: under torchrun with {world} ranks every rank needs at least "
                         f"one sample; give --nsamples >= {world} or fewer ranks (--nproc_per_node)")
    if -(-nsamples // batch_size) >= world:
        return batch_size
    b = -(-nsamples // world)                            # as even a split as the samples allow
    while b > 1 and -(-nsamples // b) < world:
        b -= 1
    return b


def _looks_like_path(name: str) -> bool:
    """A name that can only mean a local file or folder (a hub id is ``name`` or ``owner/name``)."""
    return (name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1
            or name.endswith((".gguf", ".safetensors", ".bin", ".json")) or name.upper() == "PATH")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an invalid id, or no huggingface_hub: not cached
        return False


def check_model(name) -> None:
    """``--model``: None (the embedded model), a Hugging Face folder, a .gguf file, or a hub id.

    A path that does not exist is refused here, never sent to the hub; a hub id that is not in the
    local cache is refused when the hub is offline (HF_HUB_OFFLINE=1)."""
    if name is None or name in ("", "embedded", "default"):
        from dsnot_kernels.models import embedded_model_file
        try:
            embedded_model_file()
        except FileNotFoundError as exc:
            raise ValueError(str(exc)) from None
        return
    p = Path(name).expanduser()
    if p.exists():
        if p.is_dir() and not (p / "config.json").is_file():
            raise ValueError(f"--model {name}: the folder has no config.json (not a Hugging Face model folder)")
        if p.is_file() and p.suffix != ".gguf":
            raise ValueError(f"--model {name}: a file must be a .gguf model (else give the model's folder)")
        return
    if _looks_like_path(name):
        raise ValueError(f"--model {name}: no such file or folder")
    if _in_hub_cache(name):
        return
    if hub_offline():
        raise ValueError(f"--model {name}: not a local folder, and not in the Hugging Face cache while "
                         "HF_HUB_OFFLINE=1")
    if not hub_reachable():
        raise ValueError(f"--model {name}: not a local folder, not in the Hugging Face cache, and the hub "
                         f"({os.environ.get('HF_ENDPOINT', 'huggingface.co')}) cannot be reached (no network?); "
                         "give a local model folder or .gguf file")


def check_text_file(flag: str, path) -> None:
    """A text file that exists, is a file, and holds some non-blank text."""
    if path is None:
        return
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"{flag} {path}: no such file")
    if not p.is_file():
        raise ValueError(f"{flag} {path}: not a file")
    try:
        with open(p, "rb") as f:
            head = f.read(1 << 16)
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot be read ({exc.strerror})") from None
    if not head.strip():
        raise ValueError(f"{flag} {path}: the file is empty")


def check_output_file(flag: str, path) -> None:
    """A file we will write: its folder must exist and it must not be a folder."""
    if path is None:
        return
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{flag} {path}: is a folder")
    if not p.resolve().parent.is_dir():
        raise ValueError(f"{flag} {path}: the folder {p.resolve().parent} does not exist")


def check_device(device) -> torch.device:
    """``--device``: a torch device that exists here (default cpu, where models load)."""
    try:
        dev = torch.device(device or "cpu")
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"--device {device}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this torch has no usable CUDA (torch.cuda.is_available() is False)")
    return dev


def check_backend(backend, device: torch.device, objective: str = "dsnot") -> None:
    """``--backend``: a known name that can serve tensors on ``device`` for ``objective``."""
    if backend is None:
        return
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend}: unknown; expected one of {', '.join(sorted(BACKENDS))}")
    served = OBJECTIVES[objective].backends
    if backend not in served:
        raise ValueError(f"--backend {backend}: objective {objective} runs on the "
                         f"{' or '.join(sorted(served))} backend only")
    why = backend_report(device, objective)[backend]
    if why is not None:
        raise ValueError(f"--backend {backend} cannot serve {device.type} tensors here (--device "
                         f"{device}): {why}")


def check_positive(flag: str, value, minimum=1) -> None:
    if value is not None and value < minimum:
        raise ValueError(f"{flag} must be >= {minimum}, got {value}")


def check_finite(flag: str, value, minimum=None) -> None:
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        raise ValueError(f"{flag} must be finite" + (f" and >= {minimum}" if minimum is not None else "")
                         + f", got {value}")
