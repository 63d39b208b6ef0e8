"""`python -m vimzoo.ops build` compiles the CPU scan kernel now (instead of on first use); `info` says what is
available and where builds live.

    python -m vimzoo.ops build            # CPU kernel (one line while compiling, nothing if already built)
    python -m vimzoo.ops build --cuda 9.0 # also the CUDA kernel for an explicit arch list (needs nvcc, not a GPU)
    python -m vimzoo.ops info
"""
import argparse
import sys

import torch


def _build(args) -> int:
    from . import _loader
    try:
        module = _loader.cpu_extension(required=True)
        print(f'vimzoo: CPU scan kernel ready: {module.__file__}')
        if args.cuda:
            module = _loader.build_cuda_extension(args.cuda)
            print(f'vimzoo: CUDA scan kernel ready: {module.__file__}')
    except Exception as exc:  # noqa: BLE001 - report any build failure as one line
        print(f'vimzoo: kernel build failed: {exc}', file=sys.stderr)
        return 1
    return 0


def _info(args) -> int:
    from . import _loader, get_backend, kernel_status
    print(f'torch {torch.__version__}; default backend {get_backend()!r}; kernel sources {_loader.csrc_dir()}')
    print(f'build folders under {_loader.extensions_root()}; CPU flags {" ".join(_loader.cpu_build_flags())}')
    for kind, ok in kernel_status().items():
        print(f'  {kind}: {"available" if ok else "unavailable (" + (_loader.build_error(kind) or "?") + ")"}')
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m vimzoo.ops', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    build = sub.add_parser('build', help='compile the kernels now')
    build.add_argument('--cuda', metavar='ARCH', default=None, help='also build the CUDA kernel, e.g. "9.0"')
    sub.add_parser('info', help='what is available and where builds live')
    args = parser.parse_args(argv)
    return _build(args) if args.command == 'build' else _info(args)


if __name__ == '__main__':
    sys.exit(main())
