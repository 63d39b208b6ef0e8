"""Selective-scan ops for Vim / LBVim: plain, reverse, locally bi-directional (LBMamba) and fused bidirectional
scans, plus the depthwise causal conv — one API, three backends ('reference' PyTorch, 'cpu' C++ kernel,
'cuda' kernel), exposed as torch.library custom ops `torch.ops.vimzoo.*` with fake impls and autograd.
See docs/kernels.md and /work/notes/ops_api.md.
"""
from typing import Optional

import torch

from ._backend import BACKENDS, get_backend, set_backend, set_check_finite, use_backend
from ._check import check_scan_inputs, check_tensor
from . import _ops  # noqa: F401  (registers torch.ops.vimzoo.*)
from .reference import (bidirectional_selective_scan_ref, causal_conv1d_ref, lb_window,
                        selective_scan_ref)
from ._ops import scan_flops

__all__ = [
    'selective_scan', 'bidirectional_selective_scan', 'causal_conv1d', 'lb_window', 'get_backend', 'set_backend',
    'use_backend', 'set_check_finite', 'BACKENDS', 'selective_scan_ref', 'bidirectional_selective_scan_ref',
    'causal_conv1d_ref', 'scan_flops', 'kernel_status',
]


def _backend_arg(op: str, backend: Optional[str], device: torch.device) -> str:
    name = get_backend() if backend is None else backend
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f'{op}: backend must be None or one of {BACKENDS}, got {name!r}.')
    if name in ('cpu', 'cuda') and device.type not in (name, 'meta'):
        raise ValueError(f"{op}: backend {name!r} needs {name.upper()} tensors, got tensors on {device}.")
    return name


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                   delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False, reverse: bool = False,
                   local_window: Optional[int] = None, backend: Optional[str] = None) -> torch.Tensor:
    """Mamba selective scan; `reverse` runs it from the last token, `local_window=W` adds LBMamba's local
    backward scan (W=1 == plain). u, delta, z (b, d, l); A (d, n); B, C (b, n, l); D, delta_bias (d,)."""
    check_scan_inputs('selective_scan', u, delta, A, B, C, D, z, delta_bias, local_window)
    name = _backend_arg('selective_scan', backend, u.device)
    window = 1 if local_window is None else int(local_window)
    return torch.ops.vimzoo.selective_scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                           bool(reverse), window, name)


def bidirectional_selective_scan(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b,
                                 z: Optional[torch.Tensor] = None, delta_softplus: bool = True,
                                 backend: Optional[str] = None) -> torch.Tensor:
    """Vim-v2 mixer core in one call: selective_scan(forward params) + selective_scan(backward params,
    reverse=True), both gated by silu(z), all in original token order (the model divides by 2)."""
    op = 'bidirectional_selective_scan'
    check_scan_inputs(op, u, delta, A, B, C, D, z, delta_bias)
    check_scan_inputs(op, u_b, delta_b, A_b, B_b, C_b, D_b, None, delta_bias_b, suffix='_b')
    if u_b.shape != u.shape or u_b.dtype != u.dtype or u_b.device != u.device:
        raise ValueError(f'{op}: u_b must match u in shape/dtype/device, got {tuple(u_b.shape)} {u_b.dtype} '
                         f'{u_b.device} vs {tuple(u.shape)} {u.dtype} {u.device}.')
    name = _backend_arg(op, backend, u.device)
    return torch.ops.vimzoo.bidirectional_selective_scan(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b,
                                                         C_b, D_b, delta_bias_b, z, bool(delta_softplus), name)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  activation: Optional[str] = None, reverse: bool = False,
                  backend: Optional[str] = None) -> torch.Tensor:
    """Depthwise causal conv1d (x (b, d, l), weight (d, k), bias (d,)), optional SiLU; reverse = anti-causal."""
    op = 'causal_conv1d'
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f'{op}: x must be a 3-D (batch, dim, length) tensor, got '
                         f'{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}.')
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f'{op}: weight must be a 2-D (dim, width) tensor.')
    if activation not in (None, 'silu', 'swish'):
        raise ValueError(f"{op}: activation must be None, 'silu' or 'swish', got {activation!r}.")
    b, d, l = x.shape
    floats = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    check_tensor(op, 'x', x, (b, d, l), floats, x.device)
    check_tensor(op, 'weight', weight, (d, weight.shape[1]), floats, x.device)
    check_tensor(op, 'bias', bias, (d,), floats, x.device, optional=True)
    name = _backend_arg(op, backend, x.device)
    return torch.ops.vimzoo.causal_conv1d(x, weight, bias, 'silu' if activation else '', bool(reverse), name)


def kernel_status() -> dict:
    """Which compiled kernels are usable here (builds the CPU kernel on first call)."""
    from ._loader import cpu_extension, cuda_extension
    return {'cpu': cpu_extension(required=False) is not None, 'cuda': cuda_extension(required=False) is not None}
