"""Every Triton kernel compiles for CUDA sm_80 and sm_90 at real layer widths, without a GPU.

Compilation runs in a subprocess with TRITON_INTERPRET=0 (the interpreter, set for this session by
conftest.py, replaces ``triton.jit``) and a fresh Triton cache, so each kernel really goes through
Triton's passes and ptxas. The specialisations are those ``refine_mask_triton`` and
``refine_mask_cov_triton`` launch (``dsnot_kernels.triton.aot.variants``); registers and spills are
printed (see benchmarks/triton_resources.py for the table in RESULTS.md).

The second-moment kernels (objectives cov, cov_window, swap: names ``cov*``/``swap*``) add many
specialisations; the default suite compiles two of them (sm_90, 11008 columns) and the slow test
all of them at 4096, 11008 and 14336 columns (their code depends on the width only through the
tournament size N_CHUNKS; the swap kernel not at all, beyond the divisibility of cols by 16).
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = r"""
import json, sys
from dsnot_kernels.triton import aot
spec = json.loads(sys.argv[1])
for arch in spec["archs"]:
    for cols in spec["cols"]:
        for v in aot.variants(cols):
            second_moment = v.name.startswith(("cov", "swap"))
            if second_moment != spec["second_moment"] or (spec.get("names") and v.name not in spec["names"]):
                continue
            try:
                res = aot.compile_variant(v, arch, cols)
            except Exception as exc:  # report every failure, not only the first
                res = {"error": f"{type(exc).__name__}: {exc}"[-2000:]}
            print(json.dumps(dict(kernel=v.name, arch=arch, cols=cols, **res)), flush=True)
"""


def _compile(tmp_path, spec):
    try:
        import triton.backends.nvidia.compiler  # noqa: F401
    except Exception as exc:  # pragma: no cover - a triton without the NVIDIA backend
        pytest.skip(f"triton has no NVIDIA backend here: {exc}")
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(spec)], env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    failed = [r for r in results if "error" in r]
    assert not failed, "\n".join(f"{r['kernel']} sm_{r['arch']} cols={r['cols']}: {r['error']}"
                                  for r in failed)
    assert {r["arch"] for r in results} == set(spec["archs"])
    for r in results:
        print(f"{r['kernel']:40s} sm_{r['arch']} cols={r['cols']:6d} regs={r['regs']:3d} "
              f"spills={r['spill_stores']}/{r['spill_loads']} smem={r['shared']}")
    return results


def test_kernels_compile_for_sm80_sm90(tmp_path):
    from dsnot_kernels.triton import aot

    # real widths, and one not divisible by 16
    _compile(tmp_path, dict(archs=list(aot.ARCHS), cols=list(aot.LAYER_COLS) + [1000], second_moment=False))


def test_second_moment_kernels_compile_sm90(tmp_path):
    results = _compile(tmp_path, dict(archs=[90], cols=[11008], second_moment=True,
                                      names=["cov_window_unstructured[fp16,M=fp32]", "swap_unstructured[bf16,M=fp32]"]))
    assert len(results) == 2


@pytest.mark.slow
def test_second_moment_kernels_compile_for_sm80_sm90(tmp_path):
    from dsnot_kernels.triton import aot

    results = _compile(tmp_path, dict(archs=list(aot.ARCHS), cols=[4096, 11008, 14336], second_moment=True))
    assert {r["kernel"].split("[")[0] for r in results} >= {"cov_unstructured", "cov_window_unstructured",
                                                            "cov_2_4", "cov_window_2_4", "swap_unstructured",
                                                            "swap_2_4"}
