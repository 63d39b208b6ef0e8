"""Backend selection for the scan ops: 'auto' | 'reference' | 'cpu' | 'cuda'."""
import contextlib
import warnings
from typing import Iterator, Optional

import torch

BACKENDS = ('auto', 'reference', 'cpu', 'cuda')
_state = {'backend': 'auto', 'check_finite': True}
_warned = set()

__all__ = ['BACKENDS', 'get_backend', 'set_backend', 'use_backend', 'set_check_finite', 'check_finite_enabled',
           'resolve_backend', 'warn_once']


def _validate(name: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f'vimzoo.ops backend must be one of {BACKENDS}, got {name!r}.')
    return name


def get_backend() -> str:
    """The global default backend ('auto' unless changed)."""
    return _state['backend']


def set_backend(name: str) -> None:
    """Select the global default backend used when an op is called with backend=None."""
    _state['backend'] = _validate(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily select a backend: `with vimzoo.ops.use_backend('reference'): ...`."""
    old = _state['backend']
    _state['backend'] = _validate(name)
    try:
        yield
    finally:
        _state['backend'] = old


def set_check_finite(enabled: bool) -> None:
    """Eager-mode NaN/inf input check (one reduction + host sync per input tensor); on by default."""
    _state['check_finite'] = bool(enabled)


def check_finite_enabled() -> bool:
    return _state['check_finite']


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def resolve_backend(name: Optional[str], device: torch.device) -> str:
    """Map 'auto' / explicit names to the implementation that will really run on `device` (at op run time)."""
    name = _validate(name if name is not None else _state['backend'])
    if name == 'reference':
        return 'reference'
    if name == 'auto':
        if device.type == 'cuda':
            from ._loader import cuda_extension
            if cuda_extension(required=False) is not None:
                return 'cuda'
            warn_once('auto-cuda', 'vimzoo.ops: the CUDA scan kernel is unavailable; using the (slow) PyTorch '
                      'reference on CUDA tensors.')
            return 'reference'
        if device.type == 'cpu':
            from ._loader import cpu_extension
            return 'cpu' if cpu_extension(required=False) is not None else 'reference'
        return 'reference'
    if name == 'cpu' and device.type != 'cpu':
        raise ValueError(f"vimzoo.ops backend 'cpu' needs CPU tensors, got tensors on {device}.")
    if name == 'cuda' and device.type != 'cuda':
        raise ValueError(f"vimzoo.ops backend 'cuda' needs CUDA tensors, got tensors on {device}.")
    return name
