"""Depthwise causal conv1d in Triton (+ bias, SiLU; `reverse` = anti-causal), forward and backward.

One program per (16 channels, up to 64 tokens, batch): the width-K filter is K shifted loads of the same
(BLOCK_D, BLOCK_L) tile (cache hits after the first) and K fused multiply-adds, vectorised over channels and
tokens; any strides. K is a compile-time constant (one compiled kernel per conv width).

    causal:   out_t = Σ_j w[K-1-j] x_{t-j} + bias        reverse:  out_t = Σ_j w[K-1-j] x_{t+j} + bias
Backward with g = dout·silu'(pre) (pre recomputed; g = dout without SiLU):
    dx_s = Σ_j w[K-1-j] g_{s+j} (causal) / g_{s-j} (reverse),  dw[K-1-j] = Σ_{b,t} g_t x_{t∓j},  dbias = Σ_{b,t} g_t
The first backward kernel writes g (SiLU only) and per-program partial sums of dw and dbias (reduced by the
launcher: deterministic, no atomics); the second computes dx from g.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from ._config import CONV_BLOCKS

__all__ = ['conv_fwd', 'conv_bwd']

_F32 = torch.float32


@triton.jit
def _tile(ptr, pid_b, s_b, s_d, s_l, offs_d, t, dmask, L):
    m = dmask[:, None] & (t[None, :] >= 0) & (t[None, :] < L)
    return tl.load(ptr + pid_b * s_b + offs_d[:, None] * s_d + t[None, :] * s_l, mask=m, other=0.0).to(tl.float32)


@triton.jit
def _pre_activation(x_ptr, w_ptr, bias_ptr, pid_b, s_xb, s_xd, s_xl, s_wd, s_wk, offs_d, offs_t, dmask, L,
                    K: tl.constexpr, HAS_BIAS: tl.constexpr, REVERSE: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_L: tl.constexpr):
    acc = tl.zeros([BLOCK_D, BLOCK_L], tl.float32)
    for j in tl.static_range(K):
        src = offs_t + j if REVERSE else offs_t - j
        w = tl.load(w_ptr + offs_d * s_wd + (K - 1 - j) * s_wk, mask=dmask, other=0.0).to(tl.float32)
        acc += w[:, None] * _tile(x_ptr, pid_b, s_xb, s_xd, s_xl, offs_d, src, dmask, L)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)[:, None]
    return acc


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, s_xb, s_xd, s_xl, s_wd, s_wk, s_ob, s_od, s_ol, L, DIM,
                     K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, REVERSE: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_d, pid_l, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    dmask = offs_d < DIM
    y = _pre_activation(x_ptr, w_ptr, bias_ptr, pid_b, s_xb, s_xd, s_xl, s_wd, s_wk, offs_d, offs_t, dmask, L,
                        K, HAS_BIAS, REVERSE, BLOCK_D, BLOCK_L)
    if SILU:
        y = y * tl.sigmoid(y)
    m = dmask[:, None] & (offs_t[None, :] < L)
    tl.store(out_ptr + pid_b * s_ob + offs_d[:, None] * s_od + offs_t[None, :] * s_ol,
             y.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _conv_bwd_params_kernel(x_ptr, w_ptr, bias_ptr, dout_ptr, g_ptr, dw_ptr, db_ptr,
                            s_xb, s_xd, s_xl, s_wd, s_wk, s_gb, s_gd, s_gl, L, DIM, NLB,
                            K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, REVERSE: tl.constexpr,
                            BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """g (fp32, contiguous (b, d, l); SiLU only) and partial dw [b, NLB, d, K], dbias [b, NLB, d]."""
    pid_d, pid_l, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    dmask = offs_d < DIM
    m = dmask[:, None] & (offs_t[None, :] < L)
    g = _tile(dout_ptr, pid_b, s_gb, s_gd, s_gl, offs_d, offs_t, dmask, L)
    if SILU:
        pre = _pre_activation(x_ptr, w_ptr, bias_ptr, pid_b, s_xb, s_xd, s_xl, s_wd, s_wk, offs_d, offs_t, dmask,
                              L, K, HAS_BIAS, REVERSE, BLOCK_D, BLOCK_L)
        s = tl.sigmoid(pre)
        g = tl.where(m, g * s * (1.0 + pre * (1.0 - s)), 0.0)
        tl.store(g_ptr + pid_b * DIM * L + offs_d[:, None] * L + offs_t[None, :], g, mask=m)
    part = (pid_b * NLB + pid_l) * DIM + offs_d
    for j in tl.static_range(K):
        src = offs_t + j if REVERSE else offs_t - j
        dw = tl.sum(g * _tile(x_ptr, pid_b, s_xb, s_xd, s_xl, offs_d, src, dmask, L), axis=1)
        tl.store(dw_ptr + part * K + (K - 1 - j), dw, mask=dmask)
    if HAS_BIAS:
        tl.store(db_ptr + part, tl.sum(g, axis=1), mask=dmask)


@triton.jit
def _conv_bwd_input_kernel(g_ptr, w_ptr, dx_ptr, s_gb, s_gd, s_gl, s_wd, s_wk, L, DIM,
                           K: tl.constexpr, REVERSE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """dx (contiguous (b, d, l), in its dtype) from g: the transposed conv."""
    pid_d, pid_l, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    dmask = offs_d < DIM
    acc = tl.zeros([BLOCK_D, BLOCK_L], tl.float32)
    for j in tl.static_range(K):
        src = offs_t - j if REVERSE else offs_t + j
        w = tl.load(w_ptr + offs_d * s_wd + (K - 1 - j) * s_wk, mask=dmask, other=0.0).to(tl.float32)
        acc += w[:, None] * _tile(g_ptr, pid_b, s_gb, s_gd, s_gl, offs_d, src, dmask, L)
    m = dmask[:, None] & (offs_t[None, :] < L)
    tl.store(dx_ptr + pid_b * DIM * L + offs_d[:, None] * L + offs_t[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=m)


def _grid(x: torch.Tensor, block_d: int, block_l: int):
    b, d, l = x.shape
    return triton.cdiv(d, block_d), triton.cdiv(l, block_l), b


def _blocks(length: int, block_d: Optional[int], block_l: Optional[int]):
    return block_d or CONV_BLOCKS[0], block_l or min(CONV_BLOCKS[1], triton.next_power_of_2(max(length, 1)))


def conv_fwd(x, weight, bias, silu: bool, reverse: bool, block_d: Optional[int] = None,
             block_l: Optional[int] = None) -> torch.Tensor:
    """out = empty_like(x) in x's dtype and layout."""
    bd, bl = _blocks(x.shape[-1], block_d, block_l)
    out = torch.empty_like(x)
    _conv_fwd_kernel[_grid(x, bd, bl)](
        x, weight, bias if bias is not None else weight, out, *x.stride(), *weight.stride(), *out.stride(),
        x.shape[-1], x.shape[1], K=weight.shape[1], HAS_BIAS=bias is not None, SILU=silu, REVERSE=reverse,
        BLOCK_D=bd, BLOCK_L=bl)
    return out


def conv_bwd(dout, x, weight, bias, silu: bool, reverse: bool, block_d: Optional[int] = None,
             block_l: Optional[int] = None):
    """(dx in x's dtype, dweight and dbias in fp32; dbias None without bias)."""
    b, d, l = x.shape
    k = weight.shape[1]
    bd, bl = _blocks(l, block_d, block_l)
    grid = _grid(x, bd, bl)
    nlb = grid[1]
    kw = dict(device=x.device, dtype=_F32)
    g = torch.empty(b, d, l, **kw) if silu else dout
    dw = torch.empty(b, nlb, d, k, **kw)
    db = torch.empty(b, nlb, d, **kw) if bias is not None else dw
    _conv_bwd_params_kernel[grid](
        x, weight, bias if bias is not None else weight, dout, g, dw, db, *x.stride(), *weight.stride(),
        *dout.stride(), l, d, nlb, K=k, HAS_BIAS=bias is not None, SILU=silu, REVERSE=reverse,
        BLOCK_D=bd, BLOCK_L=bl)
    dx = torch.empty(b, d, l, device=x.device, dtype=x.dtype)
    _conv_bwd_input_kernel[grid](g, weight, dx, *g.stride(), *weight.stride(), l, d, K=k, REVERSE=reverse,
                                 BLOCK_D=bd, BLOCK_L=bl)
    return dx, dw.sum((0, 1)), db.sum((0, 1)) if bias is not None else None
