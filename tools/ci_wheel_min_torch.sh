#!/usr/bin/env bash
# CI's wheel job (.ci/run): vimzoo installed from a built wheel -- not an editable checkout -- into a fresh venv with
# the lowest tested torch (2.13.0, torchvision 0.28.0, timm 1.0.31), then the ops tests and the model contract on the
# test_* variants, run against the installed package (the tests are copied out of the checkout first).
#
# torch 2.13.0 comes from PyPI, not the local 2.13.0+cpu wheel: PyPI's torchvision 0.28.0 links libc10_cuda.so and
# cannot load beside a CPU-only torch. The PyPI build runs on the CPU like the development one.
# That build is large (about 5.5 GB installed, 3 GB downloaded), so the job keeps no pip cache and, unless
# VIMZOO_MIN_VENV names a venv to keep (reused if present), builds the venv in a temporary folder it removes on exit.
#   bash tools/ci_wheel_min_torch.sh        (VIMZOO_MIN_VENV=dir to keep the venv)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/vimzoo-wheel-job.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
VENV="${VIMZOO_MIN_VENV:-$WORK/venv}"
PIP=(-m pip install -q --disable-pip-version-check --no-cache-dir)
log() { echo "[wheel-job] $*"; }
pip_quiet() { "$PY" "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }   # pip's own exit status
free_space() { df -h "$1" | awk 'NR == 2 {print $4 " free on " $6}'; }

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
log "torch 2.13.0 / torchvision 0.28.0 / timm 1.0.31 into $VENV ($(free_space "$WORK"))"
pip_quiet "${PIP[@]}" "torch==2.13.0,!=2.13.0+cpu" "torchvision==0.28.0" "timm==1.0.31"
log "building the wheel ($(free_space "$WORK"))"
pip_quiet -m pip wheel -q --disable-pip-version-check --no-cache-dir --no-deps -w "$WORK/dist" "$ROOT"
WHEEL=$(ls "$WORK"/dist/vimzoo-*.whl)
"$PY" "${PIP[@]}" --force-reinstall --no-deps "$WHEEL"
pip_quiet "${PIP[@]}" "$WHEEL" pytest pytest-xdist pytest-timeout
cp -r "$ROOT/tests" "$WORK/tests"
cp "$ROOT/pyproject.toml" "$WORK/"   # the pytest markers and warning filters (no package code)
cd "$WORK"
"$PY" - <<'PYEOF'
import torch, torchvision, timm, vimzoo
assert 'site-packages' in vimzoo.__file__, f'vimzoo imported from {vimzoo.__file__}, not from the wheel'
print(f'[wheel-job] vimzoo {vimzoo.__version__} from {vimzoo.__file__}; torch {torch.__version__}, '
      f'torchvision {torchvision.__version__}, timm {timm.__version__}')
PYEOF
"$PY" -m vimzoo.ops build
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
rc=0
"$PY" -m pytest -p no:cacheprovider -n "${VIMZOO_TEST_WORKERS:-2}" --dist loadfile -q -rs --timeout 1800 \
    -m "not slow" tests/test_ops.py tests/test_ops_api.py tests/test_ops_fast.py tests/test_contract.py || rc=$?
log "tests exited $rc; removing $WORK"
exit "$rc"
