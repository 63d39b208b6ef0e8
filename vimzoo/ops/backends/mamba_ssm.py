"""The 'mamba_ssm' backend: the official CUDA kernels of the `mamba_ssm` and `causal_conv1d` packages, for
cross-checking vimzoo's kernels and as a known-good fallback on GPU machines that have them installed.

    selective_scan (plain, reverse) -> mamba_ssm.ops.selective_scan_interface.selective_scan_fn
    bidirectional_selective_scan    -> two selective_scan_fn calls (no gate), summed and gated by silu(z) in fp32
    causal_conv1d (+ SiLU, reverse) -> causal_conv1d.causal_conv1d_fn
`reverse` flips the sequence before and after the call (flip ∘ op ∘ flip is the reverse op). The backward ops run
the packages' own autograd functions (`SelectiveScanFn` / `CausalConv1dFn`: forward, then backward) directly,
because vimzoo's backward ops run below PyTorch's autograd, where no graph can be recorded.

add + RMSNorm runs PyTorch's ops (the reference), as on the 'cuda' backend, so a whole model runs under
`use_backend('mamba_ssm')`. Not covered (can_run says so, and 'auto' moves on): LB windows (local_window > 1),
fp64, B or C in fp32 with bf16/fp16 activations (the package wants them in the activations' dtype), conv widths
outside 2..4, and the fused inference mixer (`mamba_inner` then runs the differentiable ops). The packages are
imported on first use, never by `import vimzoo`; they need a CUDA GPU.
"""
import functools
import importlib
from types import ModuleType
from typing import Optional, Sequence

import torch

from .._validate import check_finite as _check_values
from . import reference
from ._common import layout_like

NAME = 'mamba_ssm'
SCAN_MODULE = 'mamba_ssm.ops.selective_scan_interface'
CONV_MODULE = 'causal_conv1d.causal_conv1d_interface'   # causal_conv1d_fn and CausalConv1dFn
_DEVICE_TYPES = ('cuda',)   # the packages' kernels; tests that stand a CPU module in for them widen this
_SCAN_OPS = ('selective_scan', 'selective_scan_bwd', 'bidirectional_selective_scan')
_CONV_OPS = ('causal_conv1d', 'causal_conv1d_bwd')
_ACT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=None)
def _module(name: str):
    """The imported module, or the import error's text (cached: a missing package is looked up once)."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - a broken install is as unavailable as a missing one
        return f'{name} is not importable ({type(exc).__name__}: {exc})'


def _get(name: str) -> ModuleType:
    module = _module(name)
    if isinstance(module, str):
        raise RuntimeError(f'vimzoo.ops: {module}')
    return module


_SSD_OPS = ('ssd_scan', 'ssd_scan_bwd', 'quasiseparable_scan', 'quasiseparable_scan_bwd')


def can_run(op: str, device: torch.device, tensors: Sequence[Optional[torch.Tensor]] = (),
            channels: Optional[int] = None, d_state: Optional[int] = None, window: int = 1) -> Optional[str]:
    if op in _SSD_OPS:
        return 'the mamba_ssm backend does not wrap mamba_ssm\'s SSD kernels (the cuda or reference backend runs them)'
    if op not in _SCAN_OPS + _CONV_OPS + ('add_rms_norm_fwd',):
        return 'the mamba_ssm backend has no fused mixer and no fused add + RMSNorm backward'
    if device.type not in _DEVICE_TYPES:
        return f'needs CUDA tensors, got tensors on {device}'
    if op == 'add_rms_norm_fwd':
        return None
    present = [t for t in tensors if t is not None]
    if any(t.dtype == torch.float64 for t in present):
        return 'mamba_ssm / causal_conv1d have no fp64 kernels'
    if op in _SCAN_OPS:
        if window > 1:
            return f'mamba_ssm has no locally bi-directional (LB) scan, got local_window={window}'
        u = tensors[0] if tensors else None   # tensors: (u, A, ...) as vimzoo.ops._ops passes them
        if u is not None and (u.dtype not in _ACT_DTYPES
                              or any(t.dim() == 3 and t.dtype != u.dtype for t in present)):
            return 'mamba_ssm needs B and C in the dtype of u (fp32, bf16 or fp16)'
        module = _module(SCAN_MODULE)
    else:
        weight = tensors[1] if len(tensors) > 1 else None   # (x, weight, bias)
        if weight is not None and not 2 <= weight.shape[1] <= 4:
            return f'causal_conv1d supports conv widths 2..4, got {weight.shape[1]}'
        module = _module(CONV_MODULE)
    return module if isinstance(module, str) else None


def _flip(t: Optional[torch.Tensor], reverse: bool) -> Optional[torch.Tensor]:
    return t.flip(-1) if reverse and t is not None else t


def _scan_args(u, delta, A, B, C, D, z, delta_bias, reverse):
    return (_flip(u, reverse), _flip(delta, reverse), A.float(), _flip(B, reverse), _flip(C, reverse),
            None if D is None else D.float().contiguous(), _flip(z, reverse),
            None if delta_bias is None else delta_bias.float().contiguous())


def _scan(u, delta, A, B, C, D, z, delta_bias, softplus, reverse):
    out = _get(SCAN_MODULE).selective_scan_fn(*_scan_args(u, delta, A, B, C, D, z, delta_bias, reverse),
                                              delta_softplus=softplus)
    return _flip(out, reverse)


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, window, check_finite):
    if check_finite:
        _check_values('selective_scan', dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias))
    return layout_like(_scan(u, delta, A, B, C, D, z, delta_bias, softplus, reverse), u)


class _Ctx:
    """What an autograd function's forward/backward use of `ctx` (called directly, outside autograd)."""

    def __init__(self):
        self.saved_tensors = ()
        self.needs_input_grad = (True,) * 16

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def mark_non_differentiable(self, *tensors):
        pass


def scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, softplus, reverse, window):
    fn = _get(SCAN_MODULE).SelectiveScanFn
    ctx = _Ctx()
    fn.forward(ctx, *_scan_args(u, delta, A, B, C, D, z, delta_bias, reverse), softplus)
    du, dd, dA, dB, dC, dD, dz, dbias = fn.backward(ctx, _flip(dout, reverse).contiguous())[:8]

    def back(g, t, flip=True):
        return None if t is None else (_flip(g, reverse) if flip else g).to(t.dtype)
    return (back(du, u), back(dd, delta), back(dA, A, False), back(dB, B), back(dC, C), back(dD, D, False),
            back(dz, z), back(dbias, delta_bias, False))


def bidir_fwd(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z, softplus,
              check_finite):
    if check_finite:
        op = 'bidirectional_selective_scan'
        _check_values(op, dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias))
        _check_values(op, dict(u_b=u_b, delta_b=delta_b, A_b=A_b, B_b=B_b, C_b=C_b, D_b=D_b,
                               delta_bias_b=delta_bias_b))
    y = _scan(u, delta, A, B, C, D, None, delta_bias, softplus, False).float()
    y = y + _scan(u_b, delta_b, A_b, B_b, C_b, D_b, None, delta_bias_b, softplus, True).float()
    if z is not None:
        y = y * torch.nn.functional.silu(z.float())
    return layout_like(y.to(u.dtype), u)


def _conv_args(x, weight, bias, reverse):
    x = _flip(x, reverse)
    return (x if x.stride(-1) == 1 else x.contiguous()), weight, bias


def conv_fwd(x, weight, bias, silu, reverse, check_finite):
    if check_finite:
        _check_values('causal_conv1d', {'x': x, 'weight': weight, 'bias': bias})
    out = _get(CONV_MODULE).causal_conv1d_fn(*_conv_args(x, weight, bias, reverse),
                                             activation='silu' if silu else None)
    return layout_like(_flip(out, reverse), x)


def conv_bwd(dout, x, weight, bias, silu, reverse):
    fn = _get(CONV_MODULE).CausalConv1dFn
    ctx = _Ctx()
    fn.forward(ctx, *_conv_args(x, weight, bias, reverse), activation='silu' if silu else None)
    dx, dw, db = fn.backward(ctx, _flip(dout, reverse).contiguous())[:3]
    return _flip(dx, reverse).to(x.dtype), dw.to(weight.dtype), None if bias is None else db.to(bias.dtype)


def mamba_inner_fwd(*args, **kwargs):   # also the backward's signature (see `reference`)
    raise NotImplementedError('vimzoo.ops: the mamba_ssm backend has no fused mixer (can_run says so).')


mamba_inner_bwd = mamba_inner_fwd


add_rms_norm_fwd = reference.add_rms_norm_fwd
add_rms_norm_bwd = reference.add_rms_norm_bwd


def ssd_fwd(*args):
    raise NotImplementedError('vimzoo.ops: the mamba_ssm backend has no SSD / quasiseparable kernel (can_run says so).')


ssd_bwd = qs_fwd = qs_bwd = ssd_fwd
