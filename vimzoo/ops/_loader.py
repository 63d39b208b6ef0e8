"""JIT build of the compiled kernels (csrc/cpu/ for the CPU, csrc/cuda/ for CUDA) with torch.utils.cpp_extension.

Each build goes into its own folder, named by a hash of its sources, compiler flags, torch and Python versions
(`<TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions/...>/vimzoo_scan_cpu_<hash>`), so installs of different
vimzoo versions never share or rebuild each other's kernel. A finished build leaves a marker file; later processes
import the library directly. Builds are serialised by an OS file lock that dies with its process: a process that
finds torch's own build lock while holding it knows that lock was left by an interrupted build, removes it and
says so (instead of waiting forever). The first build prints one line before and one after. Without a compiler the
CPU kernel is skipped with a one-time warning and 'auto' uses the PyTorch reference; VIMZOO_DISABLE_KERNELS=1 never
builds. Prebuild with `python -m vimzoo.ops build`.
"""
import contextlib
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import sys
import time
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Dict, Iterator, List, Optional, Sequence

import torch

from ._state import warn_once

__all__ = ['cpu_extension', 'cuda_extension', 'build_cpu_extension', 'build_cuda_extension', 'load_extension',
           'csrc_dir', 'cpu_build_flags', 'cpu_sources', 'cuda_sources', 'build_error', 'ensure_ninja',
           'extensions_root', 'cuda_root']

_errors: Dict[str, BaseException] = {}
_MARKER = 'vimzoo-build-complete'
_LOCK = 'vimzoo-build.lock'


def csrc_dir() -> Path:
    """The kernel sources: `csrc/` of a source checkout, or `vimzoo/csrc` inside an installed wheel."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent / 'csrc', package / 'csrc'):
        if (candidate / 'cpu').is_dir():
            return candidate
    raise FileNotFoundError(f'vimzoo kernel sources not found (looked in {package.parent / "csrc"} and '
                            f'{package / "csrc"}).')


def cpu_sources() -> List[Path]:
    return sorted((csrc_dir() / 'cpu').glob('*.cpp'))


def cuda_sources() -> List[Path]:
    folder = csrc_dir() / 'cuda'
    return sorted(folder.glob('*.cpp')) + sorted(folder.glob('*.cu'))


def _headers(sources: Sequence[Path]) -> List[Path]:
    """Headers the sources can include: those in their own folders and in csrc/common."""
    folders = {s.parent for s in sources} | {csrc_dir() / 'common'}
    return sorted(p for folder in folders for p in folder.glob('*') if p.suffix in ('.h', '.cuh', '.hpp'))


def build_error(kind: str) -> str:
    """Why the `kind` ('cpu' / 'cuda') extension is unavailable, or '' if it is not known to be."""
    exc = _errors.get(kind)
    return '' if exc is None else f'{type(exc).__name__}: {str(exc)[:300]}'


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


def ensure_ninja() -> None:
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


def extensions_root() -> Path:
    """Where build folders go: TORCH_EXTENSIONS_DIR, else torch's default (~/.cache/torch_extensions/py311_cu130)."""
    env = os.environ.get('TORCH_EXTENSIONS_DIR')
    if env:
        return Path(env)
    from torch.utils.cpp_extension import get_default_build_root
    device = f'cu{torch.version.cuda.replace(".", "")}' if torch.version.cuda else 'cpu'
    return Path(get_default_build_root()) / f'py{sys.version_info.major}{sys.version_info.minor}_{device}'


def _fingerprint(sources: Sequence[Path], flags: Sequence[str]) -> str:
    """Hash of everything a build depends on: sources and headers, flags, compiler, torch, Python, machine."""
    h = hashlib.sha256()
    compiler = os.environ.get('CXX', 'c++')
    for part in (torch.__version__, sys.version, platform.machine(), compiler, ' '.join(flags)):
        h.update(part.encode() + b'\0')
    root = csrc_dir()
    for path in sorted(set(sources) | set(_headers(sources))):
        rel = path.relative_to(root) if path.is_relative_to(root) else path
        h.update(str(rel).encode() + b'\0' + path.read_bytes() + b'\0')
    return h.hexdigest()[:16]


def _import(name: str, library: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _exclusive(build_dir: Path, label: str) -> Iterator[None]:
    """One builder per folder at a time, via an OS lock released when its process ends (however it ends)."""
    try:
        import fcntl
    except ImportError:   # no flock (Windows): builds are not serialised beyond torch's own lock
        yield
        return
    with open(build_dir / _LOCK, 'a+') as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or 'another process'
            print(f'vimzoo: waiting for {holder}, which is compiling the {label} in {build_dir} ...',
                  file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f'process {os.getpid()}')
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clear_stale_torch_lock(build_dir: Path) -> None:
    """torch's FileBaton waits forever on a `lock` file that a killed build left behind; under our OS lock no live
    vimzoo build can own one."""
    stale = build_dir / 'lock'
    if stale.exists():
        stale.unlink()
        print(f'vimzoo: removed a stale build lock left by an interrupted build ({stale})', file=sys.stderr,
              flush=True)


def load_extension(label: str, base_name: str, sources: Sequence[Path], cflags: Sequence[str] = (),
                   ldflags: Sequence[str] = (), build_directory: Optional[str] = None,
                   fingerprint_extra: Sequence[str] = (), **load_kwargs) -> ModuleType:
    """Import the extension built from `sources`, building it first (once) into its hash-named folder.
    `fingerprint_extra`: build inputs not in the flags (e.g. the CUDA arch list)."""
    hashed = [*cflags, *ldflags, *load_kwargs.get('extra_cuda_cflags', []), *fingerprint_extra]
    name = f'{base_name}_{_fingerprint(sources, hashed)}'
    build_dir = Path(build_directory) if build_directory is not None else extensions_root() / name
    library = build_dir / f'{name}.so'
    if (build_dir / _MARKER).exists() and library.exists():
        return _import(name, library)
    build_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(build_dir, label):
        if (build_dir / _MARKER).exists() and library.exists():   # built by another process while we waited
            return _import(name, library)
        _clear_stale_torch_lock(build_dir)
        ensure_ninja()
        print(f'vimzoo: compiling the {label} (once, ~1 min)...', file=sys.stderr, flush=True)
        start = time.perf_counter()
        module = _cpp_extension_load()(name=name, sources=[str(s) for s in sources], extra_cflags=list(cflags),
                                       extra_ldflags=list(ldflags), build_directory=str(build_dir),
                                       verbose=os.environ.get('VIMZOO_VERBOSE_BUILD') == '1', **load_kwargs)
        (build_dir / _MARKER).write_text(f'{name}\n')
        print(f'vimzoo: {label} compiled in {time.perf_counter() - start:.0f} s ({build_dir})', file=sys.stderr,
              flush=True)
        return module


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
    flags are part of the build's hash, so a cached build is never loaded on a CPU without those instructions)."""
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


def build_cpu_extension(flags: List[str], name: str = 'vimzoo_scan_cpu',
                        build_directory: Optional[str] = None) -> ModuleType:
    """Compile (and import) the C++ kernel with explicit flags, e.g. without AVX-512 to test the portable paths."""
    return load_extension('CPU scan kernel', name, cpu_sources(), flags, [f for f in flags if f == '-fopenmp'],
                          build_directory)


@lru_cache(maxsize=None)
def _load_cpu() -> ModuleType:
    return build_cpu_extension(cpu_build_flags())


def cpu_extension(required: bool = True) -> Optional[ModuleType]:
    """The compiled CPU kernel module, or None (one-time warning) when it cannot be built and not required."""
    if _disabled():
        _errors.setdefault('cpu', RuntimeError('kernels disabled by VIMZOO_DISABLE_KERNELS'))
    elif 'cpu' not in _errors:
        try:
            return _load_cpu()
        except Exception as exc:  # noqa: BLE001 - any build failure means "fall back"
            _errors['cpu'] = exc
    if required:
        raise RuntimeError(f'vimzoo.ops: the C++ CPU scan kernel could not be built: {build_error("cpu")}')
    warn_once('cpu-build', f'vimzoo.ops: C++ CPU scan kernel unavailable ({build_error("cpu")}); falling back to '
              f'the PyTorch reference (slow).')
    return None


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
                         name: str = 'vimzoo_scan_cuda') -> ModuleType:
    """Compile (and import) the CUDA extension for an explicit TORCH_CUDA_ARCH_LIST; needs nvcc, not a GPU."""
    root = cuda_root()
    if root is None:
        raise RuntimeError('no CUDA toolkit (nvcc + headers) found; set CUDA_HOME.')
    if not arch_list:
        raise ValueError('build_cuda_extension needs an explicit arch list, e.g. "9.0".')
    os.environ.setdefault('CUDA_HOME', str(root))
    os.environ['TORCH_CUDA_ARCH_LIST'] = arch_list
    if verbose:
        os.environ['VIMZOO_VERBOSE_BUILD'] = '1'
    lib = root / ('lib64' if (root / 'lib64').exists() else 'lib')
    return load_extension('CUDA scan kernel', name, cuda_sources(), ['-O3', '-std=c++20'], [f'-L{lib}'],
                          build_directory, fingerprint_extra=[f'arch={arch_list}'],
                          extra_cuda_cflags=['-O3', '-std=c++20', '--use_fast_math', '-lineinfo'],
                          extra_include_paths=[str(root / 'include')], with_cuda=True)


@lru_cache(maxsize=None)
def _load_cuda() -> ModuleType:
    arch = os.environ.get('TORCH_CUDA_ARCH_LIST')
    if not arch:   # runtime JIT on a machine with a GPU: build for exactly the visible device
        major, minor = torch.cuda.get_device_capability()
        arch = f'{major}.{minor}'
    return build_cuda_extension(arch)


def cuda_extension(required: bool = True) -> Optional[ModuleType]:
    """The compiled CUDA kernel module, or None when it cannot be built and not required."""
    if _disabled() or not torch.cuda.is_available():
        if required:
            raise RuntimeError('vimzoo.ops: the CUDA scan kernel needs a CUDA device (and kernels enabled).')
        _errors.setdefault('cuda', RuntimeError('no CUDA device' if not torch.cuda.is_available() else
                                                'kernels disabled by VIMZOO_DISABLE_KERNELS'))
        return None
    if 'cuda' not in _errors:
        try:
            return _load_cuda()
        except Exception as exc:  # noqa: BLE001
            _errors['cuda'] = exc
    if required:
        raise RuntimeError(f"vimzoo.ops: the CUDA scan kernel could not be built: {build_error('cuda')}")
    return None
