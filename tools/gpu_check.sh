#!/usr/bin/env bash
# Compare the vimzoo.ops backends on a GPU: cuda (CUDA C++), triton, mamba_ssm (if installed) against the PyTorch
# reference — correctness of every op and gradient, Vim-T logits and a training step, then speed (tools/gpu_check.py).
# Usage: tools/gpu_check.sh [out_dir] [extra gpu_check.py args, e.g. --skip-speed]
# Needs a CUDA GPU and the vimzoo venv; nvcc only for the 'cuda' backend. A full run takes a few minutes (kernel
# builds and Triton compiles included; Triton caches its compiles in ~/.triton/cache, so a rerun is faster).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${1:-${OUT:-gpu_check_out}}
shift || true
mkdir -p "$OUT"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA GPU visible')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
"$PY" -m pip list 2>/dev/null | grep -iE "^(torch|triton|mamba.ssm|causal.conv1d) " || true
# The CUDA C++ kernel is JIT-built for exactly the visible device at its first use (~1 min); if it cannot be built
# (no nvcc, say), the 'cuda' backend reports why and the other backends still run.
export TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
"$PY" tools/gpu_check.py --out "$OUT" "$@"
