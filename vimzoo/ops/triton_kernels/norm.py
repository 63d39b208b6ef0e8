"""Fused residual add + RMSNorm in Triton (mamba_ssm's `rms_norm_fn(x, w, None, residual, prenorm=True)`),
forward and backward, fp32 math. One program per block of rows; a row's C channels are one tile (C <= MAX_C).

    s = x + residual (fp32),  r = rsqrt(mean(s²) + eps),  normed = s·r·w (in x's dtype),  summed = s
Backward (dsummed is the gradient reaching the residual stream directly):
    n̂ = s·r,  dn̂ = dnormed·w,  ds = r·(dn̂ − n̂·mean(dn̂·n̂)) + dsummed,  dw = Σ_rows dnormed·n̂
dw is summed per program into a partial (programs, C) buffer, reduced by the launcher (deterministic).
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from ._config import norm_blocks

__all__ = ['add_rms_norm_fwd', 'add_rms_norm_bwd', 'MAX_C']

MAX_C = 16384
_F32 = torch.float32


@triton.jit
def _rows(ptr, rows, cols, mask, C):
    return tl.load(ptr + rows[:, None] * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _norm_fwd_kernel(x_ptr, res_ptr, w_ptr, normed_ptr, summed_ptr, R, C, eps,
                     HAS_RES: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (rows < R)[:, None] & cmask[None, :]
    s = _rows(x_ptr, rows, cols, mask, C)
    if HAS_RES:
        s += _rows(res_ptr, rows, cols, mask, C)
    r = 1.0 / tl.sqrt(tl.sum(s * s, axis=1) / C + eps)
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    off = rows[:, None] * C + cols[None, :]
    tl.store(normed_ptr + off, (s * r[:, None] * w[None, :]).to(normed_ptr.dtype.element_ty), mask=mask)
    tl.store(summed_ptr + off, s, mask=mask)


@triton.jit
def _norm_bwd_kernel(dn_ptr, ds_in_ptr, s_ptr, w_ptr, ds_ptr, dw_ptr, R, C, eps,
                     HAS_DS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (rows < R)[:, None] & cmask[None, :]
    s = _rows(s_ptr, rows, cols, mask, C)
    dn = _rows(dn_ptr, rows, cols, mask, C)
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(s * s, axis=1) / C + eps)
    nhat = s * r[:, None]
    dnh = dn * w[None, :]
    ds = r[:, None] * (dnh - nhat * (tl.sum(dnh * nhat, axis=1) / C)[:, None])
    if HAS_DS:
        ds += _rows(ds_in_ptr, rows, cols, mask, C)
    tl.store(ds_ptr + rows[:, None] * C + cols[None, :], ds, mask=mask)
    tl.store(dw_ptr + pid * C + cols, tl.sum(dn * nhat, axis=0), mask=cmask)


def _blocks(c: int, block_r: Optional[int]):
    rows, block_c, warps = norm_blocks(c)
    return block_r or rows, block_c, warps


def add_rms_norm_fwd(x, residual, weight, eps: float, block_r: Optional[int] = None):
    """(normed in x's dtype, summed fp32), both shaped like x."""
    c = x.shape[-1]
    x2 = x.reshape(-1, c).contiguous()
    r = x2.shape[0]
    br, bc, warps = _blocks(c, block_r)
    normed = torch.empty(r, c, device=x.device, dtype=x.dtype)
    summed = torch.empty(r, c, device=x.device, dtype=_F32)
    if normed.numel() == 0:
        return normed.view(x.shape), summed.view(x.shape)
    res = residual.reshape(-1, c).contiguous() if residual is not None else x2
    _norm_fwd_kernel[(triton.cdiv(r, br),)](x2, res, weight.contiguous(), normed, summed, r, c, float(eps),
                                            HAS_RES=residual is not None, BLOCK_R=br, BLOCK_C=bc,
                                            num_warps=warps)
    return normed.view(x.shape), summed.view(x.shape)


def add_rms_norm_bwd(dnormed, dsummed, summed, weight, eps: float, block_r: Optional[int] = None):
    """(ds fp32 shaped like summed: the gradient of x and of residual; dweight fp32)."""
    c = summed.shape[-1]
    s2 = summed.reshape(-1, c).contiguous()
    r = s2.shape[0]
    br, bc, warps = _blocks(c, block_r)
    nprog = triton.cdiv(r, br)
    ds = torch.empty(r, c, device=summed.device, dtype=_F32)
    dw = torch.empty(nprog, c, device=summed.device, dtype=_F32)
    if ds.numel() == 0:
        return ds.view(summed.shape), torch.zeros(c, device=summed.device, dtype=_F32)
    dn = dnormed.reshape(-1, c).contiguous()
    ds_in = dsummed.reshape(-1, c).contiguous() if dsummed is not None else s2
    _norm_bwd_kernel[(nprog,)](dn, ds_in, s2, weight.contiguous(), ds, dw, r, c, float(eps),
                               HAS_DS=dsummed is not None, BLOCK_R=br, BLOCK_C=bc, num_warps=warps)
    return ds.view(summed.shape), dw.sum(0)
