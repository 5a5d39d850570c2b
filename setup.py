"""Build of dsnot_kernels and its optional compiled extension ``dsnot_kernels._C``.

The extension holds the C++ (OpenMP) CPU kernel and, when PyTorch has CUDA and ``nvcc`` is found
(``CUDA_HOME`` honoured), the CUDA kernel. Nothing here needs a GPU.

Environment:
  DSNOT_KERNELS_NO_EXT=1    build no extension (the package then runs on the PyTorch reference)
  DSNOT_KERNELS_NO_CUDA=1   build the CPU kernel only, even where CUDA could be built
  TORCH_CUDA_ARCH_LIST      CUDA architectures (default "8.0;9.0")
  DSNOT_KERNELS_EXTRA_CXXFLAGS / DSNOT_KERNELS_EXTRA_LDFLAGS
                            extra C++ compile / link flags, appended after the defaults so that they
                            win (e.g. the sanitizer build of benchmarks/sanitize_cpu.sh); unset: none

Install for development with ``pip install --no-build-isolation -e .`` so that the build sees the
torch already installed (an isolated build would download an unpinned torch).
"""
import glob
import os
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    if os.environ.get("DSNOT_KERNELS_NO_EXT", "0") == "1":
        print("dsnot_kernels: DSNOT_KERNELS_NO_EXT=1, building no extension", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("dsnot_kernels: torch is not importable at build time; building no extension "
              "(install torch first and use --no-build-isolation)", file=sys.stderr)
        return [], {}

    torch_version = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    std = "-std=c++20" if torch_version >= (2, 14) else "-std=c++17"  # ATen >= 2.14 requires C++20
    cxx_flags = ["-O3", std, "-ffp-contract=off", "-fopenmp"]
    cxx_flags += os.environ.get("DSNOT_KERNELS_EXTRA_CXXFLAGS", "").split()
    link_flags = ["-fopenmp"] + os.environ.get("DSNOT_KERNELS_EXTRA_LDFLAGS", "").split()
    sources = [os.path.relpath(p, HERE) for p in
               sorted(glob.glob(os.path.join(HERE, "csrc", "*.cpp")))
               + sorted(glob.glob(os.path.join(HERE, "csrc", "cpu", "*.cpp")))]
    cuda_sources = [os.path.relpath(p, HERE) for p in
                    sorted(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")))]
    want_cuda = os.environ.get("DSNOT_KERNELS_NO_CUDA", "0") != "1"
    nvcc_home = cpp_extension.CUDA_HOME
    use_cuda = (want_cuda and torch.version.cuda is not None and nvcc_home is not None
                and bool(cuda_sources))
    extra = {"cxx": cxx_flags}
    kwargs = dict(name="dsnot_kernels._C", sources=sources, include_dirs=[os.path.join(HERE, "csrc")],
                  extra_compile_args=extra, extra_link_args=link_flags)
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        extra["cxx"] = cxx_flags + ["-DDSNOT_WITH_CUDA"]
        extra["nvcc"] = ["-O3", "--fmad=false", std, "-DDSNOT_WITH_CUDA", "-lineinfo"]
        kwargs["sources"] = sources + cuda_sources
        ext = cpp_extension.CUDAExtension(**kwargs)
        print(f"dsnot_kernels: building CPU + CUDA kernels (CUDA_HOME={nvcc_home})", file=sys.stderr)
    else:
        ext = cpp_extension.CppExtension(**kwargs)
        why = ("DSNOT_KERNELS_NO_CUDA=1" if not want_cuda else
               "torch has no CUDA" if torch.version.cuda is None else
               "nvcc not found (set CUDA_HOME)" if nvcc_home is None else "no CUDA sources")
        print(f"dsnot_kernels: building the CPU kernel only ({why})", file=sys.stderr)
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)
    return [ext], {"build_ext": build_ext}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
