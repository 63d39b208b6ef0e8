"""The 'triton' backend: vimzoo's Triton kernels (vimzoo/ops/triton_kernels/), compiled by Triton for the GPU on
first use — no nvcc, no build step of ours.

Covers every op but the fused inference mixer (`mamba_inner` then runs the differentiable ops, on these kernels):
the scans (plain, reverse, LB window, bidirectional; forward and backward), the causal conv (+ SiLU, reverse;
forward and backward) and add + RMSNorm (forward and backward). Activations may be fp32, bf16 or fp16 in any
strided layout (read in place; outputs follow `empty_like(u)`); the math is fp32. fp64 inputs are refused (the
reference computes them exactly). The NaN/inf input check uses PyTorch reductions, like the reference.

Selectable on CUDA tensors. On CPU tensors only when Triton's interpreter is on (TRITON_INTERPRET=1 in the
environment before triton is imported): that is how CI verifies these kernels without a GPU; it is slow and
checks semantics, not GPU behaviour or speed (docs/kernels.md).
"""
import functools
from typing import Optional, Sequence

import torch

from .._validate import check_finite as _check_values
from ..triton_kernels._config import MAX_STATE
from ._common import layout_like

NAME = 'triton'
_SCAN_OPS = ('selective_scan', 'selective_scan_bwd', 'bidirectional_selective_scan')
_ACT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_NORM_CHANNELS = 16384   # triton_kernels.norm.MAX_C: one row per tile


@functools.lru_cache(maxsize=1)
def _import_error() -> Optional[str]:
    try:
        from .. import triton_kernels
        triton_kernels.load()
    except Exception as exc:  # noqa: BLE001 - any import failure makes the backend unavailable, with its reason
        return f'triton is not importable ({type(exc).__name__}: {exc})'
    return None


def _kernels():
    from .. import triton_kernels
    return triton_kernels.load()


def interpreted() -> bool:
    """True if this process runs the Triton kernels through Triton's interpreter (TRITON_INTERPRET=1)."""
    from .. import triton_kernels
    return _import_error() is None and triton_kernels.interpreted()


_SSD_OPS = ('ssd_scan', 'ssd_scan_bwd', 'quasiseparable_scan', 'quasiseparable_scan_bwd')


def can_run(op: str, device: torch.device, tensors: Sequence[Optional[torch.Tensor]] = (),
            channels: Optional[int] = None, d_state: Optional[int] = None, window: int = 1) -> Optional[str]:
    if op in ('mamba_inner_fwd', 'mamba_inner_bwd'):
        return 'no fused Triton mixer kernel (the unfused ops run instead)'
    if op in _SSD_OPS:
        return 'no Triton SSD / quasiseparable kernel (the cuda or reference backend runs it)'
    if device.type not in ('cuda', 'cpu'):
        return f'needs CUDA tensors, got tensors on {device}'
    error = _import_error()
    if error is not None:
        return error
    if device.type == 'cpu' and not interpreted():
        return ('needs CUDA tensors, got tensors on cpu (CPU tensors run only under Triton\'s interpreter, '
                'TRITON_INTERPRET=1, which is for tests)')
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return 'the Triton kernels compute in fp32; fp64 inputs run on the reference'
    if any(t is not None and t.numel() >= 2 ** 31 for t in tensors):
        return 'the Triton kernels index with int32; a tensor has 2^31 elements or more'
    if op in _SCAN_OPS and d_state is not None and d_state > MAX_STATE:
        return f'the Triton scan supports d_state <= {MAX_STATE}, got {d_state}'
    if op in ('add_rms_norm_fwd', 'add_rms_norm', 'add_rms_norm_bwd') and tensors and tensors[-1] is not None \
            and tensors[-1].numel() > _MAX_NORM_CHANNELS:
        return f'the Triton add + RMSNorm supports up to {_MAX_NORM_CHANNELS} channels, got {tensors[-1].numel()}'
    return None


def _scan_named(u, delta, A, B, C, D, z, delta_bias, sfx=''):
    return {f'u{sfx}': u, f'delta{sfx}': delta, f'A{sfx}': A, f'B{sfx}': B, f'C{sfx}': C, f'D{sfx}': D, 'z': z,
            f'delta_bias{sfx}': delta_bias}


def _like(g: Optional[torch.Tensor], t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else g.to(t.dtype)


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, window, check_finite):
    if check_finite:
        _check_values('selective_scan', _scan_named(u, delta, A, B, C, D, z, delta_bias))
    return _kernels().scan.scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, window)


def scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, softplus, reverse, window):
    du, dd, dA, dB, dC, dD, dz, dbias = _kernels().scan.scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias,
                                                                 softplus, reverse, window)
    return (du.to(u.dtype), dd.to(delta.dtype), dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), _like(dD, D),
            _like(dz, z), _like(dbias, delta_bias))


def bidir_fwd(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z, softplus,
              check_finite):
    """Two launches of the scan kernel: the forward direction leaves its ungated fp32 y in a workspace, the reverse
    one adds its own, gates once by silu(z) and stores in u's dtype and layout."""
    if check_finite:
        op = 'bidirectional_selective_scan'
        _check_values(op, _scan_named(u, delta, A, B, C, D, z, delta_bias))
        _check_values(op, _scan_named(u_b, delta_b, A_b, B_b, C_b, D_b, None, delta_bias_b, '_b'))
    scan = _kernels().scan
    acc = scan.scan_fwd(u, delta, A, B, C, D, None, delta_bias, softplus, False, 1, final=False)
    return scan.scan_fwd(u_b, delta_b, A_b, B_b, C_b, D_b, z, delta_bias_b, softplus, True, 1, acc=acc)


def conv_fwd(x, weight, bias, silu, reverse, check_finite):
    if check_finite:
        _check_values('causal_conv1d', {'x': x, 'weight': weight, 'bias': bias})
    return layout_like(_kernels().conv.conv_fwd(x, weight, bias, silu, reverse), x)


def conv_bwd(dout, x, weight, bias, silu, reverse):
    dx, dw, db = _kernels().conv.conv_bwd(dout, x, weight, bias, silu, reverse)
    return dx, dw.to(weight.dtype), _like(db, bias)


def mamba_inner_fwd(*args, **kwargs):   # also the backward's signature (see `reference`)
    raise NotImplementedError('vimzoo.ops: the Triton backend has no fused mixer kernel (can_run says so).')


mamba_inner_bwd = mamba_inner_fwd


def add_rms_norm_fwd(x, residual, weight, eps, check_finite):
    if check_finite:
        _check_values('add_rms_norm', {'x': x, 'residual': residual, 'weight': weight})
    return _kernels().norm.add_rms_norm_fwd(x, residual, weight, eps)


def add_rms_norm_bwd(dnormed, dsummed, summed, weight, eps):
    return _kernels().norm.add_rms_norm_bwd(dnormed, dsummed, summed, weight, eps)


def ssd_fwd(*args):
    raise NotImplementedError('vimzoo.ops: the Triton backend has no SSD / quasiseparable kernel (can_run says so).')


ssd_bwd = qs_fwd = qs_bwd = ssd_fwd
