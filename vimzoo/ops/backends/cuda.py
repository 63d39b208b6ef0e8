"""The 'cuda' backend: vimzoo's CUDA scan kernels (csrc/cuda/; built for the visible GPU on first use).

The scan kernels take fp32 or bf16 activations (other dtypes run through fp32) and d_state <= 256; the NaN/inf
check runs in the extension (ATen reductions on the device). The causal conv and add + RMSNorm use PyTorch's
CUDA ops through the reference; the fused inference mixer is CPU-only (vimzoo.ops.mamba_inner then runs the
differentiable ops, whose scans are these kernels). Compiled in CI, checked by a CPU warp emulation of the same
source (tests/test_ops_cuda_emu.py); see docs/kernels.md for what has and has not run on a GPU. The Mamba-2 SSD scan
and Hydra's quasiseparable core have their own kernels (csrc/cuda/ssd_cuda_kernel.cu: fp32 compute, d_state <= 256),
likewise compiled in CI and emulated on the CPU, not run on a GPU.
"""
from typing import Optional, Sequence

import torch

from .. import _loader
from . import reference
from ._common import kernel_grads, kernel_inputs, layout_like, ssd_kernel_grads, ssd_kernel_inputs

NAME = 'cuda'
MAX_STATE = 256   # one warp per row, kMaxPerLane states per lane (csrc/cuda/scan_cuda_kernel.cu)


def _ext():
    return _loader.cuda_extension()


def can_run(op: str, device: torch.device, tensors: Sequence[Optional[torch.Tensor]] = (),
            channels: Optional[int] = None, d_state: Optional[int] = None, window: int = 1) -> Optional[str]:
    if device.type != 'cuda':
        return f'needs CUDA tensors, got tensors on {device}'
    if op in ('mamba_inner_fwd', 'mamba_inner_bwd'):
        return 'no fused CUDA mixer kernel (the unfused ops run instead)'
    if op == 'add_rms_norm':   # vimzoo.ops.add_rms_norm then differentiates PyTorch's ops
        return 'no fused add + RMSNorm backward kernel'
    if op in ('selective_scan', 'selective_scan_bwd', 'bidirectional_selective_scan', 'ssd_scan', 'ssd_scan_bwd',
              'quasiseparable_scan', 'quasiseparable_scan_bwd'):
        if _loader.cuda_extension(required=False) is None:
            return f'the CUDA scan kernel is unavailable ({_loader.build_error("cuda")})'
        if d_state is not None and d_state > MAX_STATE:
            return f'the CUDA scan kernel supports d_state <= {MAX_STATE}, got {d_state}'
    return None


def _kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.bfloat16) else torch.float32


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, window, check_finite):
    args = kernel_inputs(_kernel_dtype(u.dtype), u, delta, A, B, C, D, z, delta_bias)
    return layout_like(_ext().scan_fwd(*args, softplus, reverse, window, check_finite).to(u.dtype), u)


def scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, softplus, reverse, window):
    args = kernel_inputs(_kernel_dtype(u.dtype), u, delta, A, B, C, D, z, delta_bias)
    raw = _ext().scan_bwd(dout.to(args[0].dtype).contiguous(), *args, softplus, reverse, window)
    return kernel_grads(raw, u, delta, A, B, C, D, z, delta_bias)


def bidir_fwd(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z, softplus,
              check_finite):
    kdt = _kernel_dtype(u.dtype)
    f = kernel_inputs(kdt, u, delta, A, B, C, D, z, delta_bias)
    r = kernel_inputs(kdt, u_b, delta_b, A_b, B_b, C_b, D_b, None, delta_bias_b)
    out = _ext().bidir_fwd(*f[:6], f[7], *r[:6], r[7], f[6], softplus, check_finite)
    return layout_like(out.to(u.dtype), u)


conv_fwd = reference.conv_fwd
conv_bwd = reference.conv_bwd
add_rms_norm_fwd = reference.add_rms_norm_fwd
add_rms_norm_bwd = reference.add_rms_norm_bwd


def mamba_inner_fwd(*args, **kwargs):   # also the backward's signature (see `reference`)
    raise NotImplementedError('vimzoo.ops: the CUDA backend has no fused mixer kernel (can_run says so).')


mamba_inner_bwd = mamba_inner_fwd


# ------------------------------------------------------------------------------------------- SSD / Hydra (Mamba-2)
_F32 = torch.float32


def ssd_fwd(x, dt, A, B, C, D, dt_bias, initial_states, softplus, reverse, check_finite):
    args = ssd_kernel_inputs(_F32, x, dt, A, B, C, D=D, dt_bias=dt_bias, initial_states=initial_states)
    return _ext().ssd_fwd(*args, softplus, reverse, check_finite).to(x.dtype)


def ssd_bwd(dout, x, dt, A, B, C, D, dt_bias, initial_states, softplus, reverse):
    args = ssd_kernel_inputs(_F32, x, dt, A, B, C, D=D, dt_bias=dt_bias, initial_states=initial_states)
    raw = _ext().ssd_bwd(dout.to(_F32).contiguous(), *args, softplus, reverse)
    return ssd_kernel_grads(raw, x, dt, A, B, C, D=D, dt_bias=dt_bias, initial_states=initial_states)


def qs_fwd(x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states, softplus, check_finite):
    args = ssd_kernel_inputs(_F32, x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states)
    return _ext().ssd_fwd(*args, softplus, False, check_finite).to(x.dtype)


def qs_bwd(dout, x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states, softplus):
    args = ssd_kernel_inputs(_F32, x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states)
    raw = _ext().ssd_bwd(dout.to(_F32).contiguous(), *args, softplus, False)
    return ssd_kernel_grads(raw, x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states)
