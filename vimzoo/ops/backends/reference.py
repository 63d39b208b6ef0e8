"""The 'reference' backend: vimzoo.ops.reference's readable PyTorch math on any device (the ground truth)."""
from typing import Optional, Sequence

import torch

from .. import reference as ref
from .. import reference_ssd as ref_ssd
from .._validate import check_finite as _check_values, mixer_named
from ._common import layout_like

NAME = 'reference'


def can_run(op: str, device: torch.device, tensors: Sequence[Optional[torch.Tensor]] = (),
            channels: Optional[int] = None, d_state: Optional[int] = None, window: int = 1) -> Optional[str]:
    """Every op, any device, any float dtype. Under grad, add_rms_norm declines the fused differentiable op:
    autograd differentiates the reference math."""
    if op == 'add_rms_norm':
        return 'autograd differentiates the reference math'
    return None


def _scan_named(u, delta, A, B, C, D, z, delta_bias, sfx=''):
    return {f'u{sfx}': u, f'delta{sfx}': delta, f'A{sfx}': A, f'B{sfx}': B, f'C{sfx}': C, f'D{sfx}': D, 'z': z,
            f'delta_bias{sfx}': delta_bias}


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, window, check_finite):
    if check_finite:
        _check_values('selective_scan', _scan_named(u, delta, A, B, C, D, z, delta_bias))
    out = ref.selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, window)
    return layout_like(out, u)


def scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, softplus, reverse, window):
    return ref.selective_scan_bwd_ref(dout, u, delta, A, B, C, D, z, delta_bias, softplus, reverse, window)


def bidir_fwd(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z, softplus,
              check_finite):
    if check_finite:
        op = 'bidirectional_selective_scan'
        _check_values(op, _scan_named(u, delta, A, B, C, D, z, delta_bias))
        _check_values(op, _scan_named(u_b, delta_b, A_b, B_b, C_b, D_b, None, delta_bias_b, '_b'))
    out = ref.bidirectional_selective_scan_ref(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b,
                                               delta_bias_b, z, softplus)
    return layout_like(out, u)


def conv_fwd(x, weight, bias, silu, reverse, check_finite):
    if check_finite:
        _check_values('causal_conv1d', {'x': x, 'weight': weight, 'bias': bias})
    return layout_like(ref.causal_conv1d_ref(x, weight, bias, 'silu' if silu else None, reverse), x)


def conv_bwd(dout, x, weight, bias, silu, reverse):
    return ref.causal_conv1d_bwd_ref(dout, x, weight, bias, 'silu' if silu else None, reverse)


def mamba_inner_fwd(xz, fwd, bwd, reverse, window, scale, check_finite):
    """(out, x_proj's output per direction): the backward reads the second instead of recomputing it."""
    if check_finite:
        _check_values('mamba_inner', mixer_named(xz, fwd, bwd))
    return ref.mamba_inner_fwd_ref(xz, fwd, bwd, reverse, window, scale)


def mamba_inner_bwd(dout, xz, fwd, bwd, reverse, window, scale, x_dbl=None):
    return ref.mamba_inner_bwd_ref(dout, xz, fwd, bwd, reverse, window, scale, x_dbl=x_dbl)


def add_rms_norm_fwd(x, residual, weight, eps, check_finite):
    if check_finite:
        _check_values('add_rms_norm', {'x': x, 'residual': residual, 'weight': weight})
    return ref.add_rms_norm_ref(x, residual, weight, eps)


def add_rms_norm_bwd(dnormed, dsummed, summed, weight, eps):
    return ref.add_rms_norm_bwd_ref(dnormed, dsummed, summed, weight, eps)


# ------------------------------------------------------------------------------------------- SSD / Hydra (Mamba-2)
def _ssd_named(x, dt, A, B, C, D, dt_bias, initial_states, dt_b=None, B_b=None, C_b=None):
    return {'x': x, 'dt': dt, 'A': A, 'B': B, 'C': C, 'dt_b': dt_b, 'B_b': B_b, 'C_b': C_b, 'D': D,
            'dt_bias': dt_bias, 'initial_states': initial_states}


def _autograd_grads(fn, dout, inputs):
    """Gradients of the reference math (the reference defines the op; its backward is derived from it), by
    torch.func.vjp: a custom op's implementation runs below the autograd dispatch key, where autograd.grad sees no
    graph, but functorch's transforms still apply. Absent (None) inputs get None."""
    present = [i for i, t in enumerate(inputs) if t is not None]

    def on_present(*tensors):
        full = list(inputs)
        for i, t in zip(present, tensors):
            full[i] = t
        return fn(*full)
    out, vjp = torch.func.vjp(on_present, *(inputs[i].detach() for i in present))
    grads = iter(vjp(dout.to(out.dtype)))
    return tuple(None if t is None else next(grads) for t in inputs)


def ssd_fwd(x, dt, A, B, C, D, dt_bias, initial_states, softplus, reverse, check_finite):
    if check_finite:
        _check_values('ssd_scan', _ssd_named(x, dt, A, B, C, D, dt_bias, initial_states))
    return ref_ssd.ssd_scan_ref(x, dt, A, B, C, D, dt_bias, softplus, initial_states, reverse).contiguous()


def ssd_bwd(dout, x, dt, A, B, C, D, dt_bias, initial_states, softplus, reverse):
    def fn(x, dt, A, B, C, D, dt_bias, initial_states):
        return ref_ssd.ssd_scan_ref(x, dt, A, B, C, D, dt_bias, softplus, initial_states, reverse)
    return _autograd_grads(fn, dout, (x, dt, A, B, C, D, dt_bias, initial_states))


def qs_fwd(x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states, softplus, check_finite):
    if check_finite:
        _check_values('quasiseparable_scan', _ssd_named(x, dt, A, B, C, D, dt_bias, initial_states, dt_b, B_b, C_b))
    return ref_ssd.quasiseparable_scan_ref(x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, softplus,
                                           initial_states).contiguous()


def qs_bwd(dout, x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states, softplus):
    def fn(x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states):
        return ref_ssd.quasiseparable_scan_ref(x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, softplus, initial_states)
    return _autograd_grads(fn, dout, (x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states))
