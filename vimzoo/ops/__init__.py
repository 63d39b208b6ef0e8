"""Selective-scan ops for Vim / LBVim: plain, reverse, locally bi-directional (LBMamba) and fused bidirectional
scans, plus the depthwise causal conv — one API, three backends ('reference' PyTorch, 'cpu' C++ kernel,
'cuda' kernel), exposed as torch.library custom ops `torch.ops.vimzoo.*` with fake impls and autograd.
See docs/kernels.md and /work/notes/ops_api.md.
"""
from typing import Optional, Tuple

import torch

from ._backend import BACKENDS, get_backend, resolve_backend, set_backend, set_check_finite, use_backend
from ._check import check_scan_inputs, check_tensor
from . import _ops  # noqa: F401  (registers torch.ops.vimzoo.*)
from .reference import (bidirectional_selective_scan_ref, causal_conv1d_ref, lb_window,
                        selective_scan_ref)
from ._ops import scan_flops

__all__ = [
    'selective_scan', 'bidirectional_selective_scan', 'causal_conv1d', 'mamba_inner', 'add_rms_norm', 'lb_window',
    'get_backend', 'set_backend', 'use_backend', 'set_check_finite', 'BACKENDS', 'selective_scan_ref',
    'bidirectional_selective_scan_ref', 'causal_conv1d_ref', 'scan_flops', 'kernel_status',
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


def _cpu_inference_ok(tensors, backend: Optional[str]) -> bool:
    """The fused CPU ops serve plain fp32 inference: fp32 CPU tensors, no grad needed, not compiling, CPU kernel
    selected (`None` entries are absent optional inputs)."""
    if torch.compiler.is_compiling():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (t.dtype != torch.float32 or t.device.type != 'cpu' or (grad and t.requires_grad)):
            return False
    return resolve_backend(backend, torch.device('cpu')) == 'cpu'


_EMPTY = torch.empty(0)  # stands for an absent conv bias in the fused op's tensor lists


def mamba_inner(xz: torch.Tensor, weights, weights_b=None, reverse: bool = False,
                local_window: Optional[int] = None, scale: float = 1.0,
                backend: Optional[str] = None) -> torch.Tensor:
    """Mamba mixer core after in_proj (the official `mamba_inner_fn` / `bimamba_inner_fn` without the projections).

    xz (b, l, 2d): in_proj output, x then z. weights / weights_b: the module parameters of the forward and, for
    Vim's bidirectional mixer, the backward direction (scanned right-to-left), in the order
    (conv1d.weight (d, 1, k) or (d, k), conv1d.bias (d,) or None, x_proj.weight (R + 2N, d), dt_proj.weight (d, R),
    dt_proj.bias (d,), A_log (d, N), D (d,)), with A = -exp(A_log). Returns scale * scan(conv(x)) * silu(z) as
    (b, l, d); `reverse` / `local_window` apply to the forward direction (LBVim).

    fp32 CPU inference runs one fused C++ call (conv, x_proj, the Δ projection inside the scan, gating); anything
    that needs gradients, other dtypes/devices, or the reference backend runs the same math through the
    differentiable ops (causal_conv1d -> Linear -> selective_scan / bidirectional_selective_scan).
    """
    if not isinstance(xz, torch.Tensor) or xz.dim() != 3 or xz.shape[-1] % 2:
        raise ValueError(f'mamba_inner: xz must be (batch, length, 2 * d), got '
                         f'{tuple(xz.shape) if isinstance(xz, torch.Tensor) else type(xz).__name__}.')
    if len(weights) != 7 or (weights_b is not None and len(weights_b) != 7):
        raise ValueError('mamba_inner: each direction takes 7 tensors (conv1d.weight, conv1d.bias, x_proj.weight, '
                         'dt_proj.weight, dt_proj.bias, A_log, D).')
    if weights_b is not None and reverse:
        raise ValueError('mamba_inner: the bidirectional mixer already scans both ways; reverse must be False.')
    window = 1 if local_window is None else int(local_window)
    dirs = [weights] if weights_b is None else [weights, weights_b]
    required = [t for w in dirs for i, t in enumerate(w) if i != 1]  # all but the conv biases
    if (xz.dim() == 3 and xz.shape[-1] % 32 == 0 and all(t is not None for t in required)
            and _cpu_inference_ok((xz, *required, *(w[1] for w in dirs)), backend)):
        def pack(w):
            return [w[0], w[1] if w[1] is not None else _EMPTY, *w[2:]]
        return torch.ops.vimzoo.mamba_inner_fwd(xz, pack(weights), pack(weights_b) if weights_b is not None else [],
                                                bool(reverse), window, float(scale))
    return _mamba_inner_composite(xz, dirs, reverse, local_window, scale, backend)


def _mamba_inner_composite(xz, dirs, reverse, local_window, scale, backend):
    d = xz.shape[-1] // 2
    xs, z = xz.transpose(1, 2).split(d, dim=1)  # (b, d, l) views of token-major memory
    dtype = xz.dtype

    def branch(w, rev):
        conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, a_log, d_skip = w
        rank, n = dt_proj_w.shape[1], a_log.shape[1]
        u = causal_conv1d(xs, conv_w.reshape(conv_w.shape[0], -1).to(dtype), None if conv_b is None else
                          conv_b.to(dtype), activation='silu', reverse=rev, backend=backend)
        x_dbl = torch.nn.functional.linear(u.transpose(1, 2), x_proj_w.to(dtype))  # (b, l, R + 2N)
        dt, b_mat, c_mat = torch.split(x_dbl, [rank, n, n], dim=-1)
        delta = torch.nn.functional.linear(dt, dt_proj_w.to(dtype))  # (b, l, d); the bias goes to the scan
        return (u, delta.transpose(1, 2), -torch.exp(a_log.float()), b_mat.transpose(1, 2), c_mat.transpose(1, 2),
                d_skip.float(), None if dt_bias is None else dt_bias.float())

    if len(dirs) == 2:
        y = bidirectional_selective_scan(*branch(dirs[0], False), *branch(dirs[1], True), z=z, delta_softplus=True,
                                         backend=backend)
    else:
        u, delta, A, b_mat, c_mat, D, dt_bias = branch(dirs[0], reverse)
        y = selective_scan(u, delta, A, b_mat, c_mat, D=D, z=z, delta_bias=dt_bias, delta_softplus=True,
                           reverse=reverse, local_window=local_window, backend=backend)
    y = y.transpose(1, 2)
    return y * scale if scale != 1.0 else y


def add_rms_norm(x: torch.Tensor, residual: Optional[torch.Tensor], weight: torch.Tensor,
                 eps: float = 1e-5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Residual add + RMSNorm in fp32 (mamba_ssm's fused `rms_norm_fn(..., residual, prenorm=True)` semantics):
    returns (rms_norm(x + residual) * weight cast to x.dtype, x + residual in fp32). One C++ call for fp32 CPU
    inference, torch ops otherwise."""
    if _cpu_inference_ok((x, residual, weight), None):
        return torch.ops.vimzoo.add_rms_norm_fwd(x, residual, weight, float(eps))
    summed = x.float() if residual is None else residual.float() + x.float()
    normed = torch.nn.functional.rms_norm(summed, (summed.shape[-1],), weight.float(), eps)
    return normed.to(x.dtype), summed


def kernel_status() -> dict:
    """Which compiled kernels are usable here (builds the CPU kernel on first call)."""
    from ._loader import cpu_extension, cuda_extension
    return {'cpu': cpu_extension(required=False) is not None, 'cuda': cuda_extension(required=False) is not None}
