"""torch.library custom ops (namespace `vimzoo::`) with fake impls, autograd and FLOP formulas.

Each op takes a concrete `backend` string; 'auto' is resolved when the op runs (not when it is traced), so
torch.compile / FX graphs hold one opaque op whatever backend executes it.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from ._backend import check_finite_enabled, resolve_backend
from ._check import check_finite
from .reference import (bidirectional_selective_scan_ref, causal_conv1d_bwd_ref, causal_conv1d_ref,
                        compute_dtype, selective_scan_bwd_ref, selective_scan_ref)

_F32 = torch.float32

# --------------------------------------------------------------------------------------------------------------
# Kernel adapters: the C++/CUDA kernels take B, C transposed to (b, l, n) and A/D/delta_bias in the compute dtype.
# --------------------------------------------------------------------------------------------------------------


def _tok_major(*tensors: Optional[Tensor]) -> bool:
    """fp32 (b, d, l) views with contiguous channels and d % 16 == 0: the CPU kernel's token-major fast path."""
    return all(t is None or (t.dtype == _F32 and t.dim() == 3 and t.stride(1) == 1 and t.shape[1] % 16 == 0)
               for t in tensors)


def _layout_like(out: Tensor, like: Tensor) -> Tensor:
    """Outputs follow `torch.empty_like(like)` (memory layout of the input; the fake impls promise the same), so
    token-major (b, l, d) activations stay token-major through every backend."""
    target = torch.empty_like(like, dtype=out.dtype)
    if target.stride() == out.stride():
        return out
    return target.copy_(out)


def _ext(impl: str):
    from ._loader import cpu_extension, cuda_extension
    return cpu_extension() if impl == 'cpu' else cuda_extension()


def _kernel_dtype(impl: str, dtype: torch.dtype) -> torch.dtype:
    """Input dtype the kernel is instantiated for (CUDA: fp32/bf16 only; others run through fp32)."""
    if impl == 'cuda' and dtype not in (torch.float32, torch.bfloat16):
        return torch.float32
    return dtype


def _prep(impl, u, delta, A, B, C, D, z, delta_bias):
    kdt = _kernel_dtype(impl, torch.float32 if u is None else u.dtype)
    cdt = compute_dtype(kdt)

    def act(t):
        return None if t is None else t.to(kdt).contiguous()

    def par(t):
        return None if t is None else t.to(cdt).contiguous()

    bt = B.to(cdt).transpose(1, 2).contiguous()
    ct = C.to(cdt).transpose(1, 2).contiguous()
    return act(u), act(delta), par(A), bt, ct, par(D), act(z), par(delta_bias)


def _scan_named(u, delta, A, B, C, D, z, delta_bias, sfx=''):
    return {f'u{sfx}': u, f'delta{sfx}': delta, f'A{sfx}': A, f'B{sfx}': B, f'C{sfx}': C, f'D{sfx}': D, 'z': z,
            f'delta_bias{sfx}': delta_bias}


def _kernel_fwd(impl, u, delta, A, B, C, D, z, delta_bias, softplus, reverse, window):
    if impl == 'cpu' and _tok_major(u, delta, z):
        _, _, a, bt, ct, d, _, bias = _prep(impl, None, None, A, B, C, D, None, delta_bias)
        out = _ext(impl).scan_fwd_tm(u, delta, a, bt, ct, d, z, bias, softplus, reverse, window,
                                     check_finite_enabled())
        return _layout_like(out, u)
    args = _prep(impl, u, delta, A, B, C, D, z, delta_bias)
    if impl == 'cpu':   # the CPU kernel checks NaN/inf while it reads the inputs (no extra pass)
        out = _ext(impl).scan_fwd(*args, softplus, reverse, window, check_finite_enabled())
    else:
        check_finite('selective_scan', _scan_named(u, delta, A, B, C, D, z, delta_bias))
        out = _ext(impl).scan_fwd(*args, softplus, reverse, window)
    return _layout_like(out.to(u.dtype), u)


def _kernel_bwd(impl, dout, u, delta, A, B, C, D, z, delta_bias, softplus, reverse, window):
    args = _prep(impl, u, delta, A, B, C, D, z, delta_bias)
    dout_k = dout.to(args[0].dtype).contiguous()
    du, dd, dA, dBt, dCt, dD, dz, dbias = _ext(impl).scan_bwd(dout_k, *args, softplus, reverse, window)
    return (du.to(u.dtype), dd.to(delta.dtype), dA.to(A.dtype), dBt.transpose(1, 2).to(B.dtype).contiguous(),
            dCt.transpose(1, 2).to(C.dtype).contiguous(), _none_grad(dD, D), _none_grad(dz, z),
            _none_grad(dbias, delta_bias))


def _none_grad(g: Tensor, like: Optional[Tensor]) -> Tensor:
    if like is None:
        return torch.empty(0, dtype=_F32, device=g.device)
    return g.to(like.dtype).contiguous()


def _empty_grad(like: Optional[Tensor], ref: Tensor) -> Tensor:
    if like is None:
        return torch.empty(0, dtype=_F32, device=ref.device)
    return like.new_empty(like.shape)


def _fill(grads, ref: Tensor) -> Tuple[Tensor, ...]:
    """Custom ops cannot return None: absent optional inputs get empty fp32 grads (dropped by the autograd)."""
    return tuple(torch.empty(0, dtype=_F32, device=ref.device) if g is None else g.contiguous() for g in grads)


# --------------------------------------------------------------------------------------------------------------
# selective_scan
# --------------------------------------------------------------------------------------------------------------
@torch.library.custom_op('vimzoo::selective_scan', mutates_args=())
def selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                      z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool, reverse: bool,
                      window: int, backend: str) -> Tensor:
    impl = resolve_backend(backend, u.device)
    if impl == 'reference':
        check_finite('selective_scan', _scan_named(u, delta, A, B, C, D, z, delta_bias))
        lw = None if window <= 1 else window
        return _layout_like(selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, lw), u)
    return _kernel_fwd(impl, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, window)


@selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, window, backend):
    return torch.empty_like(u)


@torch.library.custom_op('vimzoo::selective_scan_bwd', mutates_args=())
def selective_scan_bwd_op(dout: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                          D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                          delta_softplus: bool, reverse: bool, window: int, backend: str
                          ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias); empty tensors stand for absent inputs."""
    impl = resolve_backend(backend, u.device)
    if impl == 'reference':
        grads = selective_scan_bwd_ref(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse,
                                       None if window <= 1 else window)
        return _fill(grads, u)
    return _kernel_bwd(impl, dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, window)


@selective_scan_bwd_op.register_fake
def _(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, window, backend):
    return (u.new_empty(u.shape), delta.new_empty(delta.shape), A.new_empty(A.shape), B.new_empty(B.shape),
            C.new_empty(C.shape), _empty_grad(D, u), _empty_grad(z, u), _empty_grad(delta_bias, u))


def _scan_setup(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, softplus, reverse, window, backend = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
    ctx.cfg = (softplus, reverse, window, backend)


def _scan_backward(ctx, dout):
    u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
    du, dd, dA, dB, dC, dD, dz, dbias = torch.ops.vimzoo.selective_scan_bwd(
        dout.contiguous(), u, delta, A, B, C, D, z, delta_bias, *ctx.cfg)
    return (du, dd, dA, dB, dC, None if D is None else dD, None if z is None else dz,
            None if delta_bias is None else dbias, None, None, None, None)


selective_scan_op.register_autograd(_scan_backward, setup_context=_scan_setup)


# --------------------------------------------------------------------------------------------------------------
# bidirectional_selective_scan (Vim v2): forward scan + reverse scan, gated by the same silu(z)
# --------------------------------------------------------------------------------------------------------------
@torch.library.custom_op('vimzoo::bidirectional_selective_scan', mutates_args=())
def bidirectional_selective_scan_op(
        u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
        delta_bias: Optional[Tensor], u_b: Tensor, delta_b: Tensor, A_b: Tensor, B_b: Tensor, C_b: Tensor,
        D_b: Optional[Tensor], delta_bias_b: Optional[Tensor], z: Optional[Tensor], delta_softplus: bool,
        backend: str) -> Tensor:
    impl = resolve_backend(backend, u.device)
    op = 'bidirectional_selective_scan'
    if impl != 'cpu':
        check_finite(op, _scan_named(u, delta, A, B, C, D, z, delta_bias))
        check_finite(op, _scan_named(u_b, delta_b, A_b, B_b, C_b, D_b, None, delta_bias_b, '_b'))
    if impl == 'reference':
        return _layout_like(bidirectional_selective_scan_ref(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b,
                                                             C_b, D_b, delta_bias_b, z, delta_softplus), u)
    if impl == 'cpu' and _tok_major(u, delta, u_b, delta_b, z):
        _, _, a, bt, ct, d, _, bias = _prep(impl, None, None, A, B, C, D, None, delta_bias)
        _, _, a_b, bt_b, ct_b, d_b, _, bias_b = _prep(impl, None, None, A_b, B_b, C_b, D_b, None, delta_bias_b)
        out = _ext(impl).bidir_fwd_tm(u, delta, a, bt, ct, d, bias, u_b, delta_b, a_b, bt_b, ct_b, d_b, bias_b, z,
                                      delta_softplus, check_finite_enabled())
        return _layout_like(out, u)
    f = _prep(impl, u, delta, A, B, C, D, None, delta_bias)
    r = _prep(impl, u_b, delta_b, A_b, B_b, C_b, D_b, None, delta_bias_b)
    zk = None if z is None else z.to(f[0].dtype).contiguous()
    extra = (check_finite_enabled(),) if impl == 'cpu' else ()
    out = _ext(impl).bidir_fwd(*f[:6], f[7], *r[:6], r[7], zk, delta_softplus, *extra)
    return _layout_like(out.to(u.dtype), u)


@bidirectional_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z, delta_softplus,
      backend):
    return torch.empty_like(u)


def _bidir_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:15])
    ctx.cfg = (inputs[15], inputs[16])


def _bidir_backward(ctx, dout):
    u, delta, A, B, C, D, bias, u_b, delta_b, A_b, B_b, C_b, D_b, bias_b, z = ctx.saved_tensors
    softplus, backend = ctx.cfg
    dout = dout.contiguous()
    # out = (y_f + y_b)·silu(z) is linear in each y, so each direction's z-gated backward gives its own share of
    # dz (dout·y_dir·silu'(z)) and the right grads for its inputs; dz is their sum.
    gf = torch.ops.vimzoo.selective_scan_bwd(dout, u, delta, A, B, C, D, z, bias, softplus, False, 1, backend)
    gb = torch.ops.vimzoo.selective_scan_bwd(dout, u_b, delta_b, A_b, B_b, C_b, D_b, z, bias_b, softplus, True,
                                             1, backend)
    dz = None if z is None else gf[6] + gb[6]

    def opt(g, t):
        return None if t is None else g
    return (gf[0], gf[1], gf[2], gf[3], gf[4], opt(gf[5], D), opt(gf[7], bias),
            gb[0], gb[1], gb[2], gb[3], gb[4], opt(gb[5], D_b), opt(gb[7], bias_b), dz, None, None)


bidirectional_selective_scan_op.register_autograd(_bidir_backward, setup_context=_bidir_setup)


# --------------------------------------------------------------------------------------------------------------
# causal_conv1d (depthwise). The CPU kernel fuses conv + bias + SiLU + NaN/inf check for token-major fp32 input;
# everything else (and the backward) uses ATen's conv1d through the reference.
# --------------------------------------------------------------------------------------------------------------
@torch.library.custom_op('vimzoo::causal_conv1d', mutates_args=())
def causal_conv1d_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str, reverse: bool,
                     backend: str) -> Tensor:
    impl = resolve_backend(backend, x.device)
    if impl == 'cpu' and _tok_major(x) and weight.dtype == _F32 and (bias is None or bias.dtype == _F32):
        out = _ext(impl).causal_conv1d_tm(x, weight, bias, bool(activation), reverse, check_finite_enabled())
        return _layout_like(out, x)
    check_finite('causal_conv1d', {'x': x, 'weight': weight, 'bias': bias})
    return _layout_like(causal_conv1d_ref(x, weight, bias, activation or None, reverse), x)


@causal_conv1d_op.register_fake
def _(x, weight, bias, activation, reverse, backend):
    return torch.empty_like(x)


@torch.library.custom_op('vimzoo::causal_conv1d_bwd', mutates_args=())
def causal_conv1d_bwd_op(dout: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str,
                         reverse: bool, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    return _fill(causal_conv1d_bwd_ref(dout, x, weight, bias, activation or None, reverse), x)


@causal_conv1d_bwd_op.register_fake
def _(dout, x, weight, bias, activation, reverse, backend):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), _empty_grad(bias, x)


def _conv_setup(ctx, inputs, output):
    x, weight, bias, activation, reverse, backend = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.cfg = (activation, reverse, backend)


def _conv_backward(ctx, dout):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = torch.ops.vimzoo.causal_conv1d_bwd(dout.contiguous(), x, weight, bias, *ctx.cfg)
    return dx, dw, None if bias is None else db, None, None, None


causal_conv1d_op.register_autograd(_conv_backward, setup_context=_conv_setup)


# --------------------------------------------------------------------------------------------------------------
# mamba_inner_fwd: the fused inference mixer core (CPU kernel only; forward only, no autograd). Each direction is
# [conv_weight (d, 1, k) or (d, k), conv_bias (d,) or empty, x_proj_weight (R + 2N, d), dt_proj_weight (d, R),
# dt_proj_bias (d,), A_log (d, N), D (d,)]; `bwd` empty = one direction. vimzoo.ops.mamba_inner routes here only
# when no grad is needed.
# --------------------------------------------------------------------------------------------------------------
@torch.library.custom_op('vimzoo::mamba_inner_fwd', mutates_args=())
def mamba_inner_fwd_op(xz: Tensor, fwd: List[Tensor], bwd: List[Tensor], reverse: bool, window: int,
                       scale: float) -> Tensor:
    return _ext('cpu').mamba_inner_fwd(xz.contiguous(), list(fwd), list(bwd), reverse, window, scale,
                                       check_finite_enabled())


@mamba_inner_fwd_op.register_fake
def _(xz, fwd, bwd, reverse, window, scale):
    return xz.new_empty((xz.shape[0], xz.shape[1], xz.shape[2] // 2))


# --------------------------------------------------------------------------------------------------------------
# add_rms_norm_fwd: fused residual add + RMSNorm for fp32 CPU inference (vimzoo.ops.add_rms_norm routes here).
# --------------------------------------------------------------------------------------------------------------
@torch.library.custom_op('vimzoo::add_rms_norm_fwd', mutates_args=())
def add_rms_norm_fwd_op(x: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    normed, summed = _ext('cpu').add_rms_norm_fwd(x.contiguous(), None if residual is None else residual.contiguous(),
                                                  weight, eps)
    return normed, summed


@add_rms_norm_fwd_op.register_fake
def _(x, residual, weight, eps):
    return torch.empty_like(x), torch.empty_like(x)


# --------------------------------------------------------------------------------------------------------------
# FLOP formulas (FlopCounterMode sees each op once). Per (batch, channel, token, state) and direction the scan
# does: Δ·A, exp, Δu·B, a·h + b (2), C·h + accumulate (2), and ~2 for Δ/softplus/D amortised -> 9·b·d·l·n (the
# count mamba_ssm uses), + b·d·l for D·u and + b·d·l for the z gate. The LB local backward scan adds a·hb + b,
# h + r and its C-dot: +3·b·d·l·n. Backward (state recompute + reverse scan + grads) is counted as 2× forward.
# --------------------------------------------------------------------------------------------------------------
def scan_flops(u_shape, n: int, has_d: bool, has_z: bool, window: int = 1) -> int:
    b, d, l = u_shape
    per_state = 9 + (3 if window > 1 else 0)
    return per_state * b * d * l * n + (b * d * l if has_d else 0) + (b * d * l if has_z else 0)


@register_flop_formula(torch.ops.vimzoo.selective_scan)
def _scan_flop(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, window, backend, out_shape=None,
               **kwargs) -> int:
    return scan_flops(u, A[1], D is not None, z is not None, window)


@register_flop_formula(torch.ops.vimzoo.selective_scan_bwd)
def _scan_bwd_flop(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, window, backend,
                   out_shape=None, **kwargs) -> int:
    return 2 * scan_flops(u, A[1], D is not None, z is not None, window)


@register_flop_formula(torch.ops.vimzoo.bidirectional_selective_scan)
def _bidir_flop(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z,
                delta_softplus, backend, out_shape=None, **kwargs) -> int:
    return (scan_flops(u, A[1], D is not None, z is not None) + scan_flops(u_b, A_b[1], D_b is not None, False))


@register_flop_formula(torch.ops.vimzoo.causal_conv1d)
def _conv_flop(x, weight, bias, activation, reverse, backend, out_shape=None, **kwargs) -> int:
    b, d, l = x
    return 2 * b * d * l * weight[1]


@register_flop_formula(torch.ops.vimzoo.causal_conv1d_bwd)
def _conv_bwd_flop(dout, x, weight, bias, activation, reverse, backend, out_shape=None, **kwargs) -> int:
    b, d, l = x
    return 4 * b * d * l * weight[1]


@register_flop_formula(torch.ops.vimzoo.mamba_inner_fwd)
def _mamba_inner_flop(xz, fwd, bwd, reverse, window, scale, out_shape=None, **kwargs) -> int:
    b, l, two_d = xz
    d = two_d // 2
    total = 0
    for i, weights in enumerate((fwd, bwd)):
        if not weights:
            continue
        conv_w, _, x_proj_w, dt_proj_w, _, a, _ = weights
        total += 2 * b * d * l * conv_w[-1]                    # causal conv
        total += 2 * b * l * d * x_proj_w[0]                   # x_proj
        total += 2 * b * l * dt_proj_w[1] * d                  # dt_proj (fused into the scan)
        total += scan_flops((b, d, l), a[1], True, i == 0, window if i == 0 else 1)
    return total


@register_flop_formula(torch.ops.vimzoo.add_rms_norm_fwd)
def _add_rms_norm_flop(x, residual, weight, eps, out_shape=None, **kwargs) -> int:
    """0, like every element-wise aten op (FlopCounterMode counts neither layer_norm nor rms_norm), so models that
    use the fused norm stay comparable with models that use torch's."""
    return 0
