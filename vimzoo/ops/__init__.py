"""Selective-scan ops for Vim / LBVim: plain, reverse, locally bi-directional (LBMamba) and fused bidirectional
scans, the depthwise causal conv, the fused mixer core and add + RMSNorm; the Mamba-2 SSD scan and Hydra's
quasiseparable mixer core — one API, several backends.

Layout of this package (see docs/kernels.md):
    __init__      the public functions: validate every input once (_validate), then call the custom op
    _validate     every input rule, in one place
    _state        per-thread / per-context settings: backend, NaN/inf check (process defaults: set_*)
    _choose       which backend runs an op ('auto' = best available for the device)
    backends/     one module per backend, same functions each: reference (PyTorch), cpu (C++), cuda, triton,
                  mamba_ssm (the official kernels, when installed)
    triton_kernels/  the Triton kernels
    _ops          torch.library custom ops `torch.ops.vimzoo.*`: registration, fake impls, autograd
    _flops        FLOP formulas for FlopCounterMode
    _loader       JIT build of the compiled kernels (`python -m vimzoo.ops build` prebuilds)
    reference     the readable math every kernel is tested against (reference_ssd: the SSD / Hydra scans)
"""
from typing import Optional, Sequence, Tuple

import torch

from . import _flops  # noqa: F401  (registers torch.ops.vimzoo.* and their FLOP formulas)
from ._choose import choose, requested_backend
from ._flops import scan_flops, ssd_flops
from ._state import (BACKENDS, check_finite_enabled, get_backend, set_backend, set_check_finite, use_backend,
                     use_check_finite)
from ._validate import (check_add_rms_norm, check_bidirectional_scan, check_conv, check_finite, check_mamba_inner,
                        check_quasiseparable, check_scan, check_ssd, check_window)
from .reference import (add_rms_norm_ref, bidirectional_selective_scan_ref, causal_conv1d_ref, lb_window,
                        mamba_inner_ref, selective_scan_ref)  # noqa: F401  (mamba_inner_ref: the math, for users)
from .reference_ssd import quasiseparable_scan_ref, ssd_scan_ref

__all__ = [
    'selective_scan', 'bidirectional_selective_scan', 'causal_conv1d', 'mamba_inner', 'add_rms_norm', 'lb_window',
    'get_backend', 'set_backend', 'use_backend', 'set_check_finite', 'use_check_finite', 'BACKENDS',
    'selective_scan_ref', 'bidirectional_selective_scan_ref', 'causal_conv1d_ref', 'scan_flops', 'kernel_status',
    'ssd_scan', 'quasiseparable_scan', 'ssd_scan_ref', 'quasiseparable_scan_ref', 'ssd_flops',
]


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                   delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False, reverse: bool = False,
                   local_window: Optional[int] = None, backend: Optional[str] = None) -> torch.Tensor:
    """Mamba selective scan; `reverse` runs it from the last token, `local_window=W` adds LBMamba's local
    backward scan (W=1 == plain). u, delta, z (b, d, l); A (d, n); B, C (b, n, l); D, delta_bias (d,)."""
    op = 'selective_scan'
    check_scan(op, u, delta, A, B, C, D, z, delta_bias)
    window = check_window(op, local_window)
    name = requested_backend(op, backend, u.device)
    return torch.ops.vimzoo.selective_scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(reverse),
                                           window, name, check_finite_enabled())


def bidirectional_selective_scan(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b,
                                 z: Optional[torch.Tensor] = None, delta_softplus: bool = True,
                                 backend: Optional[str] = None) -> torch.Tensor:
    """Vim-v2 mixer core in one call: selective_scan(forward params) + selective_scan(backward params,
    reverse=True), both gated by silu(z), all in original token order (the model divides by 2). Both directions
    have the same shapes."""
    op = 'bidirectional_selective_scan'
    check_bidirectional_scan(op, (u, delta, A, B, C, D, delta_bias), (u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b),
                             z)
    name = requested_backend(op, backend, u.device)
    return torch.ops.vimzoo.bidirectional_selective_scan(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b,
                                                         C_b, D_b, delta_bias_b, z, bool(delta_softplus), name,
                                                         check_finite_enabled())


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  activation: Optional[str] = None, reverse: bool = False,
                  backend: Optional[str] = None) -> torch.Tensor:
    """Depthwise causal conv1d (x (b, d, l), weight (d, k), bias (d,)), optional SiLU; reverse = anti-causal."""
    op = 'causal_conv1d'
    check_conv(op, x, weight, bias, activation)
    name = requested_backend(op, backend, x.device)
    return torch.ops.vimzoo.causal_conv1d(x, weight, bias, 'silu' if activation else '', bool(reverse), name,
                                          check_finite_enabled())


def _needs_grad(tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def mamba_inner(xz: torch.Tensor, weights: Sequence[Optional[torch.Tensor]],
                weights_b: Optional[Sequence[Optional[torch.Tensor]]] = None, reverse: bool = False,
                local_window: Optional[int] = None, scale: float = 1.0,
                backend: Optional[str] = None) -> torch.Tensor:
    """Mamba mixer core after in_proj (the official `mamba_inner_fn` / `bimamba_inner_fn` without the projections).

    xz (b, l, 2d): in_proj output, x then z. weights / weights_b: the module parameters of the forward and, for
    Vim's bidirectional mixer, the backward direction (scanned right-to-left), in the order
    (conv1d.weight (d, 1, k) or (d, k), conv1d.bias (d,) or None, x_proj.weight (R + 2N, d), dt_proj.weight (d, R),
    dt_proj.bias (d,) or None, A_log (d, N), D (d,) or None), with A = -exp(A_log). Returns
    scale * scan(conv(x)) * silu(z) as (b, l, d); `reverse` / `local_window` apply to a one-direction mixer (LBVim).

    One differentiable custom op, `vimzoo::mamba_inner_fwd`, whatever the backend: the fused C++ kernel where it fits
    (fp32 CPU inputs with d % 16 == 0: conv, x_proj, the Δ projection inside the scan, gating), elsewhere the same
    math step by step on the backend's kernels. Its backward recomputes the conv output and Δ instead of saving them
    (mamba-ssm's checkpoint_lvl=1), so training keeps only xz, x_proj's small output and the parameters per mixer.
    """
    op = 'mamba_inner'
    window = check_mamba_inner(op, xz, weights, weights_b, reverse, local_window, scale)
    name = requested_backend(op, backend, xz.device)
    absent = xz.new_empty(0)   # the op's lists hold tensors only
    fwd = [absent if t is None else t for t in weights]
    bwd = [absent if t is None else t for t in weights_b] if weights_b is not None else []
    return torch.ops.vimzoo.mamba_inner_fwd(xz, fwd, bwd, bool(reverse), window, float(scale), name,
                                            check_finite_enabled())[0]


def add_rms_norm(x: torch.Tensor, residual: Optional[torch.Tensor], weight: torch.Tensor, eps: float = 1e-5,
                 backend: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Residual add + RMSNorm in fp32 (mamba_ssm's fused `rms_norm_fn(..., residual, prenorm=True)` semantics):
    returns (rms_norm(x + residual) * weight cast to x.dtype, x + residual in fp32). Without grad one fused op runs
    (C++ for fp32 CPU tensors); with grad, a fused differentiable op where the backend has a fused backward
    (C++ for fp32 CPU tensors, Triton), else PyTorch's differentiable ops."""
    op = 'add_rms_norm'
    check_add_rms_norm(op, x, residual, weight, eps)
    name = requested_backend(op, backend, x.device)
    if _needs_grad((x, residual, weight)):
        # a fused differentiable op where a backend has one (C++, Triton); not chosen while compiling (the compiler
        # fuses the plain ops itself, and the choice would trace into kernel loading)
        if not torch.compiler.is_compiling() and choose(op, name, x.device, (x, residual, weight),
                                                         fallback=False) is not None:
            return torch.ops.vimzoo.add_rms_norm(x, residual, weight, float(eps), name, check_finite_enabled())
        if check_finite_enabled():
            check_finite(op, {'x': x, 'residual': residual, 'weight': weight})
        return add_rms_norm_ref(x, residual, weight, float(eps))
    return torch.ops.vimzoo.add_rms_norm_fwd(x, residual, weight, float(eps), name, check_finite_enabled())


def ssd_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: Optional[torch.Tensor] = None, dt_bias: Optional[torch.Tensor] = None, dt_softplus: bool = False,
             initial_states: Optional[torch.Tensor] = None, reverse: bool = False,
             backend: Optional[str] = None) -> torch.Tensor:
    """Mamba-2 SSD scan (mamba_ssm's `mamba_chunk_scan_combined` without z): per head h one scalar decay
    exp(Δ·A_h), B / C shared by the heads of a group. `reverse` runs it anti-causally (from the last token).

    x (b, l, h, p); dt (b, l, h); A (h,); B, C (b, l, g, n) with g dividing h; D, dt_bias (h,); initial_states
    (b, h, p, n). Δ = softplus(dt + dt_bias) when dt_softplus, else dt + dt_bias. Returns (b, l, h, p) in x's
    dtype, computed in fp32 (fp64 for fp64 x)."""
    op = 'ssd_scan'
    check_ssd(op, x, dt, A, B, C, D, dt_bias, initial_states, dt_softplus, reverse)
    name = requested_backend(op, backend, x.device)
    return torch.ops.vimzoo.ssd_scan(x, dt, A, B, C, D, dt_bias, initial_states, dt_softplus, reverse, name,
                                     check_finite_enabled())


def quasiseparable_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                        dt_b: torch.Tensor, B_b: torch.Tensor, C_b: torch.Tensor, D: Optional[torch.Tensor] = None,
                        dt_bias: Optional[torch.Tensor] = None, dt_softplus: bool = False,
                        initial_states: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> torch.Tensor:
    """Hydra's quasiseparable mixer core in one call, all in original token order (no flipped copies):

        y_t = s_{t-1} [t > 0] + s^b_{t+1} [t < l-1] + δ_t x_t,
        s = ssd_scan(x, dt, A, B, C),  s^b = ssd_scan(x, dt_b, A, B_b, C_b, reverse=True)

    (the official `roll(scan([x; flip(x)]))` construction). A, dt_bias and initial_states are shared by both
    directions, as in Hydra. D: (h,), or per token (b, l, h) for Hydra's data-dependent diagonal fc_D(x) + D.
    Shapes and dtypes otherwise as in `ssd_scan`."""
    op = 'quasiseparable_scan'
    check_quasiseparable(op, x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states, dt_softplus)
    name = requested_backend(op, backend, x.device)
    return torch.ops.vimzoo.quasiseparable_scan(x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states,
                                                dt_softplus, name, check_finite_enabled())


def kernel_status() -> dict:
    """Which compiled kernels are usable here (builds the CPU kernel on first call)."""
    from ._loader import cpu_extension, cuda_extension
    return {'cpu': cpu_extension(required=False) is not None, 'cuda': cuda_extension(required=False) is not None}
