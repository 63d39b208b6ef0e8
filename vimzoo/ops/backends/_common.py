"""Pieces the compiled backends share: the kernels' input layout and the output layout contract."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..reference import compute_dtype

__all__ = ['layout_like', 'kernel_inputs', 'kernel_grads']


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
