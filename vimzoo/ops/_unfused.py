"""The mixer core (`mamba_inner`) where no fused mixer kernel fits (other dtypes, CUDA, d % 16 != 0): the
reference orchestration (`reference.mamba_inner_ref` / `mamba_inner_bwd_ref`) with every step — conv, scan, their
backwards — run by the backend `pick` chooses for that step. So each backend's kernels serve the mixer, forward and
backward (which reads the forward's x_proj output and recomputes the conv output and Δ), inside one custom op.

`pick(op, tensors, **info)` returns the backend module for one step (vimzoo.ops._choose.choose bound to the mixer
op's requested backend and device).
"""
from typing import Callable

from ._validate import check_finite as check_values, mixer_named
from .reference import mamba_inner_bwd_ref, mamba_inner_fwd_ref

__all__ = ['mixer_fwd', 'mixer_bwd']


def mixer_fwd(xz, fwd, bwd, reverse: bool, window: int, scale: float, check_finite: bool, pick: Callable):
    if check_finite:   # the steps see derived tensors; name the mixer's own parameters as the fused kernels do
        check_values('mamba_inner', {k: v for k, v in mixer_named(xz, fwd, bwd).items() if k not in ('x', 'z')})

    def conv(x, weight, bias, activation, rev):
        return pick('causal_conv1d', (x, weight, bias)).conv_fwd(x, weight, bias, True, rev, check_finite)

    def scan(u, delta, A, B, C, D, z, delta_bias, softplus, rev, win):
        impl = pick('selective_scan', (u, A, delta, B, C, D, z, delta_bias), d_state=A.shape[1], window=win or 1)
        return impl.scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, rev, win or 1, check_finite)

    def bidirectional_scan(*args):
        tensors = args[:15]
        impl = pick('bidirectional_selective_scan', tensors, d_state=args[2].shape[1])
        return impl.bidir_fwd(*tensors, args[15], check_finite)
    return mamba_inner_fwd_ref(xz, fwd, bwd, reverse, window, scale, conv, scan, bidirectional_scan)


def mixer_bwd(dout, xz, fwd, bwd, reverse: bool, window: int, scale: float, pick: Callable, x_dbl=None):
    def conv(x, weight, bias, rev):
        return pick('causal_conv1d', (x, weight, bias)).conv_fwd(x, weight, bias, True, rev, False)

    def scan_bwd(g, u, delta, A, B, C, D, z, delta_bias, rev, win, s):   # B, C and their grads as (b, l, n)
        impl = pick('selective_scan_bwd', (u, A, delta, B, C, D, z, delta_bias), d_state=A.shape[1], window=win)
        du, dd, dA, dB, dC, dD, dz, db = impl.scan_bwd(g * s, u, delta, A, B.transpose(1, 2), C.transpose(1, 2), D, z,
                                                       delta_bias, True, rev, win)
        return du, dd, dA, dB.transpose(1, 2), dC.transpose(1, 2), dD, dz, db

    def conv_bwd(g, x, weight, bias, rev, dx_out, accumulate):   # dx returned; mamba_inner_bwd_ref stores it
        return pick('causal_conv1d_bwd', (x, weight, bias)).conv_bwd(g, x, weight, bias, True, rev)
    return mamba_inner_bwd_ref(dout, xz, fwd, bwd, reverse, window, scale, conv, scan_bwd, conv_bwd, x_dbl=x_dbl)
