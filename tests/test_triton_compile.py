"""Every Triton kernel compiles for CUDA sm_80 and sm_90 at real layer widths, without a GPU.

Compilation runs in a subprocess with TRITON_INTERPRET=0 (the interpreter, set for this session by
conftest.py, replaces ``triton.jit``) and a fresh Triton cache, so each kernel really goes through
Triton's passes and ptxas. The specialisations are those ``refine_mask_triton`` launches
(``dsnot_kernels.triton.aot.variants``); registers and spills are printed (see
benchmarks/triton_resources.py for the table in RESULTS.md).
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
done = {}
for arch in aot.ARCHS:
    for cols in list(aot.LAYER_COLS) + [1000]:  # real widths, and one not divisible by 16
        for v in aot.variants(cols):
            try:
                res = aot.compile_variant(v, arch, cols)
            except Exception as exc:  # report every failure, not only the first
                res = {"error": f"{type(exc).__name__}: {exc}"[-2000:]}
            print(json.dumps(dict(kernel=v.name, arch=arch, cols=cols, **res)), flush=True)
"""


def test_kernels_compile_for_sm80_sm90(tmp_path):
    try:
        import triton.backends.nvidia.compiler  # noqa: F401
    except Exception as exc:  # pragma: no cover - a triton without the NVIDIA backend
        pytest.skip(f"triton has no NVIDIA backend here: {exc}")
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    failed = [r for r in results if "error" in r]
    assert not failed, "\n".join(f"{r['kernel']} sm_{r['arch']} cols={r['cols']}: {r['error']}"
                                  for r in failed)
    assert {r["arch"] for r in results} == {80, 90}
    for r in results:
        print(f"{r['kernel']:34s} sm_{r['arch']} cols={r['cols']:6d} regs={r['regs']:3d} "
              f"spills={r['spill_stores']}/{r['spill_loads']} smem={r['shared']}")
