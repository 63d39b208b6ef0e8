#!/usr/bin/env python
"""Compile the vimzoo CUDA scan extension (csrc/cuda/*.{cpp,cu}) with nvcc for an explicit arch list.

Needs nvcc, NOT a GPU: the arch list is given explicitly (never queried from a device). Fails loudly (exit 1)
on any compile/link error, and checks that the built library really holds SASS for every requested arch.

    python tools/build_cuda_ops.py --arch 9.0                  # sm_90 (H100/H200)
    python tools/build_cuda_ops.py --arch "8.0;9.0" --build-dir /tmp/vimzoo_cuda_build -v

Exit codes: 0 built and verified, 1 build or verification failed, 2 nvcc not found.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def find_nvcc() -> str:
    for home in (os.environ.get('CUDA_HOME'), os.environ.get('CUDA_PATH'), '/usr/local/cuda'):
        if home and (Path(home) / 'bin' / 'nvcc').exists():
            return str(Path(home) / 'bin' / 'nvcc')
    return shutil.which('nvcc') or ''


def sass_archs(lib: Path) -> tuple:
    """(archs, how): device-code archs embedded in a shared library, e.g. {'sm_90'}. Uses cuobjdump when the
    toolkit has it, else scans the embedded cubins for the `-arch sm_XX` ptxas record (minimal toolkits)."""
    tool = shutil.which('cuobjdump') or str(Path(find_nvcc()).parent / 'cuobjdump')
    if Path(tool).exists():
        out = subprocess.run([tool, '--list-elf', str(lib)], capture_output=True, text=True)
        return {w.split('.')[-2] for w in out.stdout.split() if '.sm_' in w and w.endswith('.cubin')}, 'cuobjdump'
    data = lib.read_bytes()
    return {'sm_' + m.decode() for m in re.findall(rb'-arch sm_(\d+a?)', data)}, 'cubin scan'


def nv_fatbin_size(lib: Path) -> int:
    """Size of the .nv_fatbin section (0 if absent): the library must really carry device code."""
    out = subprocess.run(['objdump', '-h', str(lib)], capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[1] == '.nv_fatbin':
            return int(parts[2], 16)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--arch', default='9.0', help='TORCH_CUDA_ARCH_LIST, e.g. "9.0" or "8.0;9.0" (default 9.0)')
    ap.add_argument('--build-dir', default=None, help='build directory (default: a fresh temporary directory)')
    ap.add_argument('--jobs', type=int, default=int(os.environ.get('MAX_JOBS', '2')), help='parallel compile jobs')
    ap.add_argument('-v', '--verbose', action='store_true')
    args = ap.parse_args(argv)

    nvcc = find_nvcc()
    if not nvcc:
        print('build_cuda_ops: nvcc not found (set CUDA_HOME or put nvcc on PATH).', file=sys.stderr)
        return 2
    os.environ['MAX_JOBS'] = str(args.jobs)
    version = subprocess.run([nvcc, '--version'], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    build_dir = args.build_dir or tempfile.mkdtemp(prefix='vimzoo_cuda_build_')
    print(f'build_cuda_ops: nvcc={nvcc} ({version}) arch={args.arch!r} build_dir={build_dir}', flush=True)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from vimzoo.ops._loader import build_cuda_extension
    t0 = time.time()
    try:
        mod = build_cuda_extension(args.arch, build_directory=build_dir, verbose=args.verbose)
    except Exception as exc:  # noqa: BLE001 - report every failure loudly
        print(f'build_cuda_ops: BUILD FAILED after {time.time() - t0:.0f}s: {type(exc).__name__}: {exc}',
              file=sys.stderr)
        return 1
    elapsed = time.time() - t0
    missing = [f for f in ('scan_fwd', 'scan_bwd', 'bidir_fwd', 'ssd_fwd', 'ssd_bwd') if not hasattr(mod, f)]
    if missing:
        print(f'build_cuda_ops: built module lacks {missing}', file=sys.stderr)
        return 1
    lib = Path(mod.__file__)
    want = {'sm_' + a.strip().replace('.', '').replace('+PTX', '') for a in args.arch.replace(',', ';').split(';')
            if a.strip()}
    have, how = sass_archs(lib)
    if not want <= have:
        print(f'build_cuda_ops: {lib} has device code for {sorted(have)} ({how}), expected {sorted(want)}',
              file=sys.stderr)
        return 1
    fatbin = nv_fatbin_size(lib) if shutil.which('objdump') else -1
    if fatbin == 0:
        print(f'build_cuda_ops: {lib} has no .nv_fatbin section (no device code)', file=sys.stderr)
        return 1
    print(f'build_cuda_ops: OK in {elapsed:.0f}s -> {lib} (device code: {sorted(have)} via {how}; .nv_fatbin '
          f'{fatbin} bytes); compiled, not run on a GPU by this tool.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
