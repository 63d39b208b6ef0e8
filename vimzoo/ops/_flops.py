"""FLOP formulas for the vimzoo ops, so torch.utils.flop_counter.FlopCounterMode counts each op once.

Per (batch, channel, token, state) and direction the scan does: Δ·A, exp, Δu·B, a·h + b (2), C·h + accumulate (2),
and ~2 for Δ/softplus/D amortised -> 9·b·d·l·n (the count mamba_ssm uses), + b·d·l for D·u and + b·d·l for the z
gate. The LB local backward scan adds a·hb + b, h + r and its C-dot: +3·b·d·l·n. Backward (state recompute +
reverse scan + grads) is counted as 2x forward.

The Mamba-2 SSD scan is counted like its recurrence: per (batch, token, head, p, state) a·S + Δx·B (3) and
C·S + accumulate (2) -> 5·b·l·h·p·n per direction, + 2·b·l·h·p for the D (diagonal) term; the quasiseparable core
has two directions. Backward: 2x forward.
"""
import math

import torch
from torch.utils.flop_counter import register_flop_formula

from . import _ops  # noqa: F401  (the ops must be registered before formulas can be attached)

__all__ = ['scan_flops', 'ssd_flops']

_vz = torch.ops.vimzoo


def scan_flops(u_shape, n: int, has_d: bool, has_z: bool, window: int = 1) -> int:
    b, d, l = u_shape
    per_state = 9 + (3 if window > 1 else 0)
    return per_state * b * d * l * n + (b * d * l if has_d else 0) + (b * d * l if has_z else 0)


def ssd_flops(b: int, l: int, h: int, p: int, n: int, directions: int = 1, diag: bool = False) -> int:
    return directions * 5 * b * l * h * p * n + (2 * b * l * h * p if diag else 0)


@register_flop_formula(_vz.selective_scan)
def _scan_flop(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, window, backend, check_finite,
               out_shape=None, **kwargs) -> int:
    return scan_flops(u, A[1], D is not None, z is not None, window)


@register_flop_formula(_vz.selective_scan_bwd)
def _scan_bwd_flop(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, window, backend,
                   out_shape=None, **kwargs) -> int:
    return 2 * scan_flops(u, A[1], D is not None, z is not None, window)


@register_flop_formula(_vz.bidirectional_selective_scan)
def _bidir_flop(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z,
                delta_softplus, backend, check_finite, out_shape=None, **kwargs) -> int:
    return scan_flops(u, A[1], D is not None, z is not None) + scan_flops(u_b, A_b[1], D_b is not None, False)


@register_flop_formula(_vz.causal_conv1d)
def _conv_flop(x, weight, bias, activation, reverse, backend, check_finite, out_shape=None, **kwargs) -> int:
    b, d, l = x
    return 2 * b * d * l * weight[1]


@register_flop_formula(_vz.causal_conv1d_bwd)
def _conv_bwd_flop(dout, x, weight, bias, activation, reverse, backend, out_shape=None, **kwargs) -> int:
    b, d, l = x
    return 4 * b * d * l * weight[1]


def _mixer_parts(xz, fwd, bwd, window):
    """(conv, x_proj, dt_proj, scan) FLOPs of the fused mixer, summed over its directions."""
    b, l, two_d = xz
    d = two_d // 2
    parts = [0, 0, 0, 0]
    for i, weights in enumerate((fwd, bwd)):
        if not weights:
            continue
        conv_w, _, x_proj_w, dt_proj_w, _, a, d_skip = weights
        parts[0] += 2 * b * d * l * conv_w[-1]
        parts[1] += 2 * b * l * d * x_proj_w[0]
        parts[2] += 2 * b * l * dt_proj_w[1] * d
        parts[3] += scan_flops((b, d, l), a[1], bool(d_skip and d_skip[0]), i == 0, window if i == 0 else 1)
    return parts


@register_flop_formula(_vz.mamba_inner_fwd)
def _mamba_inner_flop(xz, fwd, bwd, reverse, window, scale, backend, check_finite, out_shape=None,
                      **kwargs) -> int:
    """The sum of the unfused route's parts: causal conv, x_proj, dt_proj and the scan of each direction."""
    return sum(_mixer_parts(xz, fwd, bwd, window))


@register_flop_formula(_vz.mamba_inner_bwd)
def _mamba_inner_bwd_flop(dout, xz, x_dbl, fwd, bwd, reverse, window, scale, backend, out_shape=None,
                          **kwargs) -> int:
    """The recomputed forward (conv, dt_proj, scan; x_proj too when x_dbl is empty) plus the backward of each part
    (2x its forward)."""
    parts = _mixer_parts(xz, fwd, bwd, window)
    return 3 * sum(parts) - (parts[1] if math.prod(x_dbl) else 0)


@register_flop_formula(_vz.add_rms_norm_fwd)
def _add_rms_norm_flop(x, residual, weight, eps, backend, check_finite, out_shape=None, **kwargs) -> int:
    """0, like every element-wise aten op (FlopCounterMode counts neither layer_norm nor rms_norm), so models that
    use the fused norm stay comparable with models that use torch's."""
    return 0


@register_flop_formula(_vz.add_rms_norm)
def _add_rms_norm_diff_flop(x, residual, weight, eps, backend, check_finite, out_shape=None, **kwargs) -> int:
    return 0


@register_flop_formula(_vz.add_rms_norm_bwd)
def _add_rms_norm_bwd_flop(dnormed, dsummed, summed, weight, eps, backend, out_shape=None, **kwargs) -> int:
    return 0


@register_flop_formula(_vz.ssd_scan)
def _ssd_flop(x, dt, A, B, C, D, dt_bias, initial_states, dt_softplus, reverse, backend, check_finite,
              out_shape=None, **kwargs) -> int:
    return ssd_flops(*x, B[-1], 1, D is not None)


@register_flop_formula(_vz.ssd_scan_bwd)
def _ssd_bwd_flop(dout, x, dt, A, B, C, D, dt_bias, initial_states, dt_softplus, reverse, backend, out_shape=None,
                  **kwargs) -> int:
    return 2 * ssd_flops(*x, B[-1], 1, D is not None)


@register_flop_formula(_vz.quasiseparable_scan)
def _qs_flop(x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states, dt_softplus, backend, check_finite,
             out_shape=None, **kwargs) -> int:
    return ssd_flops(*x, B[-1], 2, D is not None)


@register_flop_formula(_vz.quasiseparable_scan_bwd)
def _qs_bwd_flop(dout, x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states, dt_softplus, backend,
                 out_shape=None, **kwargs) -> int:
    return 2 * ssd_flops(*x, B[-1], 2, D is not None)
