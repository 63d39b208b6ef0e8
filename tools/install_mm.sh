#!/usr/bin/env bash
# Install the OpenMMLab stack into $PYTHON (default: `python` on PATH). A thin shim: the script ships in the package
# as vimzoo/mm/install_mm.sh (wheel users: `vimzoo-install-mm` / `python -m vimzoo.mm.install`); its header lists
# every option.
exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/vimzoo/mm/install_mm.sh" "$@"
