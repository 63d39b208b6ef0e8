"""Pieces the compiled backends share: the kernels' input layout and the output layout contract."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..reference import compute_dtype

__all__ = ['layout_like', 'kernel_inputs', 'kernel_grads', 'ssd_kernel_inputs', 'ssd_kernel_grads']


def layout_like(out: Tensor, like: Tensor) -> Tensor:
    """Outputs follow `torch.empty_like(like)` (the input's memory layout; the fake impls promise the same), so
    token-major (b, l, d) activations stay token-major through every backend."""
    target = torch.empty_like(like, dtype=out.dtype)
    if target.stride() == out.stride():
        return out
    return target.copy_(out)


def kernel_inputs(kernel_dtype: torch.dtype, u, delta, A, B, C, D, z, delta_bias) -> Tuple[Optional[Tensor], ...]:
    """The row kernels' layout: u, delta, z (b, d, l) contiguous in `kernel_dtype`; A, D, delta_bias and B, C
    transposed to (b, l, n), contiguous in the compute dtype (fp32, fp64 for fp64 input). None stays None."""
    cdt = compute_dtype(kernel_dtype)

    def act(t):
        return None if t is None else t.to(kernel_dtype).contiguous()

    def par(t):
        return None if t is None else t.to(cdt).contiguous()

    def seq(t):
        return t.to(cdt).transpose(1, 2).contiguous()
    return act(u), act(delta), par(A), seq(B), seq(C), par(D), act(z), par(delta_bias)


def kernel_grads(raw, u, delta, A, B, C, D, z, delta_bias) -> Tuple[Optional[Tensor], ...]:
    """The kernels' (du, ddelta, dA, dBt, dCt, dD, dz, dbias) cast back to the inputs' dtypes and layouts; None for
    absent optional inputs."""
    du, dd, dA, dBt, dCt, dD, dz, dbias = raw

    def like(g, t):
        return None if t is None else g.to(t.dtype)
    return (du.to(u.dtype), dd.to(delta.dtype), dA.to(A.dtype), dBt.transpose(1, 2).to(B.dtype).contiguous(),
            dCt.transpose(1, 2).to(C.dtype).contiguous(), like(dD, D), like(dz, z), like(dbias, delta_bias))


def ssd_kernel_inputs(kernel_dtype: torch.dtype, x, dt, A, B, C, dt_b=None, B_b=None, C_b=None, D=None, dt_bias=None,
                      initial_states=None) -> Tuple[Optional[Tensor], ...]:
    """The SSD kernels' layout: every tensor contiguous in `kernel_dtype`, initial states transposed to
    (b, h, n, p) (the kernels keep the state n-major so their p loops are contiguous). None stays None."""
    def c(t):
        return None if t is None else t.to(kernel_dtype).contiguous()
    init = None if initial_states is None else initial_states.to(kernel_dtype).transpose(-1, -2).contiguous()
    return c(x), c(dt), c(A), c(B), c(C), c(dt_b), c(B_b), c(C_b), c(D), c(dt_bias), init


def ssd_kernel_grads(raw, x, dt, A, B, C, dt_b=None, B_b=None, C_b=None, D=None, dt_bias=None,
                     initial_states=None) -> Tuple[Optional[Tensor], ...]:
    """The SSD kernels' raw grads {dx, dA per (b, h), dD per (b, h) or (b, l, h), dinit (b, h, n, p), then per
    direction ddt (w.r.t. the raw dt), dB and dC per head (b, l, h, n)} -> grads shaped and typed like the inputs:
    (dx, ddt, dA, dB, dC[, ddt_b, dB_b, dC_b], dD, ddt_bias, dinitial_states), None for absent inputs."""
    dx, dA_rows, dD, dinit, *dirs = raw
    b, length, h, _ = x.shape
    g = B.shape[2]

    def groups(t, like):
        return t.view(b, length, g, h // g, -1).sum(3).to(like.dtype)
    per_dir = []
    dbias = 0
    for (ddt, dBh, dCh), (dt_i, B_i, C_i) in zip(zip(dirs[0::3], dirs[1::3], dirs[2::3]),
                                                 ((dt, B, C), (dt_b, B_b, C_b))):
        per_dir.append((ddt.to(dt_i.dtype), groups(dBh, B_i), groups(dCh, C_i)))
        dbias = dbias + ddt.sum((0, 1))
    grad_D = None if D is None else (dD.sum(0) if D.dim() == 1 else dD).to(D.dtype)
    grad_bias = None if dt_bias is None else dbias.to(dt_bias.dtype)
    grad_init = None if initial_states is None else dinit.transpose(-1, -2).to(initial_states.dtype)
    (ddt, dB, dC), rest = per_dir[0], per_dir[1:]
    head = (dx.to(x.dtype), ddt, dA_rows.sum(0).to(A.dtype), dB, dC)
    return (*head, *(t for r in rest for t in r), grad_D, grad_bias, grad_init)
