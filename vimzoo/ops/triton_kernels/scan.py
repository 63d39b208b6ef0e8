"""Selective scan in Triton: chunked over the sequence, associative scans inside each chunk, vectorised over a block
of channels and all states (tiles of (BLOCK_D, BLOCK_N, CHUNK) per program).

Everything runs in *scan order* k = 0..l-1 (position t = k, or l-1-k when REVERSE): a chunk's tile is loaded in
that order, so the global recurrence is always a forward scan along the tile and the LB window's local recurrence
a reverse one. Chunk boundaries carry the state in registers (forward kernel) or through small per-chunk carry
tensors written by a separate launch (the LB carries that flow against the sweep, and the backward's recomputed
forward states), so no program ever reads memory that another thread of the same program wrote.

Recurrences (docs/kernels.md, "Math" and "Backward"); each is an inclusive tl.associative_scan:
    hf_k  = a_k hf_{k-1} + b_k                       forward,  pairs (a, b)                       `_lin`
    hb_k  = a'_k hb_{k+1} + b_k                      reverse,  a' = 0 at a window's last step       `_lin`
    dxl_k = G_k + a_{k+1} dxl_{k+1}                  reverse,  the link is the *later* element's a  `_adj_rev`
    dxr_k = G_k + λ_{k-1} dxr_{k-1}                  forward,  λ = a, 0 at a window's last step     `_adj_fwd`
The adjoint recurrences link each step through its neighbour's coefficient; instead of shifting a tile by one
token, their scan elements carry (product of links inside the segment, the outer link, sum), so no division and
no second exp is needed. tests/test_ops_triton.py checks that every combine function is associative (GPU scans
combine in a tree; the interpreter folds left to right and would hide a non-associative one).

This module holds only @triton.jit code and its launchers: vimzoo.ops.triton_kernels.load() imports it once for
GPUs and, on request, once more with Triton's interpreter on (CPU tensors, for tests).
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._config import ScanConfig, scan_config

__all__ = ['scan_fwd', 'scan_bwd', 'combine_functions']

_F32 = torch.float32


# ------------------------------------------------------------------------------------------------ scalar helpers
@triton.jit
def _softplus(x):
    """torch.nn.functional.softplus (threshold 20) with an accurate log1p: log1p(e) = log(w)·e / (w - 1), w = 1 + e."""
    e = tl.exp(-tl.abs(x))
    w = 1.0 + e
    log1p = tl.where(w == 1.0, e, tl.log(w) * e / (w - 1.0))
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + log1p)


@triton.jit
def _lin(a1, b1, a2, b2):
    """Linear recurrence h = a·h_prev + b. Forward scans pass (earlier, later), reverse scans (later, earlier); the
    same formula serves both (Triton's reverse scan is flip ∘ scan ∘ flip)."""
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _adj_fwd(q1, l1, s1, q2, l2, s2):
    """Forward adjoint s_k = G_k + λ_{k-1} s_{k-1} over segments (q = product of links inside, l = the segment's
    outgoing link λ of its last element, s); (earlier, later)."""
    link = q2 * l1
    return q1 * l1 * q2, l2, s2 + link * s1


@triton.jit
def _adj_rev(q1, f1, s1, q2, f2, s2):
    """Reverse adjoint s_k = G_k + a_{k+1} s_{k+1} over segments (q = product of links inside, f = the segment's
    incoming link a of its first element, s); (later, earlier) as Triton's reverse scan passes them."""
    link = q2 * f1
    return q2 * f1 * q1, f2, s2 + link * s1


def combine_functions():
    """The combine functions as plain Python (for the associativity test): name -> (fn, tuple size)."""
    return {'lin': (_lin.fn, 2), 'adj_fwd': (_adj_fwd.fn, 3), 'adj_rev': (_adj_rev.fn, 3)}


# ------------------------------------------------------------------------------------------------ tile helpers
@triton.jit
def _column(x, col, j):
    """x[:, :, j] of a (BD, BN, CH) tile as (BD, BN)."""
    return tl.sum(tl.where(col == j, x, 0.0), axis=2)


@triton.jit
def _load_act(ptr, pid_b, s_b, s_d, s_l, offs_d, t, mask):
    """A (BD, CH) tile of a (b, d, l) activation at channels offs_d and positions t, as fp32 (0 where masked)."""
    p = ptr + pid_b * s_b + offs_d[:, None] * s_d + t[None, :] * s_l
    return tl.load(p, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_seq(ptr, pid_b, s_b, s_n, s_l, offs_n, t, mask):
    """A (BN, CH) tile of B or C (b, n, l) as fp32 (0 where masked)."""
    p = ptr + pid_b * s_b + offs_n[:, None] * s_n + t[None, :] * s_l
    return tl.load(p, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _delta(raw, bias, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Δ = softplus(δ + bias) (or δ + bias); 0 at masked entries, so masked steps are a = 1, b = 0."""
    if HAS_BIAS:
        raw = raw + bias[:, None]
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw)
    return tl.where(mask, dt, 0.0), raw


@triton.jit
def _positions(c, L, CH: tl.constexpr, REVERSE: tl.constexpr):
    """Scan-order indices k of chunk c and their token positions t."""
    k = c * CH + tl.arange(0, CH)
    if REVERSE:
        t = L - 1 - k
    else:
        t = k
    return k, t


@triton.jit
def _window_end(k, L, W):
    """True at a window's last scan step (windows of W steps aligned at k = 0) and at the sequence's end."""
    return ((k + 1) % W == 0) | (k >= L - 1)


# ------------------------------------------------------------------------------------------------ forward
@triton.jit
def _tile(A_ptr, bias_ptr, DIM, NST, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Every scan kernel's program: channels [pid_d * BLOCK_D, +BLOCK_D) of batch pid_b; their A rows and Δ-bias."""
    pid_b = tl.program_id(1)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    dmask, nmask = offs_d < DIM, offs_n < NST
    A = tl.load(A_ptr + offs_d[:, None] * NST + offs_n[None, :], mask=dmask[:, None] & nmask[None, :], other=0.0)
    bias = tl.load(bias_ptr + offs_d, mask=dmask, other=0.0) if HAS_BIAS else tl.zeros([BLOCK_D], tl.float32)
    return pid_b, offs_d, offs_n, dmask, nmask, A, bias


@triton.jit
def _fwd_local_carry_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, carry_ptr,
        s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_Bb, s_Bn, s_Bl,
        L, DIM, NST, W, NCHUNK,
        SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CH: tl.constexpr):
    """LB windows that cross chunk boundaries: a sweep against scan order stores, per chunk, the local state hb
    entering the chunk from the next one (carry[b, c, d, n]); the main kernel reads it."""
    pid_b, offs_d, offs_n, dmask, nmask, A, bias = _tile(A_ptr, bias_ptr, DIM, NST, HAS_BIAS, BLOCK_D, BLOCK_N)
    col = tl.arange(0, CH)[None, None, :]
    carry = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    cp = carry_ptr + ((pid_b * NCHUNK) * DIM + offs_d[:, None]) * BLOCK_N + offs_n[None, :]
    for i in range(0, NCHUNK):
        c = NCHUNK - 1 - i
        k, t = _positions(c, L, CH, REVERSE)
        kmask = k < L
        m2 = dmask[:, None] & kmask[None, :]
        u = _load_act(u_ptr, pid_b, s_ub, s_ud, s_ul, offs_d, t, m2)
        dt, _ = _delta(_load_act(dt_ptr, pid_b, s_tb, s_td, s_tl, offs_d, t, m2), bias, m2, HAS_BIAS, SOFTPLUS)
        Bt = _load_seq(B_ptr, pid_b, s_Bb, s_Bn, s_Bl, offs_n, t, nmask[:, None] & kmask[None, :])
        a = tl.exp(dt[:, None, :] * A[:, :, None])
        b = (dt * u)[:, None, :] * Bt[None, :, :]
        ap = tl.where(_window_end(k, L, W)[None, None, :], 0.0, a)
        tl.store(cp + c * DIM * BLOCK_N, carry, mask=dmask[:, None])
        pa, hb = tl.associative_scan((ap, b), 2, _lin, reverse=True)
        carry = _column(hb + pa * carry[:, :, None], col, 0)


@triton.jit
def _fwd_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, acc_ptr, carry_ptr,
        s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl, s_zb, s_zd, s_zl,
        s_ob, s_od, s_ol,
        L, DIM, NST, W, NCHUNK,
        SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
        HAS_BIAS: tl.constexpr, LOCAL: tl.constexpr, ACC_IN: tl.constexpr, FINAL: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CH: tl.constexpr):
    """y = Σ_n C h + D u, h = hf (+ hb - b for LB windows), one program per (channel block, batch), chunks in scan
    order. LOCAL: 0 no window, 1 windows inside chunks (CH % W == 0), 2 windows crossing chunks (carries from
    _fwd_local_carry_kernel). ACC_IN adds the fp32 partial y in acc (the other direction of a bidirectional
    scan); FINAL gates by silu(z) and stores out in its dtype, else the ungated fp32 y goes to acc."""
    pid_b, offs_d, offs_n, dmask, nmask, A, bias = _tile(A_ptr, bias_ptr, DIM, NST, HAS_BIAS, BLOCK_D, BLOCK_N)
    Dv = tl.load(D_ptr + offs_d, mask=dmask, other=0.0) if HAS_D else tl.zeros([BLOCK_D], tl.float32)
    col = tl.arange(0, CH)[None, None, :]
    hf_carry = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    cp = carry_ptr + ((pid_b * NCHUNK) * DIM + offs_d[:, None]) * BLOCK_N + offs_n[None, :]
    acc_base = acc_ptr + pid_b * DIM * L + offs_d[:, None] * L
    for c in range(0, NCHUNK):
        k, t = _positions(c, L, CH, REVERSE)
        kmask = k < L
        m2 = dmask[:, None] & kmask[None, :]
        seq_mask = nmask[:, None] & kmask[None, :]
        u = _load_act(u_ptr, pid_b, s_ub, s_ud, s_ul, offs_d, t, m2)
        dt, _ = _delta(_load_act(dt_ptr, pid_b, s_tb, s_td, s_tl, offs_d, t, m2), bias, m2, HAS_BIAS, SOFTPLUS)
        Bt = _load_seq(B_ptr, pid_b, s_Bb, s_Bn, s_Bl, offs_n, t, seq_mask)
        Ct = _load_seq(C_ptr, pid_b, s_Cb, s_Cn, s_Cl, offs_n, t, seq_mask)
        a = tl.exp(dt[:, None, :] * A[:, :, None])
        b = (dt * u)[:, None, :] * Bt[None, :, :]
        pa, hl = tl.associative_scan((a, b), 2, _lin)
        h = hl + pa * hf_carry[:, :, None]
        hf_carry = _column(h, col, CH - 1)
        if LOCAL > 0:
            ap = tl.where(_window_end(k, L, W)[None, None, :], 0.0, a)
            pb, hb = tl.associative_scan((ap, b), 2, _lin, reverse=True)
            if LOCAL == 2:
                hb += pb * tl.load(cp + c * DIM * BLOCK_N, mask=dmask[:, None], other=0.0)[:, :, None]
            h += hb - b
        y = tl.sum(Ct[None, :, :] * h, axis=1)
        if HAS_D:
            y += Dv[:, None] * u
        if ACC_IN:
            y += tl.load(acc_base + t[None, :], mask=m2, other=0.0)
        if FINAL:
            if HAS_Z:
                zv = _load_act(z_ptr, pid_b, s_zb, s_zd, s_zl, offs_d, t, m2)
                y = y * zv * tl.sigmoid(zv)
            op = out_ptr + pid_b * s_ob + offs_d[:, None] * s_od + t[None, :] * s_ol
            tl.store(op, y.to(out_ptr.dtype.element_ty), mask=m2)
        else:
            tl.store(acc_base + t[None, :], y, mask=m2)


# ------------------------------------------------------------------------------------------------ backward
@triton.jit
def _bwd_carry_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, z_ptr, bias_ptr, dout_ptr, hf_ptr, dxr_ptr,
        s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl, s_zb, s_zd, s_zl,
        s_gb, s_gd, s_gl,
        L, DIM, NST, W, NCHUNK,
        SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
        LB: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CH: tl.constexpr):
    """Backward pass 1, in scan order: the state hf entering each chunk, and for LB windows the forward adjoint's
    carry λ_{s-1}·dxr_{s-1} entering it (both [b, c, d, n]); the main backward sweeps against scan order."""
    pid_b, offs_d, offs_n, dmask, nmask, A, bias = _tile(A_ptr, bias_ptr, DIM, NST, HAS_BIAS, BLOCK_D, BLOCK_N)
    col = tl.arange(0, CH)[None, None, :]
    hf_carry = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dxr_carry = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    off = ((pid_b * NCHUNK) * DIM + offs_d[:, None]) * BLOCK_N + offs_n[None, :]
    for c in range(0, NCHUNK):
        k, t = _positions(c, L, CH, REVERSE)
        kmask = k < L
        m2 = dmask[:, None] & kmask[None, :]
        seq_mask = nmask[:, None] & kmask[None, :]
        u = _load_act(u_ptr, pid_b, s_ub, s_ud, s_ul, offs_d, t, m2)
        dt, _ = _delta(_load_act(dt_ptr, pid_b, s_tb, s_td, s_tl, offs_d, t, m2), bias, m2, HAS_BIAS, SOFTPLUS)
        Bt = _load_seq(B_ptr, pid_b, s_Bb, s_Bn, s_Bl, offs_n, t, seq_mask)
        a = tl.exp(dt[:, None, :] * A[:, :, None])
        b = (dt * u)[:, None, :] * Bt[None, :, :]
        tl.store(hf_ptr + off + c * DIM * BLOCK_N, hf_carry, mask=dmask[:, None])
        pa, hl = tl.associative_scan((a, b), 2, _lin)
        hf_carry = _column(hl + pa * hf_carry[:, :, None], col, CH - 1)
        if LB:
            g = _load_act(dout_ptr, pid_b, s_gb, s_gd, s_gl, offs_d, t, m2)
            if HAS_Z:
                zv = _load_act(z_ptr, pid_b, s_zb, s_zd, s_zl, offs_d, t, m2)
                g = g * zv * tl.sigmoid(zv)
            Ct = _load_seq(C_ptr, pid_b, s_Cb, s_Cn, s_Cl, offs_n, t, seq_mask)
            G = g[:, None, :] * Ct[None, :, :]
            lam = tl.where(_window_end(k, L, W)[None, None, :], 0.0, a)
            tl.store(dxr_ptr + off + c * DIM * BLOCK_N, dxr_carry, mask=dmask[:, None])
            q, lk, s = tl.associative_scan((tl.full(a.shape, 1.0, tl.float32), lam, G), 2, _adj_fwd)
            dxr_carry = _column(lk * (s + q * dxr_carry[:, :, None]), col, CH - 1)


@triton.jit
def _bwd_states(a, b, hf_in, hb_carry, k, L, W, col, LB: tl.constexpr):
    """A chunk's recomputed states: hf from the state entering it (pass 1's carry), and for LB windows hb from the
    next chunk's (carried against scan order) and h = hf + hb - b. Returns (hf, hb, h, the hb carry to pass on)."""
    pa, hl = tl.associative_scan((a, b), 2, _lin)
    hf = hl + pa * hf_in[:, :, None]
    hb, h = hf, hf   # without windows hb is never read
    if LB:
        ap = tl.where(_window_end(k, L, W)[None, None, :], 0.0, a)
        pb, hbl = tl.associative_scan((ap, b), 2, _lin, reverse=True)
        hb = hbl + pb * hb_carry[:, :, None]
        hb_carry = _column(hb, col, 0)
        h = hf + hb - b
    return hf, hb, h, hb_carry


@triton.jit
def _bwd_adjoints(a, b, G, hf, hb, dxl_carry, dxr_in, ones, k, L, W, col, LB: tl.constexpr):
    """A chunk's adjoints: the global dxl (reverse, from the carry of the chunk after it) and for LB windows the
    window-local dxr (forward, from pass 1's carry dxr_in). Returns (the gradient of b, gA = the gradient of the
    exponent Δ·A, the dxl carry to pass on)."""
    ql, fl, sl = tl.associative_scan((ones, a, G), 2, _adj_rev, reverse=True)
    dxl = sl + ql * dxl_carry[:, :, None]
    dxl_carry = _column(fl * dxl, col, 0)
    if LB:
        lam = tl.where(_window_end(k, L, W)[None, None, :], 0.0, a)
        qr, lr, sr = tl.associative_scan((ones, lam, G), 2, _adj_fwd)
        dxr = sr + qr * dxr_in[:, :, None]
        db = dxl + dxr - G
        gA = dxl * (hf - b) + dxr * (hb - b)
    else:
        db = dxl
        gA = dxl * (hf - b)
    return db, gA, dxl_carry


@triton.jit
def _bwd_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, hf_ptr, dxr_ptr,
        du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
        s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl, s_zb, s_zd, s_zl,
        s_gb, s_gd, s_gl,
        L, DIM, NST, W, NCHUNK,
        SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
        HAS_BIAS: tl.constexpr, LB: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CH: tl.constexpr):
    """Backward pass 2, chunks against scan order: recompute hf (from pass 1's carries) and hb, run both adjoints,
    write du, dΔ, dz per token, add dB, dC (summed over channels) atomically, and leave per-batch partial sums of
    dA, dD, dΔ_bias ([b, d, n] / [b, d]) for the launcher to reduce. Outputs are contiguous (b, d, l) / (b, n, l)."""
    pid_b, offs_d, offs_n, dmask, nmask, A, bias = _tile(A_ptr, bias_ptr, DIM, NST, HAS_BIAS, BLOCK_D, BLOCK_N)
    dn_mask = dmask[:, None] & nmask[None, :]
    Dv = tl.load(D_ptr + offs_d, mask=dmask, other=0.0) if HAS_D else tl.zeros([BLOCK_D], tl.float32)
    col = tl.arange(0, CH)[None, None, :]
    ones = tl.full([BLOCK_D, BLOCK_N, CH], 1.0, tl.float32)
    hb_carry = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dxl_carry = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dD_acc = tl.zeros([BLOCK_D], tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], tl.float32)
    off = ((pid_b * NCHUNK) * DIM + offs_d[:, None]) * BLOCK_N + offs_n[None, :]
    act_base = pid_b * DIM * L + offs_d[:, None] * L
    seq_base = pid_b * NST * L + offs_n[:, None] * L
    for i in range(0, NCHUNK):
        c = NCHUNK - 1 - i
        k, t = _positions(c, L, CH, REVERSE)
        kmask = k < L
        m2 = dmask[:, None] & kmask[None, :]
        seq_mask = nmask[:, None] & kmask[None, :]
        u = _load_act(u_ptr, pid_b, s_ub, s_ud, s_ul, offs_d, t, m2)
        dt, raw = _delta(_load_act(dt_ptr, pid_b, s_tb, s_td, s_tl, offs_d, t, m2), bias, m2, HAS_BIAS, SOFTPLUS)
        Bt = _load_seq(B_ptr, pid_b, s_Bb, s_Bn, s_Bl, offs_n, t, seq_mask)
        Ct = _load_seq(C_ptr, pid_b, s_Cb, s_Cn, s_Cl, offs_n, t, seq_mask)
        dout = _load_act(dout_ptr, pid_b, s_gb, s_gd, s_gl, offs_d, t, m2)
        a = tl.exp(dt[:, None, :] * A[:, :, None])
        b = (dt * u)[:, None, :] * Bt[None, :, :]
        hf_in = tl.load(hf_ptr + off + c * DIM * BLOCK_N, mask=dmask[:, None], other=0.0)
        hf, hb, h, hb_carry = _bwd_states(a, b, hf_in, hb_carry, k, L, W, col, LB)
        y = tl.sum(Ct[None, :, :] * h, axis=1) + Dv[:, None] * u
        g = dout
        if HAS_Z:
            zv = _load_act(z_ptr, pid_b, s_zb, s_zd, s_zl, offs_d, t, m2)
            sz = tl.sigmoid(zv)
            g = dout * zv * sz
            tl.store(dz_ptr + act_base + t[None, :], dout * y * sz * (1.0 + zv * (1.0 - sz)), mask=m2)
        G = g[:, None, :] * Ct[None, :, :]
        dxr_in = dxl_carry   # read only for LB windows
        if LB:
            dxr_in = tl.load(dxr_ptr + off + c * DIM * BLOCK_N, mask=dmask[:, None], other=0.0)
        db, gA, dxl_carry = _bwd_adjoints(a, b, G, hf, hb, dxl_carry, dxr_in, ones, k, L, W, col, LB)
        # gradients
        sdb = tl.sum(db * Bt[None, :, :], axis=1)
        du = dt * sdb + Dv[:, None] * g
        ddt = u * sdb + tl.sum(gA * A[:, :, None], axis=1)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(raw)
        ddt = tl.where(m2, ddt, 0.0)
        tl.store(du_ptr + act_base + t[None, :], du, mask=m2)
        tl.store(ddt_ptr + act_base + t[None, :], ddt, mask=m2)
        dA_acc += tl.sum(dt[:, None, :] * gA, axis=2)
        dD_acc += tl.sum(tl.where(m2, g * u, 0.0), axis=1)
        dbias_acc += tl.sum(ddt, axis=1)
        dBc = tl.sum(db * (dt * u)[:, None, :], axis=0)
        dCc = tl.sum(g[:, None, :] * h, axis=0)
        tl.atomic_add(dB_ptr + seq_base + t[None, :], dBc, mask=seq_mask)
        tl.atomic_add(dC_ptr + seq_base + t[None, :], dCc, mask=seq_mask)
    part = pid_b * DIM + offs_d
    tl.store(dA_ptr + part[:, None] * NST + offs_n[None, :], dA_acc, mask=dn_mask)
    if HAS_D:
        tl.store(dD_ptr + part, dD_acc, mask=dmask)
    if HAS_BIAS:
        tl.store(dbias_ptr + part, dbias_acc, mask=dmask)


# ------------------------------------------------------------------------------------------------ launchers
def _strides(t: Optional[torch.Tensor]) -> Tuple[int, int, int]:
    return (0, 0, 0) if t is None else tuple(t.stride())


def _f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.to(_F32).contiguous()


def _or(t: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Triton needs a tensor for every pointer; an absent input is never read (its HAS_* flag is off)."""
    return like if t is None else t


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus: bool, reverse: bool, window: int,
             out: Optional[torch.Tensor] = None, acc: Optional[torch.Tensor] = None, final: bool = True,
             cfg: Optional[ScanConfig] = None) -> torch.Tensor:
    """One direction of the scan. `out` (default: empty_like(u)) receives the gated result when `final`; `acc`
    (fp32, contiguous (b, d, l)) holds the other direction's ungated y to add (read when given) and receives this
    direction's when not `final`. Returns out (final) or acc."""
    b, d, l = u.shape
    n = A.shape[1]
    cfg = cfg or scan_config(d, n, l, window, backward=False)
    A, D, delta_bias = _f32(A), _f32(D), _f32(delta_bias)
    nchunk = triton.cdiv(l, cfg.chunk)
    local = 0 if window <= 1 or l <= 1 else (1 if cfg.chunk % window == 0 or nchunk == 1 else 2)
    grid = (triton.cdiv(d, cfg.block_d), b)
    carry = u.new_empty(0, dtype=_F32)
    if local == 2:
        carry = torch.empty(b, nchunk, d, cfg.block_n, device=u.device, dtype=_F32)
        _fwd_local_carry_kernel[grid](
            u, delta, A, B, _or(delta_bias, A), carry, *u.stride(), *delta.stride(), *B.stride(),
            l, d, n, window, nchunk, SOFTPLUS=softplus, REVERSE=reverse, HAS_BIAS=delta_bias is not None,
            BLOCK_D=cfg.block_d, BLOCK_N=cfg.block_n, CH=cfg.chunk, num_warps=cfg.num_warps)
    if final and out is None:
        out = torch.empty_like(u)
    if not final and acc is None:
        acc = torch.empty(b, d, l, device=u.device, dtype=_F32)
    acc_in = acc is not None and final
    target = out if final else acc
    _fwd_kernel[grid](
        u, delta, A, B, C, _or(D, A), _or(z, u), _or(delta_bias, A), target, _or(acc, carry), carry,
        *u.stride(), *delta.stride(), *B.stride(), *C.stride(), *_strides(z), *target.stride(),
        l, d, n, window, nchunk,
        SOFTPLUS=softplus, REVERSE=reverse, HAS_D=D is not None, HAS_Z=z is not None and final,
        HAS_BIAS=delta_bias is not None, LOCAL=local, ACC_IN=acc_in, FINAL=final,
        BLOCK_D=cfg.block_d, BLOCK_N=cfg.block_n, CH=cfg.chunk, num_warps=cfg.num_warps)
    return target


def scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, softplus: bool, reverse: bool, window: int,
             cfg: Optional[ScanConfig] = None):
    """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) in fp32 (None for absent inputs); dB, dC (b, n, l)."""
    b, d, l = u.shape
    n = A.shape[1]
    cfg = cfg or scan_config(d, n, l, window, backward=True)
    A, D, delta_bias = _f32(A), _f32(D), _f32(delta_bias)
    lb = window > 1 and l > 1
    nchunk = triton.cdiv(l, cfg.chunk)
    grid = (triton.cdiv(d, cfg.block_d), b)
    kw = dict(device=u.device, dtype=_F32)
    hf = torch.empty(b, nchunk, d, cfg.block_n, **kw)
    dxr = torch.empty(b, nchunk, d, cfg.block_n, **kw) if lb else hf
    zt, bias_t = _or(z, u), _or(delta_bias, A)
    common = (*u.stride(), *delta.stride(), *B.stride(), *C.stride(), *_strides(z), *dout.stride(),
              l, d, n, window, nchunk)
    _bwd_carry_kernel[grid](
        u, delta, A, B, C, zt, bias_t, dout, hf, dxr, *common,
        SOFTPLUS=softplus, REVERSE=reverse, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, LB=lb,
        BLOCK_D=cfg.block_d, BLOCK_N=cfg.block_n, CH=cfg.chunk, num_warps=cfg.num_warps)
    du, ddt = torch.empty(b, d, l, **kw), torch.empty(b, d, l, **kw)
    dz = torch.empty(b, d, l, **kw) if z is not None else du
    dB, dC = torch.zeros(b, n, l, **kw), torch.zeros(b, n, l, **kw)
    dA = torch.empty(b, d, n, **kw)
    dD = torch.empty(b, d, **kw) if D is not None else dA
    dbias = torch.empty(b, d, **kw) if delta_bias is not None else dA
    _bwd_kernel[grid](
        u, delta, A, B, C, _or(D, A), zt, bias_t, dout, hf, dxr, du, ddt, dz, dB, dC, dA, dD, dbias, *common,
        SOFTPLUS=softplus, REVERSE=reverse, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None, LB=lb,
        BLOCK_D=cfg.block_d, BLOCK_N=cfg.block_n, CH=cfg.chunk, num_warps=cfg.num_warps)
    return (du, ddt, dA.sum(0), dB, dC, dD.sum(0) if D is not None else None, dz if z is not None else None,
            dbias.sum(0) if delta_bias is not None else None)
