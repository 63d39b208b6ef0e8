"""Pure-PyTorch reference implementations (the ground truth every kernel is tested against).

Readability over speed: the scans are explicit Python loops over the sequence, exactly as the math reads
(mamba's `selective_scan_ref`, LBMamba's locally bi-directional scan: arXiv 2506.15976, section 3.2).
Compute happens in fp32 (fp64 when `u` is fp64, so `gradcheck` can run); outputs are cast back to `u.dtype`.
Gradients come from autograd through these functions.
"""
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ['lb_window', 'compute_dtype', 'selective_scan_ref', 'bidirectional_selective_scan_ref',
           'causal_conv1d_ref', 'mamba_inner_ref', 'mamba_inner_fwd_ref', 'mamba_inner_bwd_ref', 'add_rms_norm_ref',
           'add_rms_norm_bwd_ref']


def lb_window(length: int) -> int:
    """Window W that the official LBMamba CUDA kernel uses for a sequence length (= its items per thread)."""
    return 4 if length <= 128 else 8 if length <= 256 else 16


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Internal accumulation dtype: fp64 for fp64 inputs (gradcheck), fp32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scan_ref(
        u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], delta_softplus: bool,
        reverse: bool, local_window: Optional[int],
) -> torch.Tensor:
    """Un-gated scan output y in the compute dtype. Selective scan, optionally reversed and/or locally
    bi-directional (LBMamba).

    Shapes: u, delta, z (b, d, l); A (d, n); B, C (b, n, l); D, delta_bias (d,).
    Scan order k = 0..l-1 visits position t = k (forward) or t = l-1-k (reverse=True). In scan order:
        a_k = exp(Δ_k A),  b_k = Δ_k B_k u_k,  hf_k = a_k hf_{k-1} + b_k                 (global scan)
        hb_k = a_k hb_{k+1} + b_k inside windows of W steps aligned at k = 0, hb = 0 past a window end
        h_k = hf_k + a_k hb_{k+1}     (= hf_k + hb_k - b_k; W = 1 gives the plain Mamba scan)
        y_k = Σ_n C_k h_k + D u_k,   out = y · silu(z)
    """
    cdt = compute_dtype(u.dtype)
    u, delta = u.to(cdt), delta.to(cdt)
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    length = u.shape[-1]
    window = 1 if local_window is None else int(local_window)

    a = torch.exp(delta[..., None] * A.to(cdt)[:, None, :])                 # (b, d, l, n)
    b = (delta * u)[..., None] * B.to(cdt).transpose(1, 2)[:, None]       # (b, d, l, n)
    order = list(range(length - 1, -1, -1)) if reverse else list(range(length))

    # Global scan in scan order.
    h = torch.zeros_like(a[:, :, 0])
    hf = [None] * length
    for t in order:
        h = a[:, :, t] * h + b[:, :, t]
        hf[t] = h
    # Local backward scan inside each window of `window` scan steps (absent for window == 1).
    local = [torch.zeros_like(h)] * length
    if window > 1:
        hb = torch.zeros_like(h)
        for k in range(length - 1, -1, -1):
            t = order[k]
            if (k + 1) % window == 0 or k == length - 1:      # last step of a window: nothing after it
                hb = torch.zeros_like(hb)
            local[t] = a[:, :, t] * hb                         # a_k · hb_{k+1}
            hb = local[t] + b[:, :, t]
    hs = torch.stack([hf[t] + local[t] for t in range(length)], dim=2)   # (b, d, l, n)
    y = torch.einsum('bdln,bnl->bdl', hs, C.to(cdt))
    if D is not None:
        y = y + u * D.to(cdt)[:, None]
    return y


def selective_scan_ref(
        u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
        delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
        reverse: bool = False, local_window: Optional[int] = None,
) -> torch.Tensor:
    """Selective scan (see `_scan_ref`), gated by silu(z) when z is given, cast back to `u.dtype`."""
    y = _scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus, reverse, local_window)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(u.dtype)


def bidirectional_selective_scan_ref(
        u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b,
        z: Optional[torch.Tensor] = None, delta_softplus: bool = True,
) -> torch.Tensor:
    """Vim-v2 mixer core: forward scan + reverse scan (own params), both gated by silu(z), original order."""
    y = _scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus, False, None)
    y = y + _scan_ref(u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, delta_softplus, True, None)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(u.dtype)


def causal_conv1d_ref(
        x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
        activation: Optional[str] = None, reverse: bool = False,
) -> torch.Tensor:
    """Depthwise causal conv: out_t = Σ_j w[k-1-j] x_{t-j} + bias (reverse: Σ_j w[k-1-j] x_{t+j}), then SiLU."""
    dtype_in = x.dtype
    cdt = compute_dtype(dtype_in)
    dim, k = weight.shape
    w = weight.to(cdt)
    bias_c = None if bias is None else bias.to(cdt)
    if reverse:   # anti-causal: correlate with the flipped kernel and keep the last l outputs
        out = F.conv1d(x.to(cdt), w.flip(-1)[:, None], bias_c, padding=k - 1, groups=dim)[..., k - 1:]
    else:
        out = F.conv1d(x.to(cdt), w[:, None], bias_c, padding=k - 1, groups=dim)[..., :x.shape[-1]]
    if activation in ('silu', 'swish'):
        out = F.silu(out)
    return out.to(dtype_in)


def mamba_inner_ref(
        xz: torch.Tensor, weights: Sequence[Optional[torch.Tensor]],
        weights_b: Optional[Sequence[Optional[torch.Tensor]]] = None, reverse: bool = False,
        local_window: Optional[int] = None, scale: float = 1.0, conv: Callable = causal_conv1d_ref,
        scan: Callable = selective_scan_ref, bidirectional_scan: Callable = bidirectional_selective_scan_ref,
) -> torch.Tensor:
    """Mamba mixer core after in_proj (the official `mamba_inner_fn` / `bimamba_inner_fn` minus the projections).

    xz (b, l, 2d): x then z. Per direction (conv1d.weight (d, 1, k) or (d, k), conv1d.bias, x_proj.weight
    (R + 2N, d), dt_proj.weight (d, R), dt_proj.bias, A_log (d, N), D), A = -exp(A_log):
        u = silu(conv(x)),  (dt, B, C) = x_proj(u),  Δ = dt_proj(dt) (+ bias inside the scan, softplus),
        out = scale · scan(u, Δ, A, B, C, D) · silu(z)        (two directions: forward + reverse scan)
    `conv` / `scan` / `bidirectional_scan` default to the reference math; vimzoo.ops passes its differentiable
    ops instead, so both routes are this one function.
    """
    return mamba_inner_fwd_ref(xz, weights, weights_b, reverse, local_window, scale, conv, scan,
                               bidirectional_scan)[0]


def mamba_inner_fwd_ref(
        xz: torch.Tensor, weights: Sequence[Optional[torch.Tensor]],
        weights_b: Optional[Sequence[Optional[torch.Tensor]]] = None, reverse: bool = False,
        local_window: Optional[int] = None, scale: float = 1.0, conv: Callable = causal_conv1d_ref,
        scan: Callable = selective_scan_ref, bidirectional_scan: Callable = bidirectional_selective_scan_ref,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """`mamba_inner_ref` that also returns x_proj's output per direction, (directions, b, l, R + 2N): what the
    training backward (`mamba_inner_bwd_ref`) reads instead of recomputing that GEMM."""
    d = xz.shape[-1] // 2
    xs, z = xz.transpose(1, 2).split(d, dim=1)   # (b, d, l) views of token-major memory
    dtype = xz.dtype
    x_dbls = []

    def branch(w, rev):
        conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, a_log, d_skip = w
        rank, n = dt_proj_w.shape[1], a_log.shape[1]
        u = conv(xs, conv_w.reshape(conv_w.shape[0], -1).to(dtype), None if conv_b is None else conv_b.to(dtype),
                 'silu', rev)
        x_dbl = F.linear(u.transpose(1, 2), x_proj_w.to(dtype))       # (b, l, R + 2N)
        x_dbls.append(x_dbl)
        dt, b_mat, c_mat = torch.split(x_dbl, [rank, n, n], dim=-1)
        delta = F.linear(dt, dt_proj_w.to(dtype))                      # (b, l, d); the bias goes to the scan
        return (u, delta.transpose(1, 2), -torch.exp(a_log.float()), b_mat.transpose(1, 2), c_mat.transpose(1, 2),
                None if d_skip is None else d_skip.float(), None if dt_bias is None else dt_bias.float())

    if weights_b is not None:
        y = bidirectional_scan(*branch(weights, False), *branch(weights_b, True), z, True)
    else:
        u, delta, A, b_mat, c_mat, D, dt_bias = branch(weights, reverse)
        y = scan(u, delta, A, b_mat, c_mat, D, z, dt_bias, True, reverse, local_window)
    y = y.transpose(1, 2)
    return y * scale if scale != 1.0 else y, torch.stack(x_dbls)


def _opt_float(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.float()


def _scan_bwd_lnt(dout, u, delta, A, B, C, D, z, delta_bias, reverse, window, scale):
    """selective_scan_bwd_ref with B, C given and returned as (b, l, n) and the output scaled by `scale`."""
    grads = selective_scan_bwd_ref(dout * scale, u, delta, A, B.transpose(1, 2), C.transpose(1, 2), D, z, delta_bias,
                                   True, reverse, window)
    du, ddelta, dA, dB, dC, dD, dz, dbias = grads
    return du, ddelta, dA, dB.transpose(1, 2), dC.transpose(1, 2), dD, dz, dbias


def _conv_silu_ref(x, weight, bias, reverse):
    return causal_conv1d_ref(x, weight, bias, 'silu', reverse)


def _conv_silu_bwd_ref(dout, x, weight, bias, reverse, dx_out=None, accumulate=False):
    return causal_conv1d_bwd_ref(dout, x, weight, bias, 'silu', reverse)   # dx returned, not written


def _lowrank_scan_bwd(scan_bwd: Callable) -> Callable:
    """A scan backward for Δ = dt · dt_projᵀ built from a plain one: Δ formed first, its two products after.
    Returns (du, d dt, d dt_proj, dA, dB, dC, dD, dz, dbias); dz is returned, not written into dz_out."""
    def run(g, u, dt, dtw, A, B, C, D, z, dt_bias, reverse, window, scale, dz_out=None, accumulate=False):
        delta = F.linear(dt, dtw).transpose(1, 2)                       # (b, d, l); the bias is the scan's
        du, ddelta, dA, dB, dC, dD, dz, dbias = scan_bwd(g, u, delta, A, B, C, D, z, dt_bias, reverse, window, scale)
        ddelta_tok = ddelta.transpose(1, 2)
        d_dtw = ddelta_tok.flatten(0, 1).t() @ dt.flatten(0, 1)
        return du, ddelta_tok @ dtw, d_dtw, dA, dB, dC, dD, dz, dbias
    return run


def mamba_inner_bwd_ref(
        dout: torch.Tensor, xz: torch.Tensor, weights: Sequence[Optional[torch.Tensor]],
        weights_b: Optional[Sequence[Optional[torch.Tensor]]], reverse: bool, window: int, scale: float,
        conv: Callable = _conv_silu_ref, scan_bwd: Callable = _scan_bwd_lnt, conv_bwd: Callable = _conv_silu_bwd_ref,
        lowrank_scan_bwd: Optional[Callable] = None, x_dbl: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, list, Optional[list]]:
    """Backward of `mamba_inner_ref` from its inputs and x_proj's output `x_dbl` (directions, b, l, R + 2N), as
    `mamba_inner_fwd_ref` returns it (None: recomputed): the conv output and Δ are recomputed rather than saved
    (mamba-ssm's checkpoint_lvl=1), then per direction the scan backward, the dt_proj / x_proj products and the
    conv + SiLU backward. Returns (dxz, grads of `weights`, grads of `weights_b`), None for absent parameters.

    `conv(x, w, b, reverse)` (SiLU included), `scan_bwd(dout, u, delta, A, B, C, D, z, dt_bias, reverse, window,
    scale)` with B, C and their grads as (b, l, n), and `conv_bwd(dout, x, w, b, reverse, dx_out, accumulate)`
    default to the reference math; the CPU backend plugs in its kernels, so both are this one function.
    `lowrank_scan_bwd(dout, u, dt, dt_proj_w, A, B, C, D, z, dt_bias, reverse, window, scale, dz_out, accumulate)`,
    when given, replaces scan_bwd and the dt_proj products (a kernel that forms Δ itself; see `_lowrank_scan_bwd`
    for what it returns). dx_out / dz_out are dxz's halves as (b, d, l) views: a hook either returns dx (dz) and this
    function stores it, or writes it there itself (adds it when `accumulate`: the second direction) and returns None.
    """
    lowrank_scan_bwd = lowrank_scan_bwd or _lowrank_scan_bwd(scan_bwd)
    d = xz.shape[-1] // 2
    dtype = xz.dtype
    x, z = xz.transpose(1, 2).split(d, dim=1)      # (b, d, l) views of token-major memory
    g = dout.transpose(1, 2)
    dxz = torch.empty_like(xz, memory_format=torch.contiguous_format)
    dx_half, dz_half = dxz.transpose(1, 2).split(d, dim=1)
    grads = []
    for i, w in enumerate([weights] + ([weights_b] if weights_b is not None else [])):
        conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, a_log, d_skip = w
        rev, win = (reverse, window) if i == 0 else (True, 1)
        rank, n = dt_proj_w.shape[1], a_log.shape[1]
        cw, cb = conv_w.reshape(d, -1).to(dtype), None if conv_b is None else conv_b.to(dtype)   # as the forward
        xw, dtw = x_proj_w.to(dtype), dt_proj_w.to(dtype)
        u = conv(x, cw, cb, rev)                                            # (b, d, l)
        u_tok = u.transpose(1, 2)
        xdbl = F.linear(u_tok, xw) if x_dbl is None else x_dbl[i].to(dtype)   # (b, l, R + 2N)
        dt, b_mat, c_mat = xdbl[..., :rank], xdbl[..., rank:rank + n], xdbl[..., rank + n:]
        A = -torch.exp(a_log.float())
        du, d_dt, d_dtw, dA, dB, dC, dD, dz, dbias = lowrank_scan_bwd(
            g, u, dt, dtw, A, b_mat, c_mat, _opt_float(d_skip), z, _opt_float(dt_bias), rev, win, scale, dz_half, i > 0)
        _store(dz_half, dz, i > 0)
        dxdbl = torch.cat([d_dt.to(dtype), dB.to(dtype), dC.to(dtype)], dim=-1)   # (b, l, R + 2N)
        dx, dcw, dcb = conv_bwd(_add_matmul_(du.transpose(1, 2), dxdbl, xw).transpose(1, 2), x, cw, cb, rev,
                                dx_half, i > 0)
        _store(dx_half, dx, i > 0)
        raw = [dcw.reshape(conv_w.shape), dcb, dxdbl.flatten(0, 1).t() @ u_tok.flatten(0, 1), d_dtw, dbias, dA * A,
               dD]
        grads.append([None if t is None else gr.to(t.dtype) for gr, t in zip(raw, w)])
    return dxz, grads[0], grads[1] if weights_b is not None else None


def _store(out: torch.Tensor, value: Optional[torch.Tensor], accumulate: bool) -> None:
    """out = value (out += value when accumulating); None: the hook wrote it already."""
    if value is None:
        return
    if accumulate:
        out.add_(value)
    else:
        out.copy_(value)


def _add_matmul_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """acc + a @ b for (..., k) x (k, d) products; when the dtypes agree the GEMM accumulates into acc's memory
    (addmm_, no copy), so pass an acc nobody else reads (here: the scan backward's fresh du)."""
    if not acc.dtype == a.dtype == b.dtype:
        return acc + a @ b
    return acc.reshape(-1, acc.shape[-1]).addmm_(a.reshape(-1, a.shape[-1]), b).view(acc.shape)


def add_rms_norm_ref(x: torch.Tensor, residual: Optional[torch.Tensor], weight: torch.Tensor,
                     eps: float = 1e-5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Residual add + RMSNorm in fp32 (mamba_ssm's `rms_norm_fn(x, w, None, residual, prenorm=True)`): returns
    (rms_norm(x + residual) * weight in x.dtype, x + residual in fp32)."""
    summed = x.float() if residual is None else residual.float() + x.float()
    normed = F.rms_norm(summed, (summed.shape[-1],), weight.float(), eps)
    return normed.to(x.dtype), summed


def _dsilu(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def selective_scan_bwd_ref(
        dout: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
        C: torch.Tensor, D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
        delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
        reverse: bool = False, local_window: Optional[int] = None,
):
    """Explicit backward of `selective_scan_ref` (the formulas the kernels implement; docs/kernels.md, "Backward").

    In scan order (tensors flipped when reverse — fine for a reference), with G_k = g_k C_k, g = dout·silu(z):
        dxl_k = G_k + a_{k+1} dxl_{k+1}        (global reverse scan: grad of the forward state hf_k)
        dxr_k = G_k + a_{k-1} dxr_{k-1}        (forward scan restarted at each window start: grad of hb_k)
        db_k  = dxl_k + dxr_k - G_k,   gA_k = dxl_k (hf_k - b_k) + dxr_k (hb_k - b_k)   (= a_k ∂L/∂a_k)
        du = D g + Σ_n db B Δ,  dΔ = Σ_n (db B u + A gA),  dA = Σ Δ gA,  dB = Σ_d db Δ u,  dC = Σ_d g h
    Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) with None for absent optional inputs.
    """
    cdt = compute_dtype(u.dtype)
    length = u.shape[-1]
    window = 1 if local_window is None else int(local_window)

    def so(t):   # to scan order (and back: the flip is its own inverse)
        return t.flip(-1) if reverse else t

    uc, dout_c = so(u.to(cdt)), so(dout.to(cdt))
    raw = so(delta.to(cdt)) + (0 if delta_bias is None else delta_bias.to(cdt)[:, None])
    dt = F.softplus(raw) if delta_softplus else raw
    Ac = A.to(cdt)
    Bt = so(B.to(cdt)).transpose(1, 2)[:, None]          # (b, 1, l, n)
    Ct = so(C.to(cdt)).transpose(1, 2)[:, None]
    a = torch.exp(dt[..., None] * Ac[:, None, :])       # (b, d, l, n)
    bb = (dt * uc)[..., None] * Bt

    hf, hb = torch.zeros_like(a), torch.zeros_like(a)
    h = torch.zeros_like(a[:, :, 0])
    for k in range(length):
        h = a[:, :, k] * h + bb[:, :, k]
        hf[:, :, k] = h
    h = torch.zeros_like(h)
    for k in range(length - 1, -1, -1):
        if (k + 1) % window == 0 or k == length - 1:
            h = torch.zeros_like(h)
        h = a[:, :, k] * h + bb[:, :, k]
        hb[:, :, k] = h
    hs = hf + hb - bb
    y = (hs * Ct).sum(-1) + (0 if D is None else uc * D.to(cdt)[:, None])
    if z is not None:
        zc = so(z.to(cdt))
        g = dout_c * F.silu(zc)
        dz = so(dout_c * y * _dsilu(zc))
    else:
        g, dz = dout_c, None
    G = g[..., None] * Ct

    dxl, dxr = torch.zeros_like(a), torch.zeros_like(a)
    acc = torch.zeros_like(a[:, :, 0])
    for k in range(length - 1, -1, -1):
        acc = G[:, :, k] + (a[:, :, k + 1] * acc if k + 1 < length else 0)
        dxl[:, :, k] = acc
    for k in range(length):
        acc = G[:, :, k] + (a[:, :, k - 1] * acc if k % window != 0 else 0)
        dxr[:, :, k] = acc
    db = dxl + dxr - G
    gA = dxl * (hf - bb) + dxr * (hb - bb)
    du = (db * Bt).sum(-1) * dt + (0 if D is None else g * D.to(cdt)[:, None])
    ddt = (db * Bt).sum(-1) * uc + (gA * Ac[:, None, :]).sum(-1)
    dA = (gA * dt[..., None]).sum((0, 2))
    dB = (db * (dt * uc)[..., None]).sum(1).transpose(1, 2)
    dC = (hs * g[..., None]).sum(1).transpose(1, 2)
    ddelta = ddt * torch.sigmoid(raw) if delta_softplus else ddt
    dD = None if D is None else (g * uc).sum((0, 2)).to(D.dtype)
    dbias = None if delta_bias is None else ddelta.sum((0, 2)).to(delta_bias.dtype)
    return (so(du).to(u.dtype), so(ddelta).to(delta.dtype), dA.to(A.dtype), so(dB).to(B.dtype),
            so(dC).to(C.dtype), dD, None if dz is None else dz.to(z.dtype), dbias)


def causal_conv1d_bwd_ref(dout, x, weight, bias=None, activation=None, reverse=False):
    """Explicit backward of `causal_conv1d_ref` via torch.nn.grad: returns (dx, dweight, dbias or None)."""
    cdt = compute_dtype(x.dtype)
    dim, k = weight.shape
    g = dout.to(cdt)
    if activation in ('silu', 'swish'):
        g = g * _dsilu(causal_conv1d_ref(x.to(cdt), weight.to(cdt), None if bias is None else bias.to(cdt),
                                         None, reverse))
    w = weight.to(cdt).flip(-1) if reverse else weight.to(cdt)
    full = F.pad(g, (k - 1, 0) if reverse else (0, k - 1))     # grad of the un-sliced conv output
    dx = torch.nn.grad.conv1d_input(x.shape, w[:, None], full, padding=k - 1, groups=dim)
    dw = torch.nn.grad.conv1d_weight(x.to(cdt), w[:, None].shape, full, padding=k - 1, groups=dim)[:, 0]
    if reverse:
        dw = dw.flip(-1)
    db = None if bias is None else g.sum((0, 2)).to(bias.dtype)
    return dx.to(x.dtype), dw.to(weight.dtype), db


def add_rms_norm_bwd_ref(dnormed: torch.Tensor, dsummed: Optional[torch.Tensor], summed: torch.Tensor,
                         weight: torch.Tensor, eps: float = 1e-5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Explicit backward of `add_rms_norm_ref` from its fp32 sum s = x + residual: with r = rsqrt(mean(s²) + eps),
    n̂ = s·r and dn̂ = dnormed·w, ds = r·(dn̂ - n̂·mean(dn̂·n̂)) + dsummed (the gradient of x and of residual) and
    dw = Σ dnormed·n̂. Returns (ds, dw) in fp32."""
    s = summed.float()
    r = torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps)
    nhat = s * r
    dn = dnormed.float()
    dnh = dn * weight.float()
    ds = r * (dnh - nhat * (dnh * nhat).mean(-1, keepdim=True))
    if dsummed is not None:
        ds = ds + dsummed.float()
    return ds, (dn * nhat).reshape(-1, s.shape[-1]).sum(0)
