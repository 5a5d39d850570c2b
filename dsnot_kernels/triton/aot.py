"""Ahead-of-time compilation of the Triton kernels for a CUDA target, without a GPU.

Used by ``tests/test_triton_compile.py`` and ``benchmarks/triton_resources.py``. Must run in a
process where ``TRITON_INTERPRET`` is not ``1`` (the interpreter replaces ``triton.jit``).
``variants(cols)`` lists the kernel specialisations that ``refine_mask_triton`` launches for rows
of ``cols`` columns; ``compile_variant`` compiles one with ``triton.compile`` and reads its
registers, spills and shared memory from ``ptxas -v`` (the flags Triton itself uses).
"""
import re
import subprocess
import tempfile
from typing import NamedTuple

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from dsnot_kernels.triton.cov import _cov_kernel
from dsnot_kernels.triton.cov_launch import swap_tile_config, tile_config
from dsnot_kernels.triton.launch import launch_config
from dsnot_kernels.triton.refine import _refine_kernel, n_chunks
from dsnot_kernels.triton.select_nm import _select_nm_kernel
from dsnot_kernels.triton.select_unstructured import _select_unstructured_kernel
from dsnot_kernels.triton.swap import CS_K as SWAP_CS_K, _swap_kernel, cs_tile

ARCHS = (80, 90)
LAYER_COLS = (4096, 11008, 14336, 28672)


class Variant(NamedTuple):
    name: str
    fn: object
    signature: dict
    constexprs: dict
    num_warps: int


def _sig(fn, types: dict, constexprs: dict) -> dict:
    return {a: ("constexpr" if a in constexprs else types[a]) for a in fn.arg_names}


def variants(cols: int):
    """The specialisations real layers hit: per weight dtype the unstructured selection and
    refinement (dsnot and mse), and the N:M ones for fp16 (2:4, 4:8 mse). Flags that are runtime
    arguments (a caller metric, the same-sign rule, p == 0) need no variant of their own."""
    chunk, nw = launch_config(cols)
    out = []

    def types(wdtype):
        w = "*i16" if wdtype == "bf16" else "*" + wdtype  # bf16 travels as its bits (weight_arg)
        sel = dict(w_ptr=w, sqrt_s_ptr="*fp32", metric_ptr="*fp32", out_ptr="*u8", cols="i32",
                   k="i32", has_metric="i32")
        ref = dict(w_ptr=w, smr_ptr="*fp32", varp_ptr="*fp32", sqrt_s_ptr="*fp32",
                   metric_ptr="*fp32", mean_ptr="*fp32", var_ptr="*fp32", src_ptr="*u8",
                   out_ptr="*u8", swaps_ptr="*i32", cols="i32", max_cycles="i32", thr="fp32",
                   same_sign="i32", has_metric="i32", div="i32")
        return sel, ref

    def add(name, fn, t, c):
        c = dict(c, CHUNK=chunk)
        if fn is _swap_kernel:
            c["CB"] = cs_tile(chunk, c["CS_K"])
        if fn is _refine_kernel or fn is _cov_kernel:
            c["N_CHUNKS"] = n_chunks(cols, chunk)
        out.append(Variant(name, fn, _sig(fn, t, c), c, nw))

    for wd in ("fp16", "bf16", "fp32"):
        sel_t, ref_t = types(wd)
        add(f"select_unstructured[{wd}]", _select_unstructured_kernel, sel_t, {})
        add(f"refine_unstructured[{wd}]", _refine_kernel, ref_t, _refine_c(False, 1, 0))
        add(f"refine_unstructured_mse[{wd}]", _refine_kernel, ref_t, _refine_c(False, 1, 1))
    sel_t, ref_t = types("fp16")
    for n, m in ((2, 4), (4, 8)):
        add(f"select_nm_{n}_{m}[fp16]", _select_nm_kernel, sel_t, dict(PRUNE_N=n, PRUNE_M=m))
    add("refine_2_4[fp16]", _refine_kernel, ref_t, _refine_c(True, 4, 0))
    add("refine_4_8_mse[fp16]", _refine_kernel, ref_t, _refine_c(True, 8, 1))
    # objectives 2 (cov) and 3 (cov_window, default window 100): M float32 (the caller's, kept)
    # for every weight dtype, M float64 once; 2:4 for fp16
    for wd, md in (("fp16", "fp32"), ("bf16", "fp32"), ("fp32", "fp32"), ("fp16", "fp64")):
        cov_t = _cov_types(wd, md)
        add(f"cov_unstructured[{wd},M={md}]", _cov_kernel, cov_t, _cov_c(False, 1, 0))
        add(f"cov_window_unstructured[{wd},M={md}]", _cov_kernel, cov_t, _cov_c(False, 1, 100))
    cov_t = _cov_types("fp16", "fp32")
    add("cov_2_4[fp16,M=fp32]", _cov_kernel, cov_t, _cov_c(True, 4, 0))
    add("cov_window_2_4[fp16,M=fp32]", _cov_kernel, cov_t, _cov_c(True, 4, 100))
    # objective 4 (swap): the bounded search (the launcher's default), and the full scan once
    for wd, md in (("fp16", "fp32"), ("bf16", "fp32"), ("fp16", "fp64")):
        add(f"swap_unstructured[{wd},M={md}]", _swap_kernel, _swap_types(wd, md), _swap_c(cols, 0))
    add("swap_unstructured_full[fp16,M=fp32]", _swap_kernel, _swap_types("fp16", "fp32"), _swap_c(cols, 0, 1))
    add("swap_2_4[fp16,M=fp32]", _swap_kernel, _swap_types("fp16", "fp32"), _swap_c(cols, 4))
    return out


def _swap_types(wdtype, mdtype):
    w = "*i16" if wdtype == "bf16" else "*" + wdtype
    return dict(w_ptr=w, m_ptr="*" + mdtype, g_ptr="*fp64", src_ptr="*u8", out_ptr="*u8",
                swaps_ptr="*i32", lb_ptr="*fp64", mmax_ptr="*fp64", z_ptr="*fp64", pairs_ptr="*i64", cols="i32",
                max_cycles="i32")


def _swap_c(cols, m, search=0):
    qb, rb = swap_tile_config(cols, m, interpreting=False)
    bounded = search == 0 and m == 0
    return dict(NM=m > 0, PRUNE_M=max(m, 1), M_POW2=triton.next_power_of_2(max(m, 1)), QB=qb, RB=rb,
                SEARCH=search if m == 0 else 1, CS_K=SWAP_CS_K if bounded else 0)


def _cov_types(wdtype, mdtype):
    w = "*i16" if wdtype == "bf16" else "*" + wdtype
    return dict(w_ptr=w, smr_ptr="*fp32", varp_ptr="*fp32", sqrt_s_ptr="*fp32", metric_ptr="*fp32",
                m_ptr="*" + mdtype, g_ptr="*fp64", slots_ptr="*i32", src_ptr="*u8", out_ptr="*u8",
                swaps_ptr="*i32", cols="i32", K="i32", max_cycles="i32", thr="fp32",
                has_metric="i32", div="i32")


def _cov_c(nm, m, window):
    qb, rb = tile_config(window, m if nm else 0, interpreting=False)
    return dict(WINDOW=window > 0, NM=nm, PRUNE_M=m, M_POW2=triton.next_power_of_2(m), QB=qb, RB=rb)


def _refine_c(nm, m, objective):
    return dict(NM=nm, PRUNE_M=m, M_POW2=triton.next_power_of_2(m), OBJECTIVE=objective)


def _attrs(fn, signature: dict, cols: int) -> dict:
    """Divisibility hints as the JIT launcher derives them (pointers 16-byte aligned, ints % 16)."""
    attrs = {}
    for i, a in enumerate(fn.arg_names):
        t = signature[a]
        if t.startswith("*") or (a == "cols" and cols % 16 == 0):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return attrs


def _ptxas_path(arch: int) -> str:
    """The ptxas Triton itself uses for ``arch`` (its helper moved between Triton versions)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(arch).path
    except (ImportError, TypeError, AttributeError):
        return triton.knobs.nvidia.ptxas.path


def ptxas_resources(ptx: str, arch: int) -> dict:
    """Registers, spill bytes and static shared memory of the one kernel in ``ptx``."""
    gpu = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    ptxas = _ptxas_path(arch)
    with tempfile.TemporaryDirectory() as d:
        src = f"{d}/k.ptx"
        with open(src, "w") as f:
            f.write(ptx)
        log = subprocess.run([ptxas, "-lineinfo", "--fmad=false", "-v", "--regAllocOptLevel=2",
                              f"--gpu-name={gpu}", src, "-o", f"{d}/k.o"],
                             check=True, capture_output=True, text=True).stderr
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spill_st = int(re.search(r"(\d+) bytes spill stores", log).group(1))
    spill_ld = int(re.search(r"(\d+) bytes spill loads", log).group(1))
    stack = re.search(r"(\d+) bytes stack frame", log)
    return dict(regs=regs, spill_stores=spill_st, spill_loads=spill_ld,
                stack=int(stack.group(1)) if stack else 0)


def compile_variant(v: Variant, arch: int, cols: int) -> dict:
    """Compile ``v`` for ``sm_<arch>``; returns its resources (raises if compilation fails)."""
    src = ASTSource(fn=v.fn, signature=v.signature, constexprs=v.constexprs,
                    attrs=_attrs(v.fn, v.signature, cols))
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                       options=dict(num_warps=v.num_warps, enable_fp_fusion=False))
    res = ptxas_resources(k.asm["ptx"], arch)
    res.update(shared=int(k.metadata.shared), num_warps=v.num_warps, chunk=v.constexprs["CHUNK"],
               n_chunks=v.constexprs.get("N_CHUNKS", 0))
    return res
