"""Readable PyTorch references for the Mamba-2 (SSD) scan and Hydra's quasiseparable mixer core.

Two independent formulations of the same scan, cross-checked by the tests:

* `ssd_scan_recurrence`: the plain recurrence, one token at a time (the definition);
* `ssd_scan_chunked`: the chunked "state space dual" form of Mamba-2 (Dao & Gu 2024, arXiv 2405.21060, §6):
  inside a chunk the scan is a masked matrix product, between chunks a short recurrence carries the state.

Per (batch, head h, group g = h // (H / G)), with the state S ∈ R^{P×N} (P = headdim, N = d_state):

    Δ_t = softplus(dt_t + dt_bias) (or dt_t + dt_bias),   a_t = Δ_t · A_h   (A_h <= 0: one decay per head)
    S_t = exp(a_t) · S_{t-1} + Δ_t · x_t B_tᵀ,            y_t = S_t C_t  (+ D_h · x_t)
    S_{-1} = initial_states (or 0);  reverse=True runs t = L-1 .. 0 (anti-causal), S_L = initial_states.

`quasiseparable_scan_ref` is Hydra's mixer core (Hwang et al. 2024, arXiv 2407.09941): a forward and a backward
SSD scan with their own dt / B / C over the same x, each shifted by one token so both triangles are strict, plus
a diagonal term:  y_t = s^f_{t-1} [t > 0] + s^b_{t+1} [t < L-1] + δ_t · x_t  with δ = D (per head, constant or per
token). Everything is computed in fp32 (fp64 for fp64 x, for gradcheck) and cast back to x.dtype.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .reference import compute_dtype

__all__ = ['ssd_scan_ref', 'ssd_scan_recurrence', 'ssd_scan_chunked', 'quasiseparable_scan_ref', 'heads_of_groups',
           'quasiseparable_matrix']

DEFAULT_CHUNK = 64


def heads_of_groups(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """(b, l, g, n) per-group B or C -> (b, l, h, n) per head (head h reads group h // (h / g))."""
    return t.repeat_interleave(nheads // t.shape[2], dim=2)


def _discretise(dt: torch.Tensor, dt_bias: Optional[torch.Tensor], softplus: bool, cdt: torch.dtype) -> torch.Tensor:
    dt = dt.to(cdt)
    if dt_bias is not None:
        dt = dt + dt_bias.to(cdt)
    return F.softplus(dt) if softplus else dt


def _prepare(x, dt, A, B, C, dt_bias, softplus, initial_states, reverse):
    """Inputs in the compute dtype, B / C per head, time-reversed when `reverse` (the reference may flip)."""
    cdt = compute_dtype(x.dtype)
    nheads = x.shape[2]
    xs, delta = x.to(cdt), _discretise(dt, dt_bias, softplus, cdt)
    Bh, Ch = heads_of_groups(B.to(cdt), nheads), heads_of_groups(C.to(cdt), nheads)
    if reverse:
        xs, delta, Bh, Ch = xs.flip(1), delta.flip(1), Bh.flip(1), Ch.flip(1)
    b, _, h, p = x.shape
    n = B.shape[-1]
    state = (torch.zeros(b, h, p, n, dtype=cdt, device=x.device) if initial_states is None
             else initial_states.to(cdt))
    return xs, delta, A.to(cdt), Bh, Ch, state


def ssd_scan_recurrence(x, dt, A, B, C, dt_bias=None, dt_softplus=False, initial_states=None,
                        reverse=False) -> torch.Tensor:
    """The SSD scan token by token (the definition). Returns y without the D term, in the compute dtype."""
    xs, delta, A, Bh, Ch, state = _prepare(x, dt, A, B, C, dt_bias, dt_softplus, initial_states, reverse)
    ys = []
    for t in range(x.shape[1]):
        decay = torch.exp(delta[:, t] * A)                                        # (b, h)
        state = decay[..., None, None] * state + (delta[:, t, :, None] * xs[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum('bhpn,bhn->bhp', state, Ch[:, t]))
    y = torch.stack(ys, dim=1) if ys else xs.new_zeros(xs.shape)
    return y.flip(1) if reverse else y


def _segment_sums(a: torch.Tensor) -> torch.Tensor:
    """a (..., T) -> (..., T, T) with [i, j] = a_{j+1} + ... + a_i for j <= i and -inf above the diagonal, summed
    directly (no difference of cumulative sums, which loses precision when they are large)."""
    T = a.shape[-1]
    strictly_lower = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    terms = a[..., :, None].expand(*a.shape, T).masked_fill(~strictly_lower, 0)   # [i, j] = a_i for i > j
    sums = terms.cumsum(dim=-2)
    return sums.masked_fill(~torch.ones_like(strictly_lower).tril(), float('-inf'))


def ssd_scan_chunked(x, dt, A, B, C, dt_bias=None, dt_softplus=False, initial_states=None, reverse=False,
                     chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """The SSD scan in chunked matrix form. Returns y without the D term, in the compute dtype.

    The sequence is padded to a multiple of `chunk_size` with Δ = 0 and x = 0 (decay 1, no input), so padding
    never changes the real positions. Per chunk (length T, local cumulative log-decay Λ_i = a_1 + ... + a_i):
        y_i   = Σ_{j<=i} exp(Λ_i - Λ_j) Δ_j (C_i·B_j) x_j  +  exp(Λ_i) S_prev C_i
        S_end = exp(Λ_T) S_prev + Σ_j exp(Λ_T - Λ_j) Δ_j x_j B_jᵀ
    """
    xs, delta, A, Bh, Ch, state = _prepare(x, dt, A, B, C, dt_bias, dt_softplus, initial_states, reverse)
    b, length, h, p = xs.shape
    T = max(1, min(int(chunk_size), max(length, 1)))
    pad = (-length) % T
    if pad:
        xs, Bh, Ch = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xs, Bh, Ch))
        delta = F.pad(delta, (0, 0, 0, pad))
    nchunks = xs.shape[1] // T
    xs = xs.view(b, nchunks, T, h, p)
    Bh, Ch = Bh.view(b, nchunks, T, h, -1), Ch.view(b, nchunks, T, h, -1)
    a = (delta * A).view(b, nchunks, T, h).permute(0, 3, 1, 2)                   # (b, h, c, T)
    cum = a.cumsum(-1)
    decay_in_chunk = torch.exp(_segment_sums(a))                                   # (b, h, c, T, T)
    xdt = xs * delta.view(b, nchunks, T, h)[..., None]
    ys = []
    for c in range(nchunks):
        scores = torch.einsum('bihn,bjhn->bhij', Ch[:, c], Bh[:, c]) * decay_in_chunk[:, :, c]
        y = torch.einsum('bhij,bjhp->bihp', scores, xdt[:, c])
        y = y + torch.einsum('bhpn,bihn,bhi->bihp', state, Ch[:, c], torch.exp(cum[:, :, c]))
        to_end = torch.exp(cum[:, :, c, -1:] - cum[:, :, c])                      # (b, h, T)
        state = (torch.exp(cum[:, :, c, -1])[..., None, None] * state
                 + torch.einsum('bjhp,bjhn,bhj->bhpn', xdt[:, c], Bh[:, c], to_end))
        ys.append(y)
    y = torch.cat(ys, dim=1)[:, :length] if ys else xs.new_zeros(b, 0, h, p)
    return y.flip(1) if reverse else y


def ssd_scan_ref(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: Optional[torch.Tensor] = None, dt_bias: Optional[torch.Tensor] = None, dt_softplus: bool = False,
                 initial_states: Optional[torch.Tensor] = None, reverse: bool = False,
                 chunk_size: Optional[int] = DEFAULT_CHUNK) -> torch.Tensor:
    """Mamba-2 SSD scan (mamba_ssm's `mamba_chunk_scan_combined` semantics without z), cast to x.dtype.

    x (b, l, h, p); dt (b, l, h); A (h,); B, C (b, l, g, n); D, dt_bias (h,); initial_states (b, h, p, n).
    chunk_size=None runs the plain recurrence, an int the chunked form (same result up to rounding)."""
    if chunk_size is None:
        y = ssd_scan_recurrence(x, dt, A, B, C, dt_bias, dt_softplus, initial_states, reverse)
    else:
        y = ssd_scan_chunked(x, dt, A, B, C, dt_bias, dt_softplus, initial_states, reverse, chunk_size)
    if D is not None:
        y = y + x.to(y.dtype) * D.to(y.dtype)[:, None]
    return y.to(x.dtype)


def _shift(y: torch.Tensor, forward: bool) -> torch.Tensor:
    """Forward direction: out_t = y_{t-1} (0 at t = 0); backward direction: out_t = y_{t+1} (0 at t = L-1)."""
    if y.shape[1] == 0:
        return y
    if forward:
        return torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], dim=1)
    return torch.cat([y[:, 1:], torch.zeros_like(y[:, :1])], dim=1)


def _diagonal(D: torch.Tensor, x: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
    """δ_t · x_t with δ = D of shape (h,) (constant) or (b, l, h) (per token, Hydra's `fc_D(x) + D`)."""
    delta = D.to(cdt)
    delta = delta[:, None] if D.dim() == 1 else delta[..., None]
    return x.to(cdt) * delta


def quasiseparable_scan_ref(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                            dt_b: torch.Tensor, B_b: torch.Tensor, C_b: torch.Tensor, D: Optional[torch.Tensor] = None,
                            dt_bias: Optional[torch.Tensor] = None, dt_softplus: bool = False,
                            initial_states: Optional[torch.Tensor] = None,
                            chunk_size: Optional[int] = DEFAULT_CHUNK) -> torch.Tensor:
    """Hydra's quasiseparable mixer core, all in original token order, cast to x.dtype:

        y = shift(SSD(x; dt, B, C)) + shift⁻(SSD_reverse(x; dt_b, B_b, C_b)) + D ⊙ x

    which equals the official `roll(scan([x; flip x]))` construction (forward half, then the flipped-back
    backward half) without flipping anything. A and dt_bias are shared by both directions, as in Hydra; so is
    `initial_states` (the forward scan starts from it at t = -1, the backward one at t = L)."""
    cdt = compute_dtype(x.dtype)
    y_f = ssd_scan_ref(x.to(cdt), dt, A, B, C, None, dt_bias, dt_softplus, initial_states, False, chunk_size)
    y_b = ssd_scan_ref(x.to(cdt), dt_b, A, B_b, C_b, None, dt_bias, dt_softplus, initial_states, True, chunk_size)
    y = _shift(y_f, True) + _shift(y_b, False)
    if D is not None:
        y = y + _diagonal(D, x, cdt)
    return y.to(x.dtype)


def quasiseparable_matrix(dt, A, B, C, dt_b, B_b, C_b, D=None, dt_bias=None, dt_softplus=False) -> torch.Tensor:
    """The mixing matrix M (b, h, L, L) of `quasiseparable_scan_ref` (y = M x per head, no initial state):

        M[i, j] = (C_{i-1}·B_j) Δ_j exp(A Σ_{k=j+1}^{i-1} Δ_k)             for i > j   (forward, strictly lower)
        M[i, i] = δ_i                                                       (diagonal)
        M[i, j] = (C^b_{i+1}·B^b_j) Δ^b_j exp(A Σ_{k=i+1}^{j-1} Δ^b_k)      for i < j   (backward, strictly upper)

    Quadratic in L: for tests and for looking at what the mixer does, not for running it."""
    cdt = compute_dtype(dt.dtype if dt.dtype == torch.float64 else torch.float32)
    nheads = dt.shape[2]
    length = dt.shape[1]
    A = A.to(cdt)

    def lower(delta, Bh, Ch):
        # SSD matrix S[i, j] = (C_i·B_j) Δ_j exp(A Σ_{k=j+1}^{i} Δ_k) for j <= i, then shift rows down by one
        log_decay = _segment_sums((delta * A).permute(0, 2, 1))                    # (b, h, L, L)
        S = torch.einsum('bihn,bjhn->bhij', Ch, Bh) * torch.exp(log_decay) * delta.permute(0, 2, 1)[:, :, None, :]
        return F.pad(S, (0, 0, 1, 0))[:, :, :length]

    delta_f = _discretise(dt, dt_bias, dt_softplus, cdt)
    delta_b = _discretise(dt_b, dt_bias, dt_softplus, cdt)
    M = lower(delta_f, heads_of_groups(B.to(cdt), nheads), heads_of_groups(C.to(cdt), nheads))
    flip = lower(delta_b.flip(1), heads_of_groups(B_b.to(cdt), nheads).flip(1),
                 heads_of_groups(C_b.to(cdt), nheads).flip(1))
    M = M + flip.flip(-1).flip(-2)
    if D is not None:
        diag = D.to(cdt).expand(dt.shape[0], length, nheads) if D.dim() == 1 else D.to(cdt)
        M = M + torch.diag_embed(diag.permute(0, 2, 1))
    return M
