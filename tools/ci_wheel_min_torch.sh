#!/usr/bin/env bash
# CI's second job (.ci/run): vimzoo installed from a built wheel -- not an editable checkout -- into a fresh venv with
# the lowest tested torch (2.13.0, torchvision 0.28.0, timm 1.0.31), then the ops tests and the model contract on the
# test_* variants, run against the installed package (the tests are copied out of the checkout first).
#
# torch 2.13.0 comes from PyPI, not the local 2.13.0+cpu wheel: PyPI's torchvision 0.28.0 links libc10_cuda.so and
# cannot load beside a CPU-only torch. The PyPI build runs on the CPU like the development one.
#   bash tools/ci_wheel_min_torch.sh        (VIMZOO_MIN_VENV=dir to choose the venv; reused if present)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VIMZOO_MIN_VENV:-$ROOT/.venv-min-torch}"
WORK="$(mktemp -d /tmp/vimzoo-wheel-job.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
PIP=(-m pip install -q --disable-pip-version-check)
log() { echo "[wheel-job] $*"; }

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
log "torch 2.13.0 / torchvision 0.28.0 / timm 1.0.31 into $VENV"
"$PY" "${PIP[@]}" "torch==2.13.0,!=2.13.0+cpu" "torchvision==0.28.0" "timm==1.0.31" 2>&1 | grep -v "^WARNING: Location" || true
log "building the wheel"
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$WORK/dist" "$ROOT" 2>&1 | grep -v "^WARNING: Location" || true
WHEEL=$(ls "$WORK"/dist/vimzoo-*.whl)
"$PY" "${PIP[@]}" --force-reinstall --no-deps "$WHEEL"
"$PY" "${PIP[@]}" "$WHEEL" pytest pytest-xdist pytest-timeout 2>&1 | grep -v "^WARNING: Location" || true
cp -r "$ROOT/tests" "$WORK/tests"
cd "$WORK"
"$PY" - <<'PYEOF'
import torch, torchvision, timm, vimzoo
assert 'site-packages' in vimzoo.__file__, f'vimzoo imported from {vimzoo.__file__}, not from the wheel'
print(f'[wheel-job] vimzoo {vimzoo.__version__} from {vimzoo.__file__}; torch {torch.__version__}, '
      f'torchvision {torchvision.__version__}, timm {timm.__version__}')
PYEOF
"$PY" -m vimzoo.ops build
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$PY" -m pytest -p no:cacheprovider -n "${VIMZOO_TEST_WORKERS:-2}" --dist loadfile -q -rs --timeout 1800 \
    -m "not slow" tests/test_ops.py tests/test_ops_api.py tests/test_ops_fast.py tests/test_contract.py
