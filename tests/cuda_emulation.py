"""Runs the CUDA kernel body on the host SIMT emulation (csrc/cuda/simt_host.h) through ctypes.

Helper for tests/test_cuda_host.py; builds csrc/cuda/simt_host_harness.cpp with the host C++
compiler once per process (in a temporary folder). ``refine_mask_emulated`` takes the op's
positional arguments, like every backend, plus the shared-memory options ``stage_weight`` and
``cache_keys`` that the CUDA launcher chooses per device.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LIB = None
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def compiler():
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def build(out_dir=None) -> str:
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler")
    out_dir = out_dir or tempfile.mkdtemp(prefix="dsnot_simt_")
    lib = os.path.join(out_dir, "libdsnot_simt.so")
    cmd = [cxx, "-O1", "-std=c++17", "-ffp-contract=off", "-fPIC", "-shared",
           "-I", os.path.join(ROOT, "csrc"), "-I", os.path.join(ROOT, "csrc", "cuda"),
           os.path.join(ROOT, "csrc", "cuda", "simt_host_harness.cpp"), "-o", lib]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return lib


def load():
    global _LIB
    if _LIB is None:
        lib = ctypes.CDLL(build())
        f = lib.dsnot_simt_refine_mask
        P, I32, I64, D = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_double
        f.argtypes = [P, I32, P, P, P, P, P, P, P, P, P, I64, I32, D, I32, I32, I32, D, D, I32, I32, I32, I32,
                      ctypes.c_char_p, I32]
        f.restype = ctypes.c_int
        _LIB = lib
    return _LIB


def _ptr(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def refine_mask_emulated(weight, sum_metric_row, var, scaler_row, initial_metric, initial_mask, mean,
                         sparsity, prune_n, prune_m, max_cycle_time, update_threshold,
                         pow_of_var_regrowing, same_sign, objective, stage_weight=True, cache_keys=True):
    lib = load()
    rows, cols = weight.shape
    weight = weight.contiguous()
    varp = None
    p = float(pow_of_var_regrowing)
    if p not in (0.0, 1.0):
        from dsnot_kernels.objectives.reference import var_power  # the contract's one definition, as the glue computes it
        varp = var_power(var, p).contiguous()
    mask = torch.full((rows, cols), 0x5A, dtype=torch.uint8)
    swaps = torch.full((rows,), -777, dtype=torch.int32)
    im = initial_mask.to(torch.uint8).contiguous() if initial_mask is not None else None
    err = ctypes.create_string_buffer(512)
    rc = lib.dsnot_simt_refine_mask(
        _ptr(weight), DTYPES[weight.dtype], _ptr(sum_metric_row), _ptr(var), _ptr(varp), _ptr(scaler_row),
        _ptr(initial_metric), _ptr(im), _ptr(mean), _ptr(mask), _ptr(swaps), rows, cols, float(sparsity),
        int(prune_n), int(prune_m), int(max_cycle_time), float(update_threshold), p, int(bool(same_sign)),
        int(objective), int(bool(stage_weight)), int(bool(cache_keys)), err, 512)
    if rc != 0:
        raise RuntimeError(f"emulated kernel failed: {err.value.decode()}")
    assert bool(((mask == 0) | (mask == 1)).all()), "mask has unwritten (poisoned) bytes"
    assert bool((swaps >= 0).all()), "swaps has unwritten entries"
    return mask.bool(), swaps
