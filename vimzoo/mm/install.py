"""Install the OpenMMLab stack for vimzoo.mm into this Python: `vimzoo-install-mm` / `python -m vimzoo.mm.install`.

Runs the shell script that ships next to this file (`install_mm.sh`, the same one `tools/install_mm.sh` runs in a
checkout): mmengine / mmdet / mmseg from PyPI at the versions of vimzoo's `[mm]` extra, and mmcv 2.1.0 with its
compiled CPU ops, built once per machine (about 7 minutes on 2 cores) and then installed from a wheel cache.
"""
import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

SCRIPT = Path(__file__).with_name('install_mm.sh')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='vimzoo-install-mm', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog='Prints what is importable as its last line: VIMZOO_MM_STACK=full|lite|none.')
    p.add_argument('--python', default=sys.executable, help='the Python to install into (default: this one)')
    p.add_argument('--mode', choices=('full', 'lite', 'auto'), default=None,
                   help='full (default): mmcv with compiled ops; lite: mmcv-lite test tier, no compiler; '
                        'auto: full if a built wheel is cached, else lite')
    p.add_argument('--cache', default=None, help='wheel cache folder (default: ~/.cache/vimzoo/mm-wheels)')
    p.add_argument('--jobs', type=int, default=None, help='compile jobs for the mmcv build (default: all cores)')
    p.add_argument('--rebuild', action='store_true', help='ignore a cached mmcv wheel and build it again')
    p.add_argument('--force', action='store_true', help='re-run every pip step even if the stack already imports')
    p.add_argument('--no-strict', action='store_true',
                   help='exit 0 even when the install fails (a loud warning instead), as the test set-up wants')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    bash = shutil.which('bash')
    if bash is None:
        print('vimzoo-install-mm: needs bash (and a C++ compiler for the mmcv build)', file=sys.stderr)
        return 2
    env = dict(os.environ, PYTHON=args.python, VIMZOO_MM_STRICT='0' if args.no_strict else '1')
    for key, value in (('VIMZOO_MM_MODE', args.mode), ('VIMZOO_MM_CACHE', args.cache), ('MAX_JOBS', args.jobs)):
        if value is not None:
            env[key] = str(value)
    if args.rebuild:
        env['VIMZOO_MM_REBUILD'] = '1'
    if args.force:
        env['VIMZOO_MM_FORCE'] = '1'
    return subprocess.call([bash, str(SCRIPT)], env=env)


if __name__ == '__main__':
    sys.exit(main())
