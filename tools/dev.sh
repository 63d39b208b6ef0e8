#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv, installs vimzoo (+ test and OpenMMLab extras), then runs
#   bash tools/dev.sh train [train.py args]   -> the main job: train a small zoo model on the built-in dataset
#   bash tools/dev.sh test  [pytest args]     -> the whole test suite (what CI runs)
#   bash tools/dev.sh det|seg [CONFIG] [mm_train.py args] -> OpenMMLab stack + Mask R-CNN / UperNet on a toy set
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VIMZOO_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
cd "$ROOT"

if [ ! -x "$PY" ]; then
    echo "[vimzoo] creating virtualenv $VENV"
    python3 -m venv "$VENV"
fi
# setup.cfg declares the supported ranges; tools/constraints.txt pins the exact development versions
# (torch 2.14.1 / torchvision 0.29.1, which pip takes from local disk where available).
echo "[vimzoo] installing vimzoo and its dependencies"
"$PY" -m pip install -q --disable-pip-version-check -c tools/constraints.txt -e ".[dev]" 2>&1 \
    | grep -v "^WARNING: Location" || true
"$PY" -c "import vimzoo, torch, timm; print('[vimzoo]', vimzoo.__version__, 'torch', torch.__version__, 'timm', timm.__version__)"
# Compile the CPU scan kernel now (once, ~1 min) rather than silently inside the first Vim/LBVim forward.
"$PY" -m vimzoo.ops build || echo "[vimzoo] WARNING: the CPU scan kernel did not build; Vim/LBVim use the slow PyTorch reference" >&2

cmd="${1:-test}"
shift || true
case "$cmd" in
    train)
        exec "$PY" tools/train.py "$@"
        ;;
    test)
        echo "[vimzoo] installing the OpenMMLab stack (cached mmcv wheel after the first build)"
        PYTHON="$PY" bash tools/install_mm.sh
        export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
        exec "$PY" -m pytest -n "${VIMZOO_TEST_WORKERS:-2}" --dist loadfile -q -rs --timeout 1800 "$@"
        ;;
    det|seg)
        echo "[vimzoo] installing the OpenMMLab stack (cached mmcv wheel after the first build)"
        PYTHON="$PY" VIMZOO_MM_STRICT=1 bash tools/install_mm.sh
        export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # 2 threads on 2 busy cores: 7x slower iterations
        config=$([ "$cmd" = det ] && echo mask-rcnn_van-b0_toy || echo upernet_van-b0_toy)
        if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then config="$1"; shift; fi
        exec "$PY" tools/mm_train.py "$config" "$@"
        ;;
    *)
        echo "usage: bash tools/dev.sh {train|test|det|seg} [args...]" >&2
        exit 2
        ;;
esac
