"""The CUDA device code compiles with plain nvcc for sm_80 and sm_90, with no register spills.

No GPU and no CUDA torch needed: csrc/cuda/dsnot_kernels.cu includes only CUDA and project headers.
Skipped where nvcc is absent. The same compile writes the resource table of benchmarks/RESULTS.md
(benchmarks/cuda_resources.py --write).
"""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("cuda_resources", os.path.join(ROOT, "benchmarks", "cuda_resources.py"))
cuda_resources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cuda_resources)

pytestmark = pytest.mark.skipif(cuda_resources.find_nvcc() is None, reason="nvcc not found")


@pytest.fixture(scope="module")
def compiled():
    return cuda_resources.compile_and_parse(("80", "90"))


def test_compiles_for_sm80_and_sm90(compiled):
    rc, rows, text, cmd = compiled
    assert rc == 0, f"nvcc failed:\n{text[-4000:]}"
    got = {(r["arch"], r["dtype"]) for r in rows}
    want = {(a, d) for a in ("sm_80", "sm_90") for d in ("float32", "float16", "bfloat16")}
    assert want <= got, f"missing kernels: {sorted(want - got)}"


def test_no_spills(compiled):
    rc, rows, text, cmd = compiled
    assert rc == 0
    spills = [(r["arch"], r["dtype"], r["spill_stores"], r["spill_loads"]) for r in rows
              if r["spill_stores"] or r["spill_loads"]]
    assert not spills, f"register spills (arch, dtype, stores, loads): {spills}"
    assert all(r["registers"] is not None for r in rows)


def test_no_warnings(compiled):
    rc, rows, text, cmd = compiled
    warnings = [line for line in text.splitlines() if "warning" in line.lower()]
    assert not warnings, "\n".join(warnings[:20])


def test_parser_reads_ptxas_lines():
    text = ("ptxas info    : Compiling entry function '_ZN5dsnot4cuda18refine_mask_kernelILi1EEEvNS0_12RefineParamsE' for 'sm_90'\n"
            "ptxas info    : Function properties for _ZN5dsnot4cuda18refine_mask_kernelILi1EEEvNS0_12RefineParamsE\n"
            "    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
            "ptxas info    : Used 72 registers, used 1 barriers, 16 bytes smem, 496 bytes cmem[0]\n")
    (row,) = cuda_resources.parse_ptxas(text)
    assert row["dtype"] == "float16" and row["arch"] == "sm_90" and row["registers"] == 72
    assert (row["stack"], row["spill_stores"], row["spill_loads"], row["smem_static"]) == (8, 4, 12, 16)
