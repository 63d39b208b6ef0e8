"""Lazy JIT build of the C++ (CPU) and CUDA scan kernels in `csrc/` with torch.utils.cpp_extension.load.

Built once on first use and cached in the torch extensions dir (TORCH_EXTENSIONS_DIR, default
~/.cache/torch_extensions). Without a compiler the CPU kernel is skipped with a one-time warning and 'auto'
falls back to the PyTorch reference. Set VIMZOO_DISABLE_KERNELS=1 to never build (reference only).
"""
import logging
import os
import shutil
import sys
from functools import lru_cache
from pathlib import Path
from typing import List, Optional

import torch

from ._backend import warn_once

__all__ = ['cpu_extension', 'cuda_extension', 'build_cpu_extension', 'build_cuda_extension', 'csrc_dir',
           'cpu_build_flags']

_errors = {}


def csrc_dir() -> Path:
    from vimzoo.zoo import resource_path
    return resource_path('csrc')


def _cpp_extension_load():
    """torch.utils.cpp_extension.load, imported without its import-time "No CUDA runtime is found" warning, which
    every CPU-only machine with a CUDA toolkit would otherwise print on the first kernel use."""
    logger = logging.getLogger('torch.utils.cpp_extension')
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load
    finally:
        logger.setLevel(level)
    return load


def _ensure_ninja() -> None:
    """cpp_extension needs `ninja` on PATH; the venv's copy may not be there when python is called by path."""
    if shutil.which('ninja'):
        return
    candidates = [Path(sys.executable).parent]
    try:
        import ninja  # type: ignore
        candidates.append(Path(ninja.BIN_DIR))
    except Exception:  # noqa: BLE001 - optional helper package
        pass
    for folder in candidates:
        if (folder / 'ninja').exists():
            os.environ['PATH'] = f'{folder}{os.pathsep}{os.environ.get("PATH", "")}'
            return


def _cpu_has(*flags: str) -> bool:
    try:
        text = Path('/proc/cpuinfo').read_text()
    except OSError:
        return False
    words = set(text.split())
    return all(f in words for f in flags)


def _openmp_flags() -> List[str]:
    return ['-fopenmp'] if sys.platform.startswith('linux') else ['-fopenmp-simd']


def cpu_build_flags() -> List[str]:
    """-O3, C++20 (torch 2.14 headers), OpenMP, FMA contraction, and AVX2/FMA/AVX-512 only when this CPU has them (the
    extension name says which, so a cached build is never loaded on a CPU without those instructions)."""
    # -fopenmp: at::parallel_for is header-inline and only runs in parallel when the extension itself is built with
    # OpenMP (on Linux it then shares torch's libgomp, loaded under the same soname, so torch.set_num_threads
    # applies). Elsewhere (e.g. Apple clang, which rejects -fopenmp) the kernel builds single-threaded.
    flags = ['-O3', '-std=c++20', '-fno-math-errno', '-ffp-contract=fast'] + _openmp_flags()
    if _cpu_has('avx2', 'fma'):
        flags += ['-mavx2', '-mfma']
        if _cpu_has('avx512f', 'avx512dq', 'avx512vl'):
            flags += ['-mavx512f', '-mavx512dq', '-mavx512vl']
    return flags


def _disabled() -> bool:
    return os.environ.get('VIMZOO_DISABLE_KERNELS', '0') not in ('', '0')


def build_cpu_extension(flags: List[str], name: str, build_directory: Optional[str] = None):
    """Compile (and import) the C++ kernel with explicit flags, e.g. without AVX-512 to test the portable paths."""
    load = _cpp_extension_load()
    _ensure_ninja()
    src = csrc_dir() / 'scan_cpu.cpp'
    if not src.exists():
        raise FileNotFoundError(f'{src} not found')
    if build_directory is not None:
        os.makedirs(build_directory, exist_ok=True)
    return load(name=name, sources=[str(src)], extra_cflags=flags, extra_ldflags=[f for f in flags if f == '-fopenmp'],
                build_directory=build_directory, verbose=os.environ.get('VIMZOO_VERBOSE_BUILD') == '1')


@lru_cache(maxsize=None)
def _load_cpu():
    flags = cpu_build_flags()
    name = 'vimzoo_scan_cpu' + ('_avx512' if '-mavx512f' in flags else '_avx2' if '-mavx2' in flags else '')
    return build_cpu_extension(flags, name)


def cpu_extension(required: bool = True):
    """The compiled CPU kernel module, or None (one-time warning) when it cannot be built and not required."""
    if _disabled():
        if required:
            raise RuntimeError('vimzoo.ops: kernels disabled by VIMZOO_DISABLE_KERNELS.')
        return None
    if 'cpu' not in _errors:
        try:
            return _load_cpu()
        except Exception as exc:  # noqa: BLE001 - any build failure means "fall back"
            _errors['cpu'] = exc
    if required:
        raise RuntimeError(f"vimzoo.ops: the C++ CPU scan kernel could not be built: {_errors['cpu']}")
    warn_once('cpu-build', f'vimzoo.ops: C++ CPU scan kernel unavailable ({type(_errors["cpu"]).__name__}: '
              f'{str(_errors["cpu"])[:300]}); falling back to the PyTorch reference (slow).')
    return None


CUDA_SOURCES = ('scan_cuda.cpp', 'scan_cuda_kernel.cu')


def cuda_root() -> Optional[Path]:
    """A CUDA toolkit root that really has headers (an `nvcc` wrapper script on PATH can point torch elsewhere)."""
    cands = [os.environ.get('CUDA_HOME'), os.environ.get('CUDA_PATH'), '/usr/local/cuda']
    nvcc = shutil.which('nvcc')
    if nvcc:
        cands.append(str(Path(nvcc).resolve().parent.parent))
    for c in cands:
        if c and (Path(c) / 'include' / 'cuda_runtime_api.h').exists() and (Path(c) / 'bin' / 'nvcc').exists():
            return Path(c)
    return None


def build_cuda_extension(arch_list: str, build_directory: Optional[str] = None, verbose: bool = False,
                         name: str = 'vimzoo_scan_cuda'):
    """Compile (and import) the CUDA extension for an explicit TORCH_CUDA_ARCH_LIST; needs nvcc, not a GPU."""
    root = cuda_root()
    if root is None:
        raise RuntimeError('no CUDA toolkit (nvcc + headers) found; set CUDA_HOME.')
    os.environ.setdefault('CUDA_HOME', str(root))
    load = _cpp_extension_load()
    _ensure_ninja()
    if not arch_list:
        raise ValueError('build_cuda_extension needs an explicit arch list, e.g. "9.0".')
    os.environ['TORCH_CUDA_ARCH_LIST'] = arch_list
    if build_directory is not None:
        os.makedirs(build_directory, exist_ok=True)
    srcs = [str(csrc_dir() / s) for s in CUDA_SOURCES]
    lib = root / ('lib64' if (root / 'lib64').exists() else 'lib')
    return load(name=name, sources=srcs, extra_cflags=['-O3', '-std=c++20'],
                extra_cuda_cflags=['-O3', '-std=c++20', '--use_fast_math', '-lineinfo'],
                extra_include_paths=[str(root / 'include')], extra_ldflags=[f'-L{lib}'],
                build_directory=build_directory, verbose=verbose, with_cuda=True)


@lru_cache(maxsize=None)
def _load_cuda():
    arch = os.environ.get('TORCH_CUDA_ARCH_LIST')
    if not arch:   # runtime JIT on a machine with a GPU: build for exactly the visible device
        major, minor = torch.cuda.get_device_capability()
        arch = f'{major}.{minor}'
    return build_cuda_extension(arch)


def cuda_extension(required: bool = True):
    """The compiled CUDA kernel module, or None when it cannot be built and not required."""
    if _disabled() or not torch.cuda.is_available():
        if required:
            raise RuntimeError('vimzoo.ops: the CUDA scan kernel needs a CUDA device (and kernels enabled).')
        return None
    if 'cuda' not in _errors:
        try:
            return _load_cuda()
        except Exception as exc:  # noqa: BLE001
            _errors['cuda'] = exc
    if required:
        raise RuntimeError(f"vimzoo.ops: the CUDA scan kernel could not be built: {_errors['cuda']}")
    return None
