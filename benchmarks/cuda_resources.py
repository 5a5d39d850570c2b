"""Compile the CUDA kernels with plain nvcc and record their resources (no GPU, no torch needed).

    python benchmarks/cuda_resources.py                  # print the table (sm_80 and sm_90)
    python benchmarks/cuda_resources.py --write          # also replace its section of benchmarks/RESULTS.md

Compiles csrc/cuda/dsnot_kernels.cu (device code only: dsnot_common.h + CUDA headers) with the
extension's flags (-O3 --fmad=false) and -Xptxas -v, and parses registers, barriers, stack frame,
spill stores/loads and static shared memory per kernel and architecture. The dynamic shared memory
of a block (control area + flags + the staged weight row) is computed from the same layout the
launcher uses, with the control area's size read by compiling a two-line host program.
tests/test_cuda_nvcc.py runs the same compile and fails on any error or spill.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join("csrc", "cuda", "dsnot_kernels.cu")
FLAGS = ["-O3", "--fmad=false", "-std=c++17", "-DDSNOT_WITH_CUDA", "-Xptxas", "-v"]
DTYPE_OF_TEMPLATE = {"0": "float32", "1": "float16", "2": "bfloat16"}
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")
BEGIN, END = "<!-- cuda-resources:begin -->", "<!-- cuda-resources:end -->"


def find_nvcc() -> "str | None":
    for cand in (os.environ.get("NVCC"),
                 os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if os.environ.get("CUDA_HOME") else None,
                 shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([\d.]+), (V[\d.]+)", out)
    return f"{m.group(1)} ({m.group(2)})" if m else out.strip().splitlines()[-1]


def compile_command(nvcc: str, archs, out: str) -> list:
    gencode = []
    for a in archs:
        gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    return [nvcc, "-c", *FLAGS, "-I", "csrc", *gencode, SOURCE, "-o", out]


def parse_ptxas(text: str) -> list:
    """Rows of {kernel, dtype, arch, registers, barriers, stack, spill_stores, spill_loads, smem_static}."""
    rows, cur = [], None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'", line)
        if m:
            name = m.group(1)
            t = re.search(r"refine_mask_kernelILi(\d)E", name)
            cur = {"kernel": "refine_mask_kernel", "dtype": DTYPE_OF_TEMPLATE.get(t.group(1), name) if t else name,
                   "mangled": name, "arch": m.group(2), "registers": None, "barriers": 0, "stack": 0,
                   "spill_stores": 0, "spill_loads": 0, "smem_static": 0}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = (int(g) for g in m.groups())
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["registers"] = int(m.group(1))
            b = re.search(r"used (\d+) barriers", line)
            cur["barriers"] = int(b.group(1)) if b else 0
            s = re.search(r"(\d+) bytes smem", line)
            cur["smem_static"] = int(s.group(1)) if s else 0
    return rows


def compile_and_parse(archs=("80", "90"), nvcc=None):
    """Returns (returncode, rows, combined output, command)."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (set CUDA_HOME or NVCC)")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = compile_command(nvcc, archs, os.path.join(tmp, "dsnot_kernels.o"))
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    return proc.returncode, parse_ptxas(text), text, cmd


def control_bytes() -> "int | None":
    """sizeof(RowShared), from a host compile of the kernel header (same layout as on the device)."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        return None
    prog = ('#define DSNOT_SIMT_HOST 1\n#include <cstdio>\n#include "dsnot_kernels.cuh"\n'
            'int main() { std::printf("%zu\\n", sizeof(dsnot::cuda::RowShared)); }\n')
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "c.cpp"), os.path.join(tmp, "c")
        with open(src, "w") as f:
            f.write(prog)
        r = subprocess.run([cxx, "-std=c++17", "-I", os.path.join(ROOT, "csrc"), "-I", os.path.join(ROOT, "csrc", "cuda"),
                            src, "-o", exe], capture_output=True, text=True)
        if r.returncode != 0:
            return None
        return int(subprocess.run([exe], capture_output=True, text=True).stdout.strip())


def dynamic_smem(control: int, cols: int, elem: int, staged: bool, cached: bool) -> int:
    r16 = lambda x: (x + 15) // 16 * 16  # noqa: E731  (mirrors smem_layout in dsnot_launch.h)
    return r16(control) + r16(cols) + (r16(cols * 4) if cached else 0) + (r16(cols * elem) if staged else 0)


def markdown(rows, cmd, version, control) -> str:
    today = datetime.date.today().isoformat()
    shown = " ".join("dsnot_kernels.o" if c.endswith("dsnot_kernels.o") else
                     "nvcc" if c == cmd[0] else c for c in cmd)
    out = [BEGIN, "## CUDA kernel resources (nvcc, no GPU needed)", "",
           f"Generated {today} by `python benchmarks/cuda_resources.py --write` with nvcc {version}:",
           f"`{shown}`", "",
           "| kernel | weight dtype | arch | registers | barriers | stack frame (B) | spill stores (B) | spill loads (B) | static smem (B) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["arch"], r["dtype"])):
        out.append(f"| {r['kernel']} | {r['dtype']} | {r['arch']} | {r['registers']} | {r['barriers']} | {r['stack']} | "
                   f"{r['spill_stores']} | {r['spill_loads']} | {r['smem_static']} |")
    out.append("")
    out.append("256 threads per block (one row per block), at least 3 blocks per multiprocessor by registers (launch bounds). "
               f"Dynamic shared memory per block = control area ({control if control is not None else '?'} B) "
               "+ one flag byte per column + optionally a 4-byte key cache per column + optionally the staged "
               "weight row; the launcher takes the option with the most resident blocks (ties: more cached).")
    if control is not None:
        out += ["", "| cols | keys + fp16 row (KiB) | keys + fp32 row (KiB) | keys only (KiB) | fp16 row only (KiB) | neither (KiB) |",
                "|---|---|---|---|---|---|"]
        for cols in (4096, 11008, 14336, 28672, 32768):
            out.append(f"| {cols} | {dynamic_smem(control, cols, 2, True, True) / 1024:.1f} | "
                       f"{dynamic_smem(control, cols, 4, True, True) / 1024:.1f} | "
                       f"{dynamic_smem(control, cols, 2, False, True) / 1024:.1f} | "
                       f"{dynamic_smem(control, cols, 2, True, False) / 1024:.1f} | "
                       f"{dynamic_smem(control, cols, 2, False, False) / 1024:.1f} |")
    out.append(END)
    return "\n".join(out) + "\n"


def write_section(section: str, path: str = RESULTS) -> None:
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="80,90", help="comma-separated compute capabilities (default 80,90)")
    ap.add_argument("--write", action="store_true", help="replace the section in benchmarks/RESULTS.md")
    ap.add_argument("--nvcc", default=None)
    args = ap.parse_args(argv)
    nvcc = args.nvcc or find_nvcc()
    if nvcc is None:
        print("nvcc not found (set CUDA_HOME or NVCC)", file=sys.stderr)
        return 2
    rc, rows, text, cmd = compile_and_parse(args.archs.split(","), nvcc)
    if rc != 0:
        print(text, file=sys.stderr)
        return rc
    section = markdown(rows, cmd, nvcc_version(nvcc), control_bytes())
    print(section)
    spills = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    if args.write:
        write_section(section)
        print(f"wrote {os.path.relpath(RESULTS, ROOT)}")
    if spills:
        print(f"SPILLS in {len(spills)} kernels", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
