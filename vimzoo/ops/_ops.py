"""torch.library custom ops (namespace `vimzoo::`): registration, fake impls and autograd only.

Each op receives the requested backend name ('auto' included) and the NaN/inf-check flag as arguments; the backend
is chosen when the op runs (vimzoo.ops._choose), not when it is traced, so torch.compile / FX / export graphs hold
one opaque op whatever backend executes it. Inputs were validated by the public functions in vimzoo.ops; zero-size
inputs give empty results here, before any backend runs.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ._choose import choose, resolve_default
from ._unfused import mixer_bwd, mixer_fwd
from .backends._common import layout_like

_F32 = torch.float32


def _empty_grad(like: Optional[Tensor], ref: Tensor) -> Tensor:
    """Custom ops cannot return None: absent optional inputs get an empty fp32 grad (dropped by the autograd)."""
    return torch.empty(0, dtype=_F32, device=ref.device) if like is None else like.new_empty(like.shape)


def _fill(grads, ref: Tensor) -> Tuple[Tensor, ...]:
    return tuple(torch.empty(0, dtype=_F32, device=ref.device) if g is None else g for g in grads)


def _zero_grads(*inputs: Optional[Tensor]) -> Tuple[Tensor, ...]:
    """Grads of an op whose output is empty: zeros for every (possibly non-empty) parameter."""
    ref = next(t for t in inputs if t is not None)
    return tuple(torch.empty(0, dtype=_F32, device=ref.device) if t is None else torch.zeros_like(t) for t in inputs)


def _choose_scan(op: str, backend: str, u: Tensor, A: Tensor, *tensors: Optional[Tensor], window: int = 1):
    return choose(op, backend, u.device, (u, A, *tensors), d_state=A.shape[1], window=window)


def _as_promised(out: Tensor, like: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """`out` with the strides the fake impl promises (`torch.empty_like(like)`): a backend may return another layout
    (the C++ kernels return contiguous tensors for a strided input), and compiled graphs assert the fake's strides.
    Free when they already agree (the common case)."""
    if out.stride() == like.stride() or out.numel() <= 1:   # what empty_like keeps for a dense `like`
        return out
    expected = torch.empty_like(like, dtype=dtype or out.dtype, device='meta')
    if out.stride() == expected.stride():
        return out
    return torch.empty_like(like, dtype=dtype or out.dtype).copy_(out)


# --------------------------------------------------------------------------------------------------------------
# selective_scan
# --------------------------------------------------------------------------------------------------------------
@torch.library.custom_op('vimzoo::selective_scan', mutates_args=())
def selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                      z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool, reverse: bool,
                      window: int, backend: str, check_finite: bool) -> Tensor:
    if u.numel() == 0:
        return torch.empty_like(u)
    impl = _choose_scan('selective_scan', backend, u, A, delta, B, C, D, z, delta_bias, window=window)
    return _as_promised(impl.scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, window,
                                      check_finite), u)


@selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, window, backend, check_finite):
    return torch.empty_like(u)


@torch.library.custom_op('vimzoo::selective_scan_bwd', mutates_args=())
def selective_scan_bwd_op(dout: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                          D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                          delta_softplus: bool, reverse: bool, window: int, backend: str
                          ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias); empty tensors stand for absent inputs."""
    if u.numel() == 0:
        return _zero_grads(u, delta, A, B, C, D, z, delta_bias)
    impl = _choose_scan('selective_scan_bwd', backend, u, A, delta, B, C, D, z, delta_bias, window=window)
    du, dd, dA, dB, dC, dD, dz, dbias = impl.scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                                      reverse, window)
    # activations' grads in their inputs' layout (what the fake impl promises), parameters' contiguous
    return _fill((layout_like(du, u), layout_like(dd, delta), dA, dB, dC, dD,
                  None if dz is None else layout_like(dz, z), dbias), u)


@selective_scan_bwd_op.register_fake
def _(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, window, backend):
    return (torch.empty_like(u), torch.empty_like(delta), A.new_empty(A.shape), B.new_empty(B.shape),
            C.new_empty(C.shape), _empty_grad(D, u), torch.empty(0, dtype=_F32) if z is None else torch.empty_like(z),
            _empty_grad(delta_bias, u))


def _scan_setup(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, softplus, reverse, window, backend, _ = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
    ctx.cfg = (softplus, reverse, window, resolve_default(backend))


def _scan_backward(ctx, dout):
    u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
    du, dd, dA, dB, dC, dD, dz, dbias = torch.ops.vimzoo.selective_scan_bwd(
        dout, u, delta, A, B, C, D, z, delta_bias, *ctx.cfg)
    return (du, dd, dA, dB, dC, None if D is None else dD, None if z is None else dz,
            None if delta_bias is None else dbias, None, None, None, None, None)


selective_scan_op.register_autograd(_scan_backward, setup_context=_scan_setup)


# --------------------------------------------------------------------------------------------------------------
# bidirectional_selective_scan (Vim v2): forward scan + reverse scan, gated by the same silu(z)
# --------------------------------------------------------------------------------------------------------------
@torch.library.custom_op('vimzoo::bidirectional_selective_scan', mutates_args=())
def bidirectional_selective_scan_op(
        u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
        delta_bias: Optional[Tensor], u_b: Tensor, delta_b: Tensor, A_b: Tensor, B_b: Tensor, C_b: Tensor,
        D_b: Optional[Tensor], delta_bias_b: Optional[Tensor], z: Optional[Tensor], delta_softplus: bool,
        backend: str, check_finite: bool) -> Tensor:
    if u.numel() == 0:
        return torch.empty_like(u)
    impl = _choose_scan('bidirectional_selective_scan', backend, u, A, delta, B, C, D, delta_bias, u_b, delta_b,
                        A_b, B_b, C_b, D_b, delta_bias_b, z)
    return _as_promised(impl.bidir_fwd(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b,
                                       delta_bias_b, z, delta_softplus, check_finite), u)


@bidirectional_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z, delta_softplus,
      backend, check_finite):
    return torch.empty_like(u)


def _bidir_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:15])
    ctx.cfg = (inputs[15], resolve_default(inputs[16]))


def _bidir_backward(ctx, dout):
    u, delta, A, B, C, D, bias, u_b, delta_b, A_b, B_b, C_b, D_b, bias_b, z = ctx.saved_tensors
    softplus, backend = ctx.cfg
    # out = (y_f + y_b)·silu(z) is linear in each y, so each direction's z-gated backward gives its own share of
    # dz (dout·y_dir·silu'(z)) and the right grads for its inputs; dz is their sum.
    gf = torch.ops.vimzoo.selective_scan_bwd(dout, u, delta, A, B, C, D, z, bias, softplus, False, 1, backend)
    gb = torch.ops.vimzoo.selective_scan_bwd(dout, u_b, delta_b, A_b, B_b, C_b, D_b, z, bias_b, softplus, True,
                                             1, backend)
    dz = None if z is None else gf[6] + gb[6]

    def opt(g, t):
        return None if t is None else g
    return (gf[0], gf[1], gf[2], gf[3], gf[4], opt(gf[5], D), opt(gf[7], bias),
            gb[0], gb[1], gb[2], gb[3], gb[4], opt(gb[5], D_b), opt(gb[7], bias_b), dz, None, None, None)


bidirectional_selective_scan_op.register_autograd(_bidir_backward, setup_context=_bidir_setup)


# --------------------------------------------------------------------------------------------------------------
# causal_conv1d (depthwise)
# --------------------------------------------------------------------------------------------------------------
@torch.library.custom_op('vimzoo::causal_conv1d', mutates_args=())
def causal_conv1d_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str, reverse: bool,
                     backend: str, check_finite: bool) -> Tensor:
    if x.numel() == 0:
        return torch.empty_like(x)
    impl = choose('causal_conv1d', backend, x.device, (x, weight, bias))
    return _as_promised(impl.conv_fwd(x, weight, bias, bool(activation), reverse, check_finite), x)


@causal_conv1d_op.register_fake
def _(x, weight, bias, activation, reverse, backend, check_finite):
    return torch.empty_like(x)


@torch.library.custom_op('vimzoo::causal_conv1d_bwd', mutates_args=())
def causal_conv1d_bwd_op(dout: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str,
                         reverse: bool, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    if x.numel() == 0:
        return _zero_grads(x, weight, bias)
    impl = choose('causal_conv1d_bwd', backend, x.device, (x, weight, bias))
    dx, dw, db = impl.conv_bwd(dout, x, weight, bias, bool(activation), reverse)
    return _fill((layout_like(dx, x), dw.contiguous(), db), x)


@causal_conv1d_bwd_op.register_fake
def _(dout, x, weight, bias, activation, reverse, backend):
    return torch.empty_like(x), weight.new_empty(weight.shape), _empty_grad(bias, x)


def _conv_setup(ctx, inputs, output):
    x, weight, bias, activation, reverse, backend, _ = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.cfg = (activation, reverse, resolve_default(backend))


def _conv_backward(ctx, dout):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = torch.ops.vimzoo.causal_conv1d_bwd(dout, x, weight, bias, *ctx.cfg)
    return dx, dw, None if bias is None else db, None, None, None, None


causal_conv1d_op.register_autograd(_conv_backward, setup_context=_conv_setup)


# --------------------------------------------------------------------------------------------------------------
# mamba_inner_fwd: the fused mixer core, differentiable. Returns (out, x_dbl): x_dbl is x_proj's output per direction
# (directions, b, l, R + 2N), the one intermediate the backward reads; it recomputes the conv output and Δ from the
# saved inputs (mamba-ssm's checkpoint_lvl=1, which keeps x_dbl as well), so training keeps only xz, x_dbl and the
# parameters per mixer. Each direction is [conv_weight (d, 1, k) or (d, k), conv_bias, x_proj_weight (R + 2N, d),
# dt_proj_weight (d, R), dt_proj_bias, A_log (d, N), D]; absent optional tensors are None; `bwd` empty = one
# direction.
# --------------------------------------------------------------------------------------------------------------
def _x_dbl_shape(xz: Tensor, fwd: List[Tensor], bwd: List[Tensor]) -> Tuple[int, int, int, int]:
    """(directions, b, l, R + 2N): fwd[2] is x_proj's weight."""
    return 2 if bwd else 1, xz.shape[0], xz.shape[1], fwd[2].shape[0]


def _mixer_out(xz: Tensor, fwd: List[Tensor], bwd: List[Tensor]) -> Tuple[Tensor, Tensor]:
    b, l, d2 = xz.shape
    return xz.new_empty((b, l, d2 // 2)), xz.new_empty(_x_dbl_shape(xz, fwd, bwd))


def _absent_as_none(weights: List[Tensor]) -> Optional[List[Optional[Tensor]]]:
    """The op's lists carry empty tensors for absent optional parameters (validated ones are never empty)."""
    return [t if t.numel() else None for t in weights] or None


def _mixer_kernel(op: str, backend: str, xz: Tensor, fwd, bwd):
    """The backend with a fused kernel for these inputs, or None (then the unfused orchestration runs)."""
    return choose(op, backend, xz.device, (xz, *fwd, *bwd), fallback=False, channels=xz.shape[2] // 2)


def _picker(backend: str, device: torch.device):
    return lambda op, tensors, **info: choose(op, backend, device, tensors, **info)


@torch.library.custom_op('vimzoo::mamba_inner_fwd', mutates_args=())
def mamba_inner_fwd_op(xz: Tensor, fwd: List[Tensor], bwd: List[Tensor], reverse: bool, window: int, scale: float,
                       backend: str, check_finite: bool) -> Tuple[Tensor, Tensor]:
    if xz.numel() == 0:
        return _mixer_out(xz, fwd, bwd)
    weights, weights_b = _absent_as_none(fwd), _absent_as_none(bwd)
    impl = _mixer_kernel('mamba_inner_fwd', backend, xz, fwd, bwd)
    if impl is not None:
        out, x_dbl = impl.mamba_inner_fwd(xz, weights, weights_b, reverse, window, scale, check_finite)
    else:
        out, x_dbl = mixer_fwd(xz, weights, weights_b, reverse, window, scale, check_finite,
                               _picker(backend, xz.device))
    return out.contiguous(), x_dbl.contiguous()   # the fake promises contiguous outputs


@mamba_inner_fwd_op.register_fake
def _(xz, fwd, bwd, reverse, window, scale, backend, check_finite):
    return _mixer_out(xz, fwd, bwd)


@torch.library.custom_op('vimzoo::mamba_inner_bwd', mutates_args=())
def mamba_inner_bwd_op(dout: Tensor, xz: Tensor, x_dbl: Tensor, fwd: List[Tensor], bwd: List[Tensor], reverse: bool,
                       window: int, scale: float, backend: str) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """(dxz, grads of fwd, grads of bwd); empty tensors stand for absent parameters."""
    if xz.numel() == 0:
        return torch.zeros_like(xz), [torch.zeros_like(t) for t in fwd], [torch.zeros_like(t) for t in bwd]
    weights, weights_b = _absent_as_none(fwd), _absent_as_none(bwd)
    expected = _x_dbl_shape(xz, fwd, bwd)
    if x_dbl.numel() and tuple(x_dbl.shape) != expected:
        raise ValueError(f'vimzoo mamba_inner_bwd: x_dbl must be the forward\'s second output, shape '
                         f'{expected}, got {tuple(x_dbl.shape)}.')
    x_dbl = x_dbl if x_dbl.numel() else None   # empty: recompute it
    impl = _mixer_kernel('mamba_inner_bwd', backend, xz, fwd, bwd)
    if impl is not None:
        dxz, dfwd, dbwd = impl.mamba_inner_bwd(dout, xz, weights, weights_b, reverse, window, scale, x_dbl=x_dbl)
    else:
        dxz, dfwd, dbwd = mixer_bwd(dout, xz, weights, weights_b, reverse, window, scale, _picker(backend, xz.device),
                                    x_dbl=x_dbl)
    return dxz, list(_fill(dfwd, xz)), list(_fill(dbwd, xz)) if bwd else []


@mamba_inner_bwd_op.register_fake
def _(dout, xz, x_dbl, fwd, bwd, reverse, window, scale, backend):
    return torch.empty_like(xz), [torch.empty_like(t) for t in fwd], [torch.empty_like(t) for t in bwd]


def _mixer_setup(ctx, inputs, output):
    xz, fwd, bwd, reverse, window, scale, backend, _ = inputs
    ctx.mark_non_differentiable(output[1])   # x_dbl is kept for the backward, not a result to differentiate
    ctx.save_for_backward(xz, output[1], *fwd, *bwd)
    ctx.cfg = (len(fwd), reverse, window, scale, resolve_default(backend))


def _mixer_backward(ctx, dout, _dx_dbl):
    n_fwd, reverse, window, scale, backend = ctx.cfg
    xz, x_dbl, *weights = ctx.saved_tensors
    dxz, dfwd, dbwd = torch.ops.vimzoo.mamba_inner_bwd(dout.contiguous(), xz, x_dbl, weights[:n_fwd],
                                                       weights[n_fwd:], reverse, window, scale, backend)
    return dxz, dfwd, dbwd, None, None, None, None, None


mamba_inner_fwd_op.register_autograd(_mixer_backward, setup_context=_mixer_setup)


# --------------------------------------------------------------------------------------------------------------
# add_rms_norm_fwd: fused residual add + RMSNorm for inference (vimzoo.ops.add_rms_norm routes here without grad).
# --------------------------------------------------------------------------------------------------------------
@torch.library.custom_op('vimzoo::add_rms_norm_fwd', mutates_args=())
def add_rms_norm_fwd_op(x: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float, backend: str,
                        check_finite: bool) -> Tuple[Tensor, Tensor]:
    impl = choose('add_rms_norm_fwd', backend, x.device, (x, residual, weight))
    normed, summed = impl.add_rms_norm_fwd(x, residual, weight, eps, check_finite)
    if summed.data_ptr() == x.data_ptr() and summed.numel():   # a custom op's output must not alias its input
        summed = summed.clone()
    return _as_promised(normed, x), _as_promised(summed, x, _F32)


@add_rms_norm_fwd_op.register_fake
def _(x, residual, weight, eps, backend, check_finite):
    return torch.empty_like(x), torch.empty_like(x, dtype=_F32)


# --------------------------------------------------------------------------------------------------------------
# add_rms_norm: the same fused forward, differentiable, for backends with a fused backward (vimzoo.ops.add_rms_norm
# takes this route under grad only where the chosen backend's can_run('add_rms_norm') accepts; elsewhere autograd
# differentiates PyTorch's ops).
# --------------------------------------------------------------------------------------------------------------
@torch.library.custom_op('vimzoo::add_rms_norm', mutates_args=())
def add_rms_norm_op(x: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float, backend: str,
                    check_finite: bool) -> Tuple[Tensor, Tensor]:
    impl = choose('add_rms_norm', backend, x.device, (x, residual, weight))
    normed, summed = impl.add_rms_norm_fwd(x, residual, weight, eps, check_finite)
    if summed.data_ptr() == x.data_ptr() and summed.numel():
        summed = summed.clone()
    return _as_promised(normed, x), _as_promised(summed, x, _F32)


@add_rms_norm_op.register_fake
def _(x, residual, weight, eps, backend, check_finite):
    return torch.empty_like(x), torch.empty_like(x, dtype=_F32)


@torch.library.custom_op('vimzoo::add_rms_norm_bwd', mutates_args=())
def add_rms_norm_bwd_op(dnormed: Tensor, dsummed: Optional[Tensor], summed: Tensor, weight: Tensor, eps: float,
                        backend: str) -> Tuple[Tensor, Tensor]:
    """Returns (dsummed_total fp32: the gradient of x and of residual, dweight fp32)."""
    impl = choose('add_rms_norm_bwd', backend, summed.device, (dnormed, dsummed, summed, weight))
    return impl.add_rms_norm_bwd(dnormed, dsummed, summed, weight, eps)


@add_rms_norm_bwd_op.register_fake
def _(dnormed, dsummed, summed, weight, eps, backend):
    return torch.empty_like(summed, dtype=_F32), weight.new_empty(weight.shape, dtype=_F32)


def _norm_setup(ctx, inputs, output):
    x, residual, weight, eps, backend, _ = inputs
    ctx.save_for_backward(output[1], weight)
    ctx.cfg = (eps, backend, x.dtype, None if residual is None else residual.dtype)


def _norm_backward(ctx, dnormed, dsummed):
    summed, weight = ctx.saved_tensors
    eps, backend, x_dtype, res_dtype = ctx.cfg
    ds, dw = torch.ops.vimzoo.add_rms_norm_bwd(dnormed.contiguous(), dsummed, summed, weight, eps, backend)
    return ds.to(x_dtype), None if res_dtype is None else ds.to(res_dtype), dw.to(weight.dtype), None, None, None


add_rms_norm_op.register_autograd(_norm_backward, setup_context=_norm_setup)


# ssd_scan (Mamba-2): x (b, l, h, p), dt (b, l, h), A (h,), B / C (b, l, g, n), D / dt_bias (h,), initial_states
# (b, h, p, n). Outputs are contiguous (b, l, h, p) in x's dtype.
# --------------------------------------------------------------------------------------------------------------
def _choose_ssd(op: str, backend: str, x: Tensor, B: Tensor, *tensors: Optional[Tensor]):
    return choose(op, backend, x.device, (x, B, *tensors), d_state=B.shape[-1])


@torch.library.custom_op('vimzoo::ssd_scan', mutates_args=())
def ssd_scan_op(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                dt_bias: Optional[Tensor], initial_states: Optional[Tensor], dt_softplus: bool, reverse: bool,
                backend: str, check_finite: bool) -> Tensor:
    if x.numel() == 0:
        return x.new_empty(x.shape)
    impl = _choose_ssd('ssd_scan', backend, x, B, dt, A, C, D, dt_bias, initial_states)
    return impl.ssd_fwd(x, dt, A, B, C, D, dt_bias, initial_states, dt_softplus, reverse, check_finite)


@ssd_scan_op.register_fake
def _(x, dt, A, B, C, D, dt_bias, initial_states, dt_softplus, reverse, backend, check_finite):
    return x.new_empty(x.shape)


@torch.library.custom_op('vimzoo::ssd_scan_bwd', mutates_args=())
def ssd_scan_bwd_op(dout: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                    dt_bias: Optional[Tensor], initial_states: Optional[Tensor], dt_softplus: bool, reverse: bool,
                    backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (dx, ddt, dA, dB, dC, dD, ddt_bias, dinitial_states); empty tensors stand for absent inputs."""
    if x.numel() == 0:
        return _zero_grads(x, dt, A, B, C, D, dt_bias, initial_states)
    impl = _choose_ssd('ssd_scan_bwd', backend, x, B, dt, A, C, D, dt_bias, initial_states)
    return _fill(impl.ssd_bwd(dout, x, dt, A, B, C, D, dt_bias, initial_states, dt_softplus, reverse), x)


@ssd_scan_bwd_op.register_fake
def _(dout, x, dt, A, B, C, D, dt_bias, initial_states, dt_softplus, reverse, backend):
    return (x.new_empty(x.shape), dt.new_empty(dt.shape), A.new_empty(A.shape), B.new_empty(B.shape),
            C.new_empty(C.shape), _empty_grad(D, x), _empty_grad(dt_bias, x), _empty_grad(initial_states, x))


def _ssd_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:8])
    ctx.cfg = tuple(inputs[8:11])   # dt_softplus, reverse, backend


def _ssd_backward(ctx, dout):
    saved = ctx.saved_tensors
    grads = torch.ops.vimzoo.ssd_scan_bwd(dout.contiguous(), *saved, *ctx.cfg)
    return (*grads[:5], *(None if t is None else g for g, t in zip(grads[5:], saved[5:])), None, None, None, None)


ssd_scan_op.register_autograd(_ssd_backward, setup_context=_ssd_setup)


# --------------------------------------------------------------------------------------------------------------
# quasiseparable_scan (Hydra's mixer core): forward + reverse SSD over the same x, each shifted by one token, plus
# the diagonal D (h,) or (b, l, h) times x; A, dt_bias and initial_states shared by both directions.
# --------------------------------------------------------------------------------------------------------------
@torch.library.custom_op('vimzoo::quasiseparable_scan', mutates_args=())
def quasiseparable_scan_op(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, dt_b: Tensor, B_b: Tensor,
                           C_b: Tensor, D: Optional[Tensor], dt_bias: Optional[Tensor],
                           initial_states: Optional[Tensor], dt_softplus: bool, backend: str,
                           check_finite: bool) -> Tensor:
    if x.numel() == 0:
        return x.new_empty(x.shape)
    impl = _choose_ssd('quasiseparable_scan', backend, x, B, dt, A, C, dt_b, B_b, C_b, D, dt_bias, initial_states)
    return impl.qs_fwd(x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states, dt_softplus, check_finite)


@quasiseparable_scan_op.register_fake
def _(x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states, dt_softplus, backend, check_finite):
    return x.new_empty(x.shape)


@torch.library.custom_op('vimzoo::quasiseparable_scan_bwd', mutates_args=())
def quasiseparable_scan_bwd_op(dout: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, dt_b: Tensor,
                               B_b: Tensor, C_b: Tensor, D: Optional[Tensor], dt_bias: Optional[Tensor],
                               initial_states: Optional[Tensor], dt_softplus: bool, backend: str
                               ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                          Tensor, Tensor]:
    """Returns (dx, ddt, dA, dB, dC, ddt_b, dB_b, dC_b, dD, ddt_bias, dinitial_states)."""
    inputs = (x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states)
    if x.numel() == 0:
        return _zero_grads(*inputs)
    impl = _choose_ssd('quasiseparable_scan_bwd', backend, x, B, *inputs[1:3], *inputs[4:])
    return _fill(impl.qs_bwd(dout, *inputs, dt_softplus), x)


@quasiseparable_scan_bwd_op.register_fake
def _(dout, x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states, dt_softplus, backend):
    return (*(t.new_empty(t.shape) for t in (x, dt, A, B, C, dt_b, B_b, C_b)), _empty_grad(D, x),
            _empty_grad(dt_bias, x), _empty_grad(initial_states, x))


def _qs_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:11])
    ctx.cfg = tuple(inputs[11:13])   # dt_softplus, backend


def _qs_backward(ctx, dout):
    saved = ctx.saved_tensors
    grads = torch.ops.vimzoo.quasiseparable_scan_bwd(dout.contiguous(), *saved, *ctx.cfg)
    return (*grads[:8], *(None if t is None else g for g, t in zip(grads[8:], saved[8:])), None, None, None)


quasiseparable_scan_op.register_autograd(_qs_backward, setup_context=_qs_setup)
