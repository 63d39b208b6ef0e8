"""Per-context op settings: the requested backend and the NaN/inf input check.

`set_backend` / `set_check_finite` change the process default; `use_backend` / `use_check_finite` override it for
the current thread or asyncio task only (a `contextvars.ContextVar`), so two threads in overlapping `with` blocks
never see each other's choice and every exit restores exactly what its own entry replaced. New threads start from
the process default.
"""
import contextlib
import contextvars
import warnings
from typing import Iterator, Optional

import torch

__all__ = ['BACKENDS', 'get_backend', 'set_backend', 'use_backend', 'check_finite_enabled', 'set_check_finite',
           'use_check_finite', 'validate_backend_name', 'warn_once']

# Names a caller may request; 'auto' picks per device (see vimzoo.ops._choose).
BACKENDS = ('auto', 'reference', 'cpu', 'cuda', 'triton', 'mamba_ssm')

_defaults = {'backend': 'auto', 'check_finite': True}
_backend_var: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar('vimzoo_ops_backend', default=None)
_finite_var: contextvars.ContextVar[Optional[bool]] = contextvars.ContextVar('vimzoo_ops_check_finite', default=None)
_warned = set()


def validate_backend_name(name) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f'vimzoo.ops backend must be one of {BACKENDS}, got {name!r}.')
    return name


def get_backend() -> str:
    """The backend ops use when called with backend=None: this context's `use_backend`, else the process default."""
    name = _backend_var.get()
    return _defaults['backend'] if name is None else name


def set_backend(name: str) -> None:
    """Set the process-wide default backend (threads and contexts without their own `use_backend` follow it)."""
    _defaults['backend'] = validate_backend_name(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Select a backend for this thread / context only: `with vimzoo.ops.use_backend('reference'): ...`."""
    token = _backend_var.set(validate_backend_name(name))
    try:
        yield
    finally:
        _backend_var.reset(token)


def check_finite_enabled() -> bool:
    value = _finite_var.get()
    return _defaults['check_finite'] if value is None else value


def set_check_finite(enabled: bool) -> None:
    """Process default of the eager NaN/inf input check (on; costs about one pass over each input)."""
    _defaults['check_finite'] = bool(enabled)


@contextlib.contextmanager
def use_check_finite(enabled: bool) -> Iterator[None]:
    """Turn the NaN/inf input check on or off for this thread / context only."""
    token = _finite_var.set(bool(enabled))
    try:
        yield
    finally:
        _finite_var.reset(token)


# torch < 2.14's Dynamo cannot trace ContextVar.get (graph break, an error under fullgraph); there the settings are
# read once at trace time, which is what newer Dynamo does when it traces the read itself.
if tuple(int(v) for v in torch.__version__.split('+')[0].split('.')[:2]) < (2, 14):
    get_backend = torch.compiler.assume_constant_result(get_backend)
    check_finite_enabled = torch.compiler.assume_constant_result(check_finite_enabled)


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
