#!/usr/bin/env bash
# timm's own model tests (tests/test_models.py of the installed timm's sdist, unchanged) on the zoo models: the
# contract a timm user relies on (forward/backward, FX, TorchScript, features_only, forward_intermediates, pruning,
# default cfgs). The zoo model list and timm's family policies are in tests/timm_suite/zoo_timm_policy.py.
#   bash tools/timm_tests.sh [pytest args]       (PYTHON=... to choose the interpreter; default .venv/bin/python)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
VER=$("$PY" -c "import timm; print(timm.__version__)")
CACHE="${VIMZOO_CACHE:-$HOME/.cache/vimzoo}/timm-sdist"
SRC="$CACHE/timm-$VER"
if [ ! -f "$SRC/tests/test_models.py" ]; then
    echo "[timm-tests] fetching timm $VER's sdist (tests only) into $CACHE"
    TMP=$(mktemp -d)
    trap 'rm -rf "$TMP"' EXIT
    "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
        "timm==$VER" -d "$TMP" 2>&1 | grep -v "^WARNING: Location" || true
    mkdir -p "$CACHE"
    tar xzf "$TMP/timm-$VER.tar.gz" -C "$TMP"
    rm -rf "$SRC" && mv "$TMP/timm-$VER" "$SRC"
fi
cd "$ROOT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
echo "[timm-tests] timm $VER: $SRC/tests/test_models.py on the zoo models"
PYTHONPATH="$ROOT/tests/timm_suite${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m pytest -p zoo_timm_policy \
    -p no:cacheprovider "$SRC/tests/test_models.py" -q -n "${VIMZOO_TEST_WORKERS:-2}" -rf --timeout 900 "$@"
