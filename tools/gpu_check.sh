#!/usr/bin/env bash
# Run the CUDA scan kernels on a GPU: correctness vs the PyTorch reference + speed (tools/gpu_check.py).
# Usage: tools/gpu_check.sh [out_dir]      (needs a CUDA GPU, nvcc and the vimzoo venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${1:-${OUT:-gpu_check_out}}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA GPU visible')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
# Build for exactly the visible device (explicit arch list, as the build tool requires).
ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
export TORCH_CUDA_ARCH_LIST="$ARCH"
"$PY" tools/build_cuda_ops.py --arch "$ARCH" --build-dir "${OUT}/build"
"$PY" tools/gpu_check.py --out "$OUT"
