"""Registers, spills and shared memory of every Triton kernel, per CUDA arch and layer width.

Compiles each kernel specialisation that ``refine_mask(..., backend="triton")`` launches
(``dsnot_kernels.triton.aot.variants``) for sm_80 and sm_90 without a GPU, reads ``ptxas -v``,
prints a table and replaces its own section of benchmarks/RESULTS.md in place.

    python benchmarks/triton_resources.py [--cols 4096 11008 14336 28672] [--archs 80 90] [--no-write]
"""
import argparse
import datetime
import os
import pathlib
import sys

os.environ["TRITON_INTERPRET"] = "0"  # compile for real: the interpreter replaces triton.jit

from dsnot_kernels.triton import aot  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- triton_resources:begin -->", "<!-- triton_resources:end -->"


def measure(cols_list, archs):
    """Rows of (kernel, arch, cols, resources dict); raises if a kernel fails to compile."""
    rows = []
    for arch in archs:
        for cols in cols_list:
            for v in aot.variants(cols):
                rows.append((v.name, arch, cols, aot.compile_variant(v, arch, cols)))
    return rows


def to_markdown(rows, command):
    import triton

    lines = [BEGIN, "## Triton kernel resources", "",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
             f"triton {triton.__version__}, "
             f"compiled without a GPU (`triton.compile` for `GPUTarget('cuda', arch, 32)`, "
             f"`enable_fp_fusion=False`), resources from `ptxas -v`. Command: `{command}`.", "",
             "One program per row (grid = rows); every kernel sweeps its row in CHUNK-column chunks. "
             "The refine kernel also keeps a tournament of the row's chunks (N_CHUNKS = "
             "next_pow2(cdiv(cols, CHUNK)) entries per candidate list), so its code depends on "
             "the width only through N_CHUNKS. Widths with identical results share a line.", "",
             "| kernel | arch | cols | CHUNK | N_CHUNKS | warps | regs | spill st/ld (B) | stack (B) "
             "| smem (B) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    merged = {}  # widths with identical results: one line, the widths listed
    for name, arch, cols, r in rows:
        merged.setdefault((name, arch, tuple(sorted(r.items()))), []).append(cols)
    order = sorted(merged.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[1][0]))
    for (name, arch, items), cols in order:
        r = dict(items)
        lines.append(f"| {name} | sm_{arch} | {', '.join(map(str, cols))} | {r['chunk']} | "
                     f"{r['n_chunks'] or '-'} | "
                     f"{r['num_warps']} | {r['regs']} | {r['spill_stores']}/{r['spill_loads']} | "
                     f"{r['stack']} | {r['shared']} |")
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_section(text):
    """Replace the section between the markers in RESULTS.md (append it if absent)."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + text.rstrip("\n") + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(new)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cols", type=int, nargs="+", default=list(aot.LAYER_COLS))
    ap.add_argument("--archs", type=int, nargs="+", default=list(aot.ARCHS))
    ap.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = ap.parse_args(argv)
    rows = measure(args.cols, args.archs)
    command = " ".join(["python benchmarks/triton_resources.py", *(argv or sys.argv[1:])])
    text = to_markdown(rows, command)
    print(text)
    if not args.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
