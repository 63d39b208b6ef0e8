"""Picks the backend that runs an op: the one requested, or for 'auto' the first in the device's order that can.

    auto on CPU:   cpu (C++ kernel) -> reference
    auto on CUDA:  triton (Triton kernels) -> mamba_ssm (if installed) -> cuda (CUDA C++ kernel, nvcc JIT build)
                   -> reference (with a one-time warning: far slower)
    anything else: reference

On CUDA, the first choice of a backend for an op is logged once (logger 'vimzoo.ops', level INFO), with the
reasons the backends before it could not run.
"""
import logging
from types import ModuleType
from typing import Optional, Sequence

import torch

from ._state import BACKENDS, get_backend, warn_once
from .backends import REGISTRY

__all__ = ['AUTO_ORDER', 'DEFAULT', 'requested_backend', 'resolve_default', 'choose']

# The op argument for backend=None: "this context's choice when the op runs" (vimzoo.ops.use_backend / set_backend),
# so compiled, scripted and exported graphs follow use_backend() like eager calls.
DEFAULT = 'default'

AUTO_ORDER = {'cpu': ('cpu', 'reference'), 'cuda': ('triton', 'mamba_ssm', 'cuda', 'reference')}
_logger = logging.getLogger('vimzoo.ops')
_logged = set()


def _log_choice_once(op: str, device: torch.device, name: str, reasons: Sequence[str]) -> None:
    key = (op, device.type, name)
    if key not in _logged:
        _logged.add(key)
        skipped = f' (skipped: {"; ".join(reasons)})' if reasons else ''
        _logger.info(f"vimzoo.ops: {op} on {device.type.upper()} tensors runs on backend {name!r} (auto){skipped}.")


def requested_backend(op: str, backend: Optional[str], device: torch.device) -> str:
    """The backend argument an op call passes on: DEFAULT for None, else the name, checked against the inputs'
    device now (meta tensors are shape-only and go with any backend)."""
    name = get_backend() if backend is None else backend
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f'{op}: backend must be None or one of {BACKENDS}, got {name!r}.')
    if name in ('cpu', 'cuda') and device.type not in (name, 'meta'):
        raise ValueError(f"{op}: backend {name!r} needs {name.upper()} tensors, got tensors on {device}.")
    return DEFAULT if backend is None else name


def resolve_default(name: str) -> str:
    """An op's backend argument with DEFAULT replaced by this context's choice."""
    return get_backend() if name == DEFAULT else name


def choose(op: str, requested: str, device: torch.device, tensors: Sequence[Optional[torch.Tensor]] = (),
           fallback: bool = True, **info) -> Optional[ModuleType]:
    """The backend module that runs `op` on these inputs: the requested one, or for 'auto' the first in AUTO_ORDER
    that can. An explicit request that cannot run them raises RuntimeError with the backend's reason.

    `fallback=False` is for ops with an unfused alternative (the fused mixer): None instead of raising, and instead
    of settling for the reference under 'auto'."""
    requested = resolve_default(requested)
    if requested != 'auto':
        backend = REGISTRY[requested]
        reason = backend.can_run(op, device, tensors, **info)
        if reason is None:
            return backend
        if not fallback:
            return None
        raise RuntimeError(f'vimzoo.ops: {op} cannot run on backend {requested!r}: {reason}.')
    reasons = []
    for name in AUTO_ORDER.get(device.type, ('reference',)):
        if name == 'reference' and not fallback:
            return None
        reason = REGISTRY[name].can_run(op, device, tensors, **info)
        if reason is None:
            if name == 'reference' and device.type == 'cuda':
                warn_once(f'auto-cuda-{op}', f'vimzoo.ops: {op} runs the (slow) PyTorch reference on CUDA tensors ('
                          + '; '.join(reasons) + ').')
            elif device.type == 'cuda':
                _log_choice_once(op, device, name, reasons)
            return REGISTRY[name]
        reasons.append(f'{name}: {reason}')
    raise RuntimeError(f'vimzoo.ops: no backend can run {op} here ({"; ".join(reasons)}).')
