#!/usr/bin/env bash
# Build the WHOLE extension (CPU + CUDA kernels + torch glue) against a CUDA build of torch on a
# machine without a GPU, and check that the op loads with kernels under both dispatch keys.
#
#   bash benchmarks/gpu/cuda_build_check.sh            # venv in $VENV_CU (default .venv-cu)
#
# The CUDA torch goes into a separate venv (5.4 GB): $VENV_CU, a path relative to the repository
# root unless absolute (default .venv-cu, git-ignored; made on the first run, reused after). The
# build runs on a copy of the tree in a temporary folder, so the repo's own CPU build is never touched. Needs nvcc
# (CUDA_HOME, default /usr/local/cuda) and torch==$TORCH_CU (default 2.14.1, a CUDA 13.0 build)
# from the package index (setup.py picks C++20 for torch >= 2.14).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${VENV_CU:-.venv-cu}
case $VENV in /*) ;; *) VENV=$ROOT/$VENV ;; esac
TORCH_CU=${TORCH_CU:-2.14.1}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH=$CUDA_HOME/bin:$PATH
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-2}
t0=$(date +%s)
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_CU' or torch.version.cuda is None)" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==$TORCH_CU" numpy ninja setuptools wheel
fi
t1=$(date +%s)
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# CUDA headers of the pip packages (cublas, cusparse, ...) that torch's CUDA headers include.
export CPATH=$SITE/nvidia/cu13/include${CPATH:+:$CPATH}
COPY=$(mktemp -d /tmp/dsnot_cuda_build.XXXXXX)
trap 'rm -rf "$COPY"' EXIT
(cd "$ROOT" && git ls-files -co --exclude-standard | grep -v '^\.venv' | tar -cf - -T -) | tar -xf - -C "$COPY"
cd "$COPY"
"$VENV/bin/python" setup.py build_ext --inplace > build.log 2>&1 || { tail -n 40 build.log; exit 1; }
t2=$(date +%s)
"$VENV/bin/python" - <<'EOF'
import glob, importlib.util, torch
so = glob.glob("dsnot_kernels/_C*.so")[0]
spec = importlib.util.spec_from_file_location("dsnot_kernels._C", so)
spec.loader.exec_module(importlib.util.module_from_spec(spec))
for key in ("CPU", "CUDA"):
    assert torch._C._dispatch_has_kernel_for_dispatch_key("dsnot_kernels::refine_mask", key), key
assert torch._C._dispatch_has_kernel_for_dispatch_key("dsnot_kernels::refine_mask_cov", "CPU")
print(f"loaded {so}: refine_mask has CPU and CUDA kernels (torch {torch.__version__})")
EOF
echo "venv ready in $((t1 - t0))s, build in $((t2 - t1))s (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)"
