"""The 'cpu' backend: vimzoo's C++ kernels (csrc/cpu/, JIT-built on first use by vimzoo.ops._loader).

Row kernels serve every float dtype and layout (inputs made contiguous); fp32 (b, d, l) views with contiguous
channels and d % 16 == 0 (the token-major activations the Vim mixer produces) take the 16-channel-vector kernels,
which also serve the fused mixer `mamba_inner_fwd` / `mamba_inner_bwd` and the fused residual add + RMSNorm
(forward and backward). The Mamba-2 SSD scan and Hydra's quasiseparable core run one chunked kernel
(csrc/cpu/ssd.cpp), forward and backward. The NaN/inf check happens in the kernels while they read the data.
Causal-conv backward: one C++ pass for token-major fp32 input, else the reference (ATen's conv1d gradients).
"""
from typing import Optional, Sequence

import torch

from .. import _loader
from ..reference import compute_dtype, mamba_inner_bwd_ref
from . import reference
from ._common import kernel_grads, kernel_inputs, layout_like, ssd_kernel_grads, ssd_kernel_inputs

NAME = 'cpu'
_F32 = torch.float32
SSD_CHUNK = 64   # tokens per chunk of the SSD kernels (a speed knob: results do not depend on it)


def _ext():
    return _loader.cpu_extension()


def can_run(op: str, device: torch.device, tensors: Sequence[Optional[torch.Tensor]] = (),
            channels: Optional[int] = None, d_state: Optional[int] = None, window: int = 1) -> Optional[str]:
    if device.type != 'cpu':
        return f'needs CPU tensors, got tensors on {device}'
    if op == 'add_rms_norm' and any(t is not None and t.dtype != _F32 for t in tensors):
        return 'the fused add + RMSNorm backward runs fp32 only'   # vimzoo.ops.add_rms_norm: PyTorch's ops then
    if _loader.cpu_extension(required=False) is None:
        return f'the C++ CPU scan kernel could not be built ({_loader.build_error("cpu")})'
    if op in ('mamba_inner_fwd', 'mamba_inner_bwd'):   # else vimzoo.ops.mamba_inner takes the unfused route
        if any(t is not None and t.dtype != _F32 for t in tensors):
            return 'the fused mixer kernel runs fp32 only'
        if channels is not None and channels % 16:
            return f'the fused mixer needs d % 16 == 0 channels, got d = {channels}'
    return None


def _tok_major(*tensors: Optional[torch.Tensor]) -> bool:
    """fp32 (b, d, l) views with contiguous channels and d % 16 == 0: the token-major kernels' layout."""
    return all(t is None or (t.dtype == _F32 and t.stride(1) == 1 and t.shape[1] % 16 == 0) for t in tensors)


def _params(A, B, C, D, delta_bias):
    _, _, a, bt, ct, d, _, bias = kernel_inputs(_F32, None, None, A, B, C, D, None, delta_bias)
    return a, bt, ct, d, bias


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, window, check_finite):
    if _tok_major(u, delta, z):
        a, bt, ct, d, bias = _params(A, B, C, D, delta_bias)
        return layout_like(_ext().scan_fwd_tm(u, delta, a, bt, ct, d, z, bias, softplus, reverse, window,
                                              check_finite), u)
    args = kernel_inputs(u.dtype, u, delta, A, B, C, D, z, delta_bias)
    return layout_like(_ext().scan_fwd(*args, softplus, reverse, window, check_finite), u)


def _channel_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same (b, d, l) values in token-major memory (a no-op for token-major views)."""
    return t if t.stride(1) == 1 else t.transpose(1, 2).contiguous().transpose(1, 2)


def scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, softplus, reverse, window):
    if _tok_major(u, delta, z) and dout.dtype == _F32:
        a, bt, ct, d, bias = _params(A, B, C, D, delta_bias)
        raw = _ext().scan_bwd_tm(_channel_contiguous(dout), u, delta, a, bt, ct, d, z, bias, softplus, reverse,
                                 window, 1.0)
        return kernel_grads(raw, u, delta, A, B, C, D, z, delta_bias)
    args = kernel_inputs(u.dtype, u, delta, A, B, C, D, z, delta_bias)
    raw = _ext().scan_bwd(dout.to(u.dtype).contiguous(), *args, softplus, reverse, window)
    return kernel_grads(raw, u, delta, A, B, C, D, z, delta_bias)


def bidir_fwd(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z, softplus,
              check_finite):
    if _tok_major(u, delta, u_b, delta_b, z):
        a, bt, ct, d, bias = _params(A, B, C, D, delta_bias)
        a_b, bt_b, ct_b, d_b, bias_b = _params(A_b, B_b, C_b, D_b, delta_bias_b)
        out = _ext().bidir_fwd_tm(u, delta, a, bt, ct, d, bias, u_b, delta_b, a_b, bt_b, ct_b, d_b, bias_b, z,
                                  softplus, check_finite)
        return layout_like(out, u)
    f = kernel_inputs(u.dtype, u, delta, A, B, C, D, z, delta_bias)
    r = kernel_inputs(u.dtype, u_b, delta_b, A_b, B_b, C_b, D_b, None, delta_bias_b)
    out = _ext().bidir_fwd(*f[:6], f[7], *r[:6], r[7], f[6], softplus, check_finite)
    return layout_like(out, u)


def conv_fwd(x, weight, bias, silu, reverse, check_finite):
    if _tok_major(x) and weight.dtype == _F32 and (bias is None or bias.dtype == _F32):
        return layout_like(_ext().causal_conv1d_tm(x, weight, bias, silu, reverse, check_finite), x)
    return reference.conv_fwd(x, weight, bias, silu, reverse, check_finite)


def conv_bwd(dout, x, weight, bias, silu, reverse):
    if _tok_major(x) and dout.dtype == weight.dtype == _F32 and (bias is None or bias.dtype == _F32):
        dx, dw, db = _ext().causal_conv1d_bwd_tm(_channel_contiguous(dout), x, weight, bias, silu, reverse)
        return dx, dw, db if bias is not None else None
    return reference.conv_bwd(dout, x, weight, bias, silu, reverse)


def mamba_inner_fwd(xz, fwd, bwd, reverse, window, scale, check_finite):
    empty = torch.empty(0)   # stands for an absent optional tensor in the kernel's tensor lists

    def pack(weights):
        return [empty if t is None else t for t in weights] if weights else []
    out, x_dbl = _ext().mamba_inner_fwd(xz.contiguous(), pack(fwd), pack(bwd), reverse, window, scale, check_finite)
    return out, x_dbl


def mamba_inner_bwd(dout, xz, fwd, bwd, reverse, window, scale, x_dbl=None):
    """reference.mamba_inner_bwd_ref (recompute the conv; scan backward; GEMMs; conv backward) on the
    token-major kernels: no layout copies, Δ = dt · dt_projᵀ and its gradients inside the scan backward (no
    rank-12 GEMMs), the conv + SiLU backward in one pass, dx and dz written (and the directions summed) into dxz."""
    ext = _ext()

    def conv(x, w, b, rev):
        return ext.causal_conv1d_tm(x, w, b, True, rev, False)

    def lowrank_scan_bwd(g, u, dt, dtw, A, B, C, D, z, dt_bias, rev, win, scale_, dz_out, accumulate):
        du, ddt, ddtw, dA, dB, dC, dD, _, dbias = ext.scan_bwd_tm_lowrank(
            _channel_contiguous(g), u, dt, dtw.contiguous(), A, B, C, D, z, dt_bias, True, rev, win, scale_, dz_out,
            accumulate)
        return du, ddt, ddtw, dA, dB, dC, dD, None, dbias   # dz written into dxz

    def conv_bwd_(g, x, w, b, rev, dx_out, accumulate):
        _, dw, db = ext.causal_conv1d_bwd_tm(_channel_contiguous(g), x, w, b, True, rev, dx_out, accumulate)
        return None, dw, db   # dx written into dxz
    return mamba_inner_bwd_ref(dout, xz, fwd, bwd, reverse, window, scale, conv, conv_bwd=conv_bwd_,
                               lowrank_scan_bwd=lowrank_scan_bwd, x_dbl=x_dbl)


def add_rms_norm_fwd(x, residual, weight, eps, check_finite):
    if any(t is not None and t.dtype != _F32 for t in (x, residual, weight)):
        return reference.add_rms_norm_fwd(x, residual, weight, eps, check_finite)
    return _ext().add_rms_norm_fwd(x.contiguous(), None if residual is None else residual.contiguous(), weight, eps,
                                   check_finite)


def add_rms_norm_bwd(dnormed, dsummed, summed, weight, eps):
    if any(t is not None and t.dtype != _F32 for t in (dnormed, dsummed, summed, weight)):
        return reference.add_rms_norm_bwd(dnormed, dsummed, summed, weight, eps)
    return tuple(_ext().add_rms_norm_bwd(dnormed.contiguous(), None if dsummed is None else dsummed.contiguous(),
                                         summed.contiguous(), weight, eps))


# ------------------------------------------------------------------------------------------- SSD / Hydra (Mamba-2)
# One chunked C++ kernel (csrc/cpu/ssd.cpp) serves both ops: fp32, or fp64 for fp64 x; other dtypes run in fp32.
def ssd_fwd(x, dt, A, B, C, D, dt_bias, initial_states, softplus, reverse, check_finite):
    args = ssd_kernel_inputs(compute_dtype(x.dtype), x, dt, A, B, C, D=D, dt_bias=dt_bias,
                             initial_states=initial_states)
    return _ext().ssd_fwd(*args, softplus, reverse, SSD_CHUNK, check_finite).to(x.dtype)


def ssd_bwd(dout, x, dt, A, B, C, D, dt_bias, initial_states, softplus, reverse):
    cdt = compute_dtype(x.dtype)
    args = ssd_kernel_inputs(cdt, x, dt, A, B, C, D=D, dt_bias=dt_bias, initial_states=initial_states)
    raw = _ext().ssd_bwd(dout.to(cdt).contiguous(), *args, softplus, reverse, SSD_CHUNK)
    return ssd_kernel_grads(raw, x, dt, A, B, C, D=D, dt_bias=dt_bias, initial_states=initial_states)


def qs_fwd(x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states, softplus, check_finite):
    args = ssd_kernel_inputs(compute_dtype(x.dtype), x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states)
    return _ext().ssd_fwd(*args, softplus, False, SSD_CHUNK, check_finite).to(x.dtype)


def qs_bwd(dout, x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states, softplus):
    cdt = compute_dtype(x.dtype)
    args = ssd_kernel_inputs(cdt, x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states)
    raw = _ext().ssd_bwd(dout.to(cdt).contiguous(), *args, softplus, False, SSD_CHUNK)
    return ssd_kernel_grads(raw, x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states)
