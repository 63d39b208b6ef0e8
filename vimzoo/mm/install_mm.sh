#!/usr/bin/env bash
# Install the OpenMMLab stack (mmengine 0.10.7, mmcv 2.1.0 with CPU ops, mmdet 3.3.0, mmsegmentation 1.2.2)
# into the CURRENT python, for vimzoo's mmdet/mmseg adapters (vimzoo.mm).
#
# Why a script and not just `pip install -e .[mm]`: PyPI has no mmcv 2.x wheel with compiled ops, and the mmcv 2.1.0
# sdist does not build against torch 2.14 as published (its setup.py forces -std=c++17, torch's headers need C++20;
# it also imports pkg_resources, gone in setuptools>=81). This script builds the wheel once per machine (~7 min on
# 2 idle cores, much longer on a loaded machine), caches it, and afterwards installs from the cache (~1 min; a few
# seconds when the stack is already installed).
#
# Usage:   vimzoo-install-mm  or  python -m vimzoo.mm.install   (installed package: installs into that python)
#          bash tools/install_mm.sh            (checkout, from anywhere; uses `python` on PATH, e.g. an activated venv)
# Env:     PYTHON=/path/to/python        python to install into (default: python, else python3)
#          VIMZOO_MM_CACHE=dir           wheel cache root (default: $HOME/.cache/vimzoo/mm-wheels)
#          MAX_JOBS=N                    compile jobs for the mmcv build (default: nproc)
#          VIMZOO_MM_MODE=full|lite|auto full (default): mmcv with compiled CPU ops (built once, then cached).
#                                        lite: mmcv-lite + vimzoo/mm/_ext_shim.py as mmcv/_ext.py (torchvision nms and
#                                        RoIAlign; other ops raise when called). ~1 min, no compiler; a TEST TIER for
#                                        machines that cannot afford the compile, not the user-facing install.
#                                        auto: full if the wheel is cached (or full is installed), else lite.
#          VIMZOO_MM_FORCE=1             re-run every pip step even when the stack is already importable
#          VIMZOO_MM_REBUILD=1           ignore a cached wheel and rebuild it (full mode)
#          VIMZOO_MM_PCH=0               build mmcv without the precompiled-header speed-up
#          VIMZOO_MM_STRICT=1            exit non-zero when the install fails (default: loud warning, exit 0, so
#                                        that a test run goes on and the mm tests skip with their reason)
# Exit:    0, unless VIMZOO_MM_STRICT=1 and the install failed.
# Prints:  as its last stdout line VIMZOO_MM_STACK=full|lite|none (what is importable now).
set -euo pipefail

if [ "${VIMZOO_MM_INNER:-0}" != 1 ]; then
  # Outer run: do the work in a child so that any failure (no network, no compiler, ...) ends here, loudly.
  rc=0
  VIMZOO_MM_INNER=1 bash "${BASH_SOURCE[0]}" "$@" || rc=$?
  if [ "$rc" != 0 ]; then
    {
      echo '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
      echo "!!! WARNING: the OpenMMLab install (vimzoo/mm/install_mm.sh) FAILED (exit $rc): the OpenMMLab stack is NOT installed."
      echo '!!! The mm tests (tests/test_mm.py, marker mm) will be SKIPPED. See the output above for the cause.'
      echo '!!! Set VIMZOO_MM_STRICT=1 to make this a hard failure; VIMZOO_MM_MODE=lite needs no compiler.'
      echo '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
    } >&2
    echo "VIMZOO_MM_STACK=none"
    if [ "${VIMZOO_MM_STRICT:-0}" = 1 ]; then exit "$rc"; fi
  fi
  exit 0
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)   # vimzoo/mm, in a checkout or in site-packages
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-$(command -v python || command -v python3)}
MMCV_VERSION=2.1.0
CACHE_ROOT=${VIMZOO_MM_CACHE:-$HOME/.cache/vimzoo/mm-wheels}
PATCH_ID=cxx20-v1   # bump when the source patch below changes (part of the cache key)
MODE=${VIMZOO_MM_MODE:-full}
log() { echo "[install_mm] $*" >&2; }
case "$MODE" in full|lite|auto) ;; *) log "VIMZOO_MM_MODE must be full, lite or auto (got $MODE)"; exit 2;; esac

# Runtime pins: the [mm] extra is the single source of truth (read here so the two never drift): from setup.cfg in a
# source checkout, else from the installed vimzoo's metadata (a wheel install).
mapfile -t EXTRAS < <("$PY" - "$REPO/setup.cfg" <<'PYEOF'
import configparser, re, sys
cp = configparser.ConfigParser()
cp.read(sys.argv[1])   # a missing file reads as empty
if cp.has_option('options.extras_require', 'mm'):
    reqs = [r.strip() for r in cp['options.extras_require']['mm'].splitlines() if r.strip()]
else:
    from importlib.metadata import requires
    reqs = [r.split(';')[0].strip() for r in requires('vimzoo') or []
            if re.search(r"""extra\s*==\s*['"]mm['"]""", r.partition(';')[2])]
print('\n'.join(reqs))
PYEOF
)
[ ${#EXTRAS[@]} -gt 0 ] || { log "could not read the [mm] extra (setup.cfg or the vimzoo metadata)"; exit 2; }

check_stack() {  # prints '<full|lite> versions...' and exits 0 only if the complete, version-correct stack imports
  "$PY" - "$MMCV_VERSION" <<'PYEOF'
import sys, warnings
warnings.simplefilter('ignore')
import pkg_resources  # noqa: F401  (mmengine's 'mmdet::' config bases need it -> setuptools<81)
import ftfy, regex  # noqa: F401,E401  (mmseg.utils imports them unconditionally)
import mmcv, mmcv.ops, mmengine, mmdet, mmseg  # noqa: E401
from mmcv.ops import nms, RoIAlign  # noqa: F401
import mmcv._ext as ext
assert mmcv.__version__ == sys.argv[1], mmcv.__version__
assert mmengine.__version__ == '0.10.7' and mmdet.__version__ == '3.3.0' and mmseg.__version__ == '1.2.2'
kind = 'lite' if getattr(ext, 'VIMZOO_SHIM', False) else 'full'
print(f'{kind} stack: mmengine {mmengine.__version__}, mmcv {mmcv.__version__} ({kind}), mmdet {mmdet.__version__}, '
      f'mmseg {mmseg.__version__}')
PYEOF
}

finish() { log "OK ($PY): $1"; echo "VIMZOO_MM_STACK=${1%% *}"; exit 0; }

read -r TORCH_VER PY_TAG < <("$PY" -c "import sys, torch; print(torch.__version__.split('+')[0], \
f'cp{sys.version_info[0]}{sys.version_info[1]}')") || { log "torch must be installed in $PY first"; exit 2; }
KEY="mmcv-${MMCV_VERSION}_torch-${TORCH_VER}_${PY_TAG}_$(uname -m)_${PATCH_ID}"
CACHE="$CACHE_ROOT/$KEY"
WHL="$CACHE/mmcv-${MMCV_VERSION}-${PY_TAG}-${PY_TAG}-linux_$(uname -m).whl"

if [ "${VIMZOO_MM_FORCE:-0}" != 1 ] && [ "${VIMZOO_MM_REBUILD:-0}" != 1 ] && out=$(check_stack 2>/dev/null); then
  # a full stack satisfies every mode; a lite stack satisfies lite, and auto while no wheel is cached
  if [ "${out%% *}" = full ] || [ "$MODE" = lite ] || { [ "$MODE" = auto ] && [ ! -f "$WHL" ]; }; then
    finish "$out (already installed)"
  fi
fi
if [ "$MODE" = auto ]; then
  if [ -f "$WHL" ]; then MODE=full; else MODE=lite; log "auto: no cached wheel at $WHL -> lite tier"; fi
fi
log "python: $PY (torch $TORCH_VER, $PY_TAG); mode: $MODE; wheel cache: $CACHE"

# setuptools<81 BEFORE any mmcv download/build: mmcv's setup.py imports pkg_resources even for metadata.
"$PY" -m pip install -q "setuptools<81" wheel ninja psutil "mmengine==0.10.7"
SP=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

if [ "$MODE" = lite ]; then
  if "$PY" -m pip show -q mmcv >/dev/null 2>&1; then "$PY" -m pip uninstall -q -y mmcv; fi
  "$PY" -m pip install -q "mmcv-lite==$MMCV_VERSION"
  cp "$HERE/_ext_shim.py" "$SP/mmcv/_ext.py"
  "$PY" -m pip install -q "${EXTRAS[@]}"
  out=$(check_stack) || { log "lite stack installed but does not import (see traceback above)"; exit 4; }
  log "WARNING: lite tier (mmcv-lite + torchvision shim): only nms and RoIAlign(avg) are real ops"
  finish "$out"
fi

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.lock-$KEY"
flock 9   # concurrent callers (agents, CI) wait for one build instead of compiling twice
if [ "${VIMZOO_MM_REBUILD:-0}" = 1 ]; then rm -f "$WHL"; fi
if [ ! -f "$WHL" ]; then
  SRC=$(mktemp -d "${TMPDIR:-/tmp}/vimzoo-mmcv-build.XXXXXX")
  trap 'rm -rf "$SRC"' EXIT
  log "no cached wheel: building mmcv $MMCV_VERSION with CPU ops in $SRC (~7 min on 2 idle cores)"
  start=$(date +%s)
  "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$SRC"
  tar xzf "$SRC/mmcv-$MMCV_VERSION.tar.gz" -C "$SRC"
  # torch>=2.10 headers: '#error C++20 or later compatible compiler is required'; mmcv hard-codes -std=c++17.
  sed -i 's/-std=c++17/-std=c++20/g' "$SRC/mmcv-$MMCV_VERSION/setup.py"
  grep -q -- '-std=c++20' "$SRC/mmcv-$MMCV_VERSION/setup.py" || { log "C++20 patch did not apply"; exit 3; }
  mkdir -p "$SRC/out"
  # Speed-up (same objects, ~8x less compile time per file): 63 of mmcv's 77 sources start with
  # #include "pytorch_cpp_helper.hpp" (torch/types.h), so a GCC precompiled header next to it is picked up by the
  # unchanged build commands. Its flags mirror setup.py's; if they ever differ GCC silently ignores the .gch and the
  # build is just slower. Disable with VIMZOO_MM_PCH=0.
  if [ "${VIMZOO_MM_PCH:-1}" = 1 ]; then
    PCH_FLAGS=$("$PY" - "$SRC/mmcv-$MMCV_VERSION/mmcv/ops/csrc/common" <<'PYEOF'
import sys, sysconfig
from torch.utils.cpp_extension import include_paths
flags = sysconfig.get_config_var('CFLAGS').split() + sysconfig.get_config_var('CCSHARED').split()
incs = [sys.argv[1], *include_paths(), f'{sys.prefix}/include', sysconfig.get_paths()['include']]
print(' '.join(flags + [f'-I{i}' for i in incs] + ['-std=c++20', '-DTORCH_API_INCLUDE_EXTENSION_H',
                                                   '-DTORCH_EXTENSION_NAME=_ext']))
PYEOF
)
    HDR="$SRC/mmcv-$MMCV_VERSION/mmcv/ops/csrc/common/pytorch_cpp_helper.hpp"
    # shellcheck disable=SC2086
    c++ $PCH_FLAGS -x c++-header "$HDR" -o "$HDR.gch" 2>/dev/null || { rm -f "$HDR.gch"; log "PCH skipped"; }
  fi
  # FORCE_CUDA=0: CPU CppExtension even on a machine with nvcc/GPU (the tests need no CUDA ops).
  (cd "$SRC/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    "$PY" -m pip wheel -q --no-build-isolation --no-deps . -w "$SRC/out")
  mkdir -p "$CACHE"
  mv "$SRC"/out/mmcv-*.whl "$WHL.tmp" && mv "$WHL.tmp" "$WHL"   # atomic: a half-written wheel is never cached
  log "built $(basename "$WHL") in $(( $(date +%s) - start )) s"
fi
flock -u 9

# leaving lite for full: drop mmcv-lite and the shim (both live in the mmcv/ package directory)
if "$PY" -m pip show -q mmcv-lite >/dev/null 2>&1; then "$PY" -m pip uninstall -q -y mmcv-lite; fi
rm -f "$SP/mmcv/_ext.py"
"$PY" -m pip install -q "$WHL" "${EXTRAS[@]}"
out=$(check_stack) || { log "stack installed but does not import (see traceback above)"; exit 4; }
finish "$out"
