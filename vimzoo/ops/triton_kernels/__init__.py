"""Triton kernels of vimzoo.ops (scan.py, conv.py, norm.py): @triton.jit code and launchers, used by
vimzoo.ops.backends.triton. Nothing here is imported by `import vimzoo`.

Triton's interpreter is process-wide: with `TRITON_INTERPRET=1` in the environment when triton is first imported,
every `@triton.jit` function (Triton's own library included) becomes an interpreted one that runs on CPU tensors,
one program at a time, in NumPy. That is how CI checks these kernels against the reference without a GPU
(tests/test_ops_triton.py runs its checks in a subprocess with that variable set). `interpreted()` says which
kind this process has.
"""
import importlib
import threading
from types import SimpleNamespace

__all__ = ['load', 'interpreted', 'KERNEL_MODULES']

KERNEL_MODULES = ('scan', 'conv', 'norm')
_loaded = []
_lock = threading.Lock()


def load() -> SimpleNamespace:
    """The kernel modules as a namespace (`.scan`, `.conv`, `.norm`); imports triton on first call."""
    with _lock:
        if not _loaded:
            modules = {name: importlib.import_module(f'{__name__}.{name}') for name in KERNEL_MODULES}
            _loaded.append(SimpleNamespace(**modules))
        return _loaded[0]


def interpreted() -> bool:
    """True if this process's Triton kernels are interpreted (TRITON_INTERPRET=1 when triton was imported)."""
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(load().scan._fwd_kernel, InterpretedFunction)
