"""ONNX translations of the `torch.ops.vimzoo.*` custom ops for `torch.onnx.export(..., dynamo=True)`.

Importing this module imports onnxscript and registers the translations with onnxscript's torch library registry,
the table the exporter reads at the start of every export; `vimzoo.export` imports it lazily (see there), so
`import vimzoo` never pulls in onnx / onnxscript.

The math is the pure-PyTorch reference's (`vimzoo/ops/reference.py`) in standard ONNX (opset 18) operators:
* causal_conv1d: a depthwise `Conv` padded on the left (on the right for the anti-causal `reverse`), then SiLU;
* selective scans: the discretisation (softplus, exp(delta * A), delta * B * u) is element-wise over the whole
  sequence; the recurrence h_t = a_t * h_{t-1} + b_t runs as one ONNX `Scan` over the tokens; `reverse` scans the
  flipped sequence; LBMamba's local backward scan (`window` > 1) is a second `Scan` in the opposite direction whose
  carry is zeroed at each window end;
* mamba_inner_fwd / add_rms_norm_fwd (the fused CPU inference ops) become the same composite graph that
  `vimzoo.ops.mamba_inner` / `add_rms_norm` run through when not fused;
* ssd_scan / quasiseparable_scan (Mamba-2, Hydra): the state recurrence S_t = exp(Δ_t A) S_{t-1} + Δ_t x_t B_tᵀ as
  the same `Scan` over (b, h, p, n) states (`vimzoo/ops/reference_ssd.py`'s plain recurrence), read out with C;
  the quasiseparable op shifts the two directions by one token with `Pad` and adds the diagonal.
Everything is computed in fp32 (fp64 for fp64 inputs) and cast back to the input dtype, as the reference does.
"""
from typing import Optional, Sequence, Tuple

import torch
from onnxscript import graph, ir, script
from onnxscript import opset18 as op
from onnxscript.function_libs.torch_lib.registration import torch_op
from onnxscript.function_libs.torch_lib.tensor_typing import TFloat
from onnxscript.values import Opset

__all__ = ['TRANSLATIONS', 'translation_table']

# ONNX functions (the two Scan loops) live in their own domain next to the exporter's 'pkg.torch.onnx'.
_FUNCTIONS = Opset('pkg.vimzoo.onnx', 1)
_INT64_MIN = -(2 ** 63)


@script(opset=_FUNCTIONS)
def linear_recurrence(h0: TFloat, a: TFloat, b: TFloat) -> TFloat:
    """Every h_t of h_t = a_t * h_{t-1} + b_t along axis 0 (the tokens), starting from h0."""
    @graph()
    def step(h, a_t, b_t):
        h_next = a_t * h + b_t
        h_out = op.Identity(h_next)
        return h_next, h_out

    h_last, hs = op.Scan(h0, a, b, body=step, num_scan_inputs=2)
    return hs


@script(opset=_FUNCTIONS)
def masked_carry(h0: TFloat, a: TFloat, b: TFloat, keep: TFloat) -> TFloat:
    """c_t = a_t * keep_t * g_{t-1} for g_t = c_t + b_t along axis 0: the carried part of a recurrence that
    restarts wherever keep_t is 0 (LBMamba's local scan)."""
    @graph()
    def step(g, a_t, b_t, keep_t):
        carried = a_t * (g * keep_t)
        g_next = carried + b_t
        return g_next, carried

    g_last, cs = op.Scan(h0, a, b, keep, body=step, num_scan_inputs=3)
    return cs


# ------------------------------------------------------------------------------------------------------------------
# Building blocks (called while the exporter traces; arguments are ir.Values with static dtype/rank information)
# ------------------------------------------------------------------------------------------------------------------

def _compute_dtype(x) -> ir.DataType:
    return ir.DataType.DOUBLE if x.dtype == ir.DataType.DOUBLE else ir.DataType.FLOAT


def _to(x, dtype: ir.DataType):
    if x is None or x.dtype == dtype:
        return x
    return op.Cast(x, to=int(dtype))


def _ints(*values: int):
    return op.Constant(value_ints=list(values))


def _flip(x, axis: int):
    return op.Slice(x, _ints(-1), _ints(_INT64_MIN), _ints(axis), _ints(-1))


def _narrow(x, axis: int, start: int, end: int):
    return op.Slice(x, _ints(start), _ints(end), _ints(axis))


def _silu(x):
    return op.Mul(x, op.Sigmoid(x))


def _static_dim(value, axis: int, what: str) -> int:
    dim = value.shape[axis] if value.shape is not None else None
    if not isinstance(dim, int):
        raise ValueError(f'vimzoo ONNX export: {what} must have a static size, got {dim!r}.')
    return dim


def _causal_conv(x, kernel, bias, silu: bool, reverse: bool, dim: int, width: int):
    """Depthwise causal conv of x (b, d, l) with kernel (d, 1, k); anti-causal when `reverse`."""
    if reverse:   # out_t = sum_j w[k-1-j] x_{t+j}: correlate with the flipped kernel, pad on the right
        kernel = _flip(kernel, 2)
    pads = [0, width - 1] if reverse else [width - 1, 0]
    inputs = (x, kernel) if bias is None else (x, kernel, bias)
    out = op.Conv(*inputs, group=dim, kernel_shape=[width], pads=pads)
    return _silu(out) if silu else out


def _window_keep(u, window: int, dtype: ir.DataType):
    """(l, 1, 1, 1) mask over scan steps k: 0 where the local scan restarts ((k + 1) % W == 0 or the last step)."""
    length = op.Squeeze(op.Shape(u, start=2, end=3), _ints(0))
    k = op.Range(op.Constant(value_int=0), length, op.Constant(value_int=1))
    one = op.Constant(value_int=1)
    window_end = op.Equal(op.Mod(op.Add(k, one), op.Constant(value_int=window)), op.Constant(value_int=0))
    last = op.Equal(k, op.Sub(length, one))
    keep = op.Cast(op.Not(op.Or(window_end, last)), to=int(dtype))
    return op.Reshape(keep, _ints(-1, 1, 1, 1))


def _scan_core(u, delta, A, B, C, D, delta_bias, softplus: bool, reverse: bool, window: int):
    """Un-gated selective scan y (b, d, l) in the compute dtype (`reference._scan_ref`)."""
    cdt = _compute_dtype(u)
    u, delta, A, B, C = (_to(t, cdt) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = op.Add(delta, op.Unsqueeze(_to(delta_bias, cdt), _ints(-1)))
    if softplus:
        delta = op.Softplus(delta)
    dt = op.Transpose(delta, perm=[2, 0, 1])                                   # (l, b, d): tokens first for Scan
    ut = op.Transpose(u, perm=[2, 0, 1])
    bt = op.Unsqueeze(op.Transpose(B, perm=[2, 0, 1]), _ints(2))              # (l, b, 1, n)
    ct = op.Unsqueeze(op.Transpose(C, perm=[2, 0, 1]), _ints(2))
    a = op.Exp(op.Mul(op.Unsqueeze(dt, _ints(-1)), A))                          # (l, b, d, n)
    bu = op.Mul(op.Unsqueeze(op.Mul(dt, ut), _ints(-1)), bt)                   # (l, b, d, n)
    if reverse:   # scan order = reversed token order; the local windows are aligned in scan order
        a, bu = _flip(a, 0), _flip(bu, 0)
    h0 = op.Expand(op.CastLike(op.Constant(value_float=0.0), bu), op.Shape(bu, start=1))   # zeros (b, d, n)
    hs = linear_recurrence(h0, a, bu)
    if window > 1:
        keep = _window_keep(u, window, cdt)
        local = masked_carry(h0, _flip(a, 0), _flip(bu, 0), _flip(keep, 0))
        hs = op.Add(hs, _flip(local, 0))
    if reverse:
        hs = _flip(hs, 0)
    y = op.ReduceSum(op.Mul(hs, ct), _ints(-1), keepdims=0)                    # (l, b, d)
    if D is not None:
        y = op.Add(y, op.Mul(ut, _to(D, cdt)))
    return op.Transpose(y, perm=[1, 2, 0])


def _gate(y, z, like):
    """y * silu(z) in the compute dtype, cast to the dtype of `like` (the op's `u`)."""
    if z is not None:
        y = op.Mul(y, _silu(_to(z, _compute_dtype(like))))
    return _to(y, like.dtype)


# ------------------------------------------------------------------------------------------------------------------
# The op translations (argument names and order follow the op schemas in vimzoo/ops/_ops.py)
# ------------------------------------------------------------------------------------------------------------------

@torch_op('vimzoo::causal_conv1d', trace_only=True)
def vimzoo_causal_conv1d(x: TFloat, weight: TFloat, bias: Optional[TFloat], activation: str, reverse: bool,
                         backend: str, check_finite: bool) -> TFloat:
    cdt = _compute_dtype(x)
    dim, width = _static_dim(weight, 0, 'the conv weight'), _static_dim(weight, 1, 'the conv weight')
    kernel = op.Unsqueeze(_to(weight, cdt), _ints(1))                           # (d, 1, k)
    out = _causal_conv(_to(x, cdt), kernel, _to(bias, cdt), bool(activation), reverse, dim, width)
    return _to(out, x.dtype)


@torch_op('vimzoo::selective_scan', trace_only=True)
def vimzoo_selective_scan(u: TFloat, delta: TFloat, A: TFloat, B: TFloat, C: TFloat, D: Optional[TFloat],
                          z: Optional[TFloat], delta_bias: Optional[TFloat], delta_softplus: bool, reverse: bool,
                          window: int, backend: str, check_finite: bool) -> TFloat:
    y = _scan_core(u, delta, A, B, C, D, delta_bias, delta_softplus, reverse, window)
    return _gate(y, z, u)


@torch_op('vimzoo::bidirectional_selective_scan', trace_only=True)
def vimzoo_bidirectional_selective_scan(
        u: TFloat, delta: TFloat, A: TFloat, B: TFloat, C: TFloat, D: Optional[TFloat], delta_bias: Optional[TFloat],
        u_b: TFloat, delta_b: TFloat, A_b: TFloat, B_b: TFloat, C_b: TFloat, D_b: Optional[TFloat],
        delta_bias_b: Optional[TFloat], z: Optional[TFloat], delta_softplus: bool, backend: str,
        check_finite: bool) -> TFloat:
    y = op.Add(_scan_core(u, delta, A, B, C, D, delta_bias, delta_softplus, False, 1),
               _scan_core(u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, delta_softplus, True, 1))
    return _gate(y, z, u)


def _mixer_branch(xs, weights: Sequence, reverse: bool, cdt: ir.DataType):
    """One direction of `vimzoo.ops.reference.mamba_inner_ref`: conv -> x_proj -> dt_proj -> (scan inputs, x_proj's
    output)."""
    conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, a_log, d_skip = weights
    dim = _static_dim(conv_w, 0, 'the conv weight')
    width = _static_dim(conv_w, len(conv_w.shape) - 1, 'the conv weight')
    rank, n = _static_dim(dt_proj_w, 1, 'dt_proj.weight'), _static_dim(a_log, 1, 'A_log')
    # the fused op's lists carry empty tensors for absent optional parameters
    conv_b, dt_bias, d_skip = (None if t is None or _static_dim(t, 0, 'an optional parameter') == 0 else t
                               for t in (conv_b, dt_bias, d_skip))
    kernel = op.Reshape(_to(conv_w, cdt), _ints(dim, 1, width))
    u = _causal_conv(xs, kernel, _to(conv_b, cdt), True, reverse, dim, width)  # (b, d, l)
    x_dbl = op.MatMul(op.Transpose(u, perm=[0, 2, 1]), op.Transpose(_to(x_proj_w, cdt), perm=[1, 0]))
    dt, b_mat, c_mat = (_narrow(x_dbl, 2, 0, rank), _narrow(x_dbl, 2, rank, rank + n),
                        _narrow(x_dbl, 2, rank + n, rank + 2 * n))
    delta = op.MatMul(dt, op.Transpose(_to(dt_proj_w, cdt), perm=[1, 0]))    # (b, l, d)
    A = op.Neg(op.Exp(_to(a_log, cdt)))
    return (u, op.Transpose(delta, perm=[0, 2, 1]), A, op.Transpose(b_mat, perm=[0, 2, 1]),
            op.Transpose(c_mat, perm=[0, 2, 1]), d_skip, dt_bias), x_dbl


@torch_op('vimzoo::mamba_inner_fwd', trace_only=True)
def vimzoo_mamba_inner_fwd(xz: TFloat, fwd: Sequence[TFloat], bwd: Sequence[TFloat], reverse: bool, window: int,
                           scale: float, backend: str, check_finite: bool) -> Tuple[TFloat, TFloat]:
    """(out, x_proj's output per direction), as the op returns them (an inference graph leaves the second unused)."""
    cdt = _compute_dtype(xz)
    dim = _static_dim(xz, 2, 'xz') // 2
    xz_t = op.Transpose(_to(xz, cdt), perm=[0, 2, 1])                         # (b, 2d, l)
    xs, z = _narrow(xz_t, 1, 0, dim), _narrow(xz_t, 1, dim, 2 * dim)
    if len(bwd):
        (u, delta, A, B, C, D, bias), x_dbl = _mixer_branch(xs, fwd, False, cdt)
        (u_b, delta_b, A_b, B_b, C_b, D_b, bias_b), x_dbl_b = _mixer_branch(xs, bwd, True, cdt)
        y = op.Add(_scan_core(u, delta, A, B, C, D, bias, True, False, 1),
                   _scan_core(u_b, delta_b, A_b, B_b, C_b, D_b, bias_b, True, True, 1))
        x_dbls = op.Concat(op.Unsqueeze(x_dbl, _ints(0)), op.Unsqueeze(x_dbl_b, _ints(0)), axis=0)
    else:
        (u, delta, A, B, C, D, bias), x_dbl = _mixer_branch(xs, fwd, reverse, cdt)
        y = _scan_core(u, delta, A, B, C, D, bias, True, reverse, window)
        x_dbls = op.Unsqueeze(x_dbl, _ints(0))
    y = op.Mul(y, _silu(z))
    y = op.Transpose(y, perm=[0, 2, 1])
    if scale != 1.0:
        y = op.Mul(y, op.CastLike(op.Constant(value_float=scale), y))
    return _to(y, xz.dtype), _to(x_dbls, xz.dtype)


@torch_op('vimzoo::add_rms_norm_fwd', trace_only=True)
def vimzoo_add_rms_norm_fwd(x: TFloat, residual: Optional[TFloat], weight: TFloat, eps: float, backend: str,
                            check_finite: bool) -> Tuple[TFloat, TFloat]:
    summed = _to(x, ir.DataType.FLOAT)
    if residual is not None:
        summed = op.Add(_to(residual, ir.DataType.FLOAT), summed)
    mean_sq = op.ReduceMean(op.Mul(summed, summed), _ints(-1), keepdims=1)
    normed = op.Div(summed, op.Sqrt(op.Add(mean_sq, op.Constant(value_float=eps))))
    normed = op.Mul(normed, _to(weight, ir.DataType.FLOAT))
    return _to(normed, x.dtype), summed


def _heads(t, nheads: int):
    """(b, l, g, n) -> (b, l, h, n): head h reads group h // (h / g) (`reference_ssd.heads_of_groups`)."""
    groups = _static_dim(t, 2, 'B / C')
    if groups == nheads:
        return t
    wide = op.Expand(op.Unsqueeze(t, _ints(3)),
                     op.Concat(op.Shape(t, start=0, end=3), _ints(nheads // groups), op.Shape(t, start=3), axis=0))
    return op.Reshape(wide, _ints(0, 0, nheads, -1))


def _ssd_core(x, dt, A, B, C, dt_bias, softplus: bool, initial_states, reverse: bool):
    """The SSD scan without D, tokens first: (l, b, h, p) in the compute dtype."""
    cdt = _compute_dtype(x)
    nheads = _static_dim(A, 0, 'A')
    delta = _to(dt, cdt)
    if dt_bias is not None:
        delta = op.Add(delta, _to(dt_bias, cdt))
    if softplus:
        delta = op.Softplus(delta)
    xt = op.Transpose(_to(x, cdt), perm=[1, 0, 2, 3])                          # (l, b, h, p)
    dtt = op.Transpose(delta, perm=[1, 0, 2])                                   # (l, b, h)
    bt = op.Transpose(_heads(_to(B, cdt), nheads), perm=[1, 0, 2, 3])          # (l, b, h, n)
    ct = op.Transpose(_heads(_to(C, cdt), nheads), perm=[1, 0, 2, 3])
    a = op.Unsqueeze(op.Exp(op.Mul(dtt, _to(A, cdt))), _ints(-1, -2))         # (l, b, h, 1, 1)
    bx = op.Mul(op.Unsqueeze(op.Mul(op.Unsqueeze(dtt, _ints(-1)), xt), _ints(-1)),
                op.Unsqueeze(bt, _ints(-2)))                                    # (l, b, h, p, n)
    if reverse:
        a, bx = _flip(a, 0), _flip(bx, 0)
    if initial_states is None:
        h0 = op.Expand(op.CastLike(op.Constant(value_float=0.0), bx), op.Shape(bx, start=1))
    else:
        h0 = _to(initial_states, cdt)
    hs = linear_recurrence(h0, a, bx)
    if reverse:
        hs = _flip(hs, 0)
    return op.ReduceSum(op.Mul(hs, op.Unsqueeze(ct, _ints(-2))), _ints(-1), keepdims=0)


@torch_op('vimzoo::ssd_scan', trace_only=True)
def vimzoo_ssd_scan(x: TFloat, dt: TFloat, A: TFloat, B: TFloat, C: TFloat, D: Optional[TFloat],
                    dt_bias: Optional[TFloat], initial_states: Optional[TFloat], dt_softplus: bool, reverse: bool,
                    backend: str, check_finite: bool) -> TFloat:
    cdt = _compute_dtype(x)
    y = _ssd_core(x, dt, A, B, C, dt_bias, dt_softplus, initial_states, reverse)
    if D is not None:
        y = op.Add(y, op.Mul(op.Transpose(_to(x, cdt), perm=[1, 0, 2, 3]), op.Unsqueeze(_to(D, cdt), _ints(-1))))
    return _to(op.Transpose(y, perm=[1, 0, 2, 3]), x.dtype)


@torch_op('vimzoo::quasiseparable_scan', trace_only=True)
def vimzoo_quasiseparable_scan(x: TFloat, dt: TFloat, A: TFloat, B: TFloat, C: TFloat, dt_b: TFloat, B_b: TFloat,
                               C_b: TFloat, D: Optional[TFloat], dt_bias: Optional[TFloat],
                               initial_states: Optional[TFloat], dt_softplus: bool, backend: str,
                               check_finite: bool) -> TFloat:
    cdt = _compute_dtype(x)
    y_f = _ssd_core(x, dt, A, B, C, dt_bias, dt_softplus, initial_states, False)
    y_b = _ssd_core(x, dt_b, A, B_b, C_b, dt_bias, dt_softplus, initial_states, True)
    # out_t = y_f[t-1] + y_b[t+1], zero past either end (tokens are axis 0)
    y = op.Add(op.Pad(_narrow(y_f, 0, 0, -1), _ints(1, 0, 0, 0, 0, 0, 0, 0)),
               op.Pad(_narrow(y_b, 0, 1, 2 ** 62), _ints(0, 0, 0, 0, 1, 0, 0, 0)))
    if D is not None:
        xt = op.Transpose(_to(x, cdt), perm=[1, 0, 2, 3])
        diag = _to(D, cdt)
        diag = op.Unsqueeze(diag, _ints(-1)) if len(D.shape) == 1 else \
            op.Unsqueeze(op.Transpose(diag, perm=[1, 0, 2]), _ints(-1))         # (h, 1) or (l, b, h, 1)
        y = op.Add(y, op.Mul(xt, diag))
    return _to(op.Transpose(y, perm=[1, 0, 2, 3]), x.dtype)


TRANSLATIONS = {
    'selective_scan': vimzoo_selective_scan,
    'bidirectional_selective_scan': vimzoo_bidirectional_selective_scan,
    'causal_conv1d': vimzoo_causal_conv1d,
    'mamba_inner_fwd': vimzoo_mamba_inner_fwd,
    'add_rms_norm_fwd': vimzoo_add_rms_norm_fwd,
    'ssd_scan': vimzoo_ssd_scan,
    'quasiseparable_scan': vimzoo_quasiseparable_scan,
}


def translation_table() -> dict:
    """{torch op overload: onnxscript function} for `torch.onnx.export(custom_translation_table=...)`."""
    return {getattr(torch.ops.vimzoo, name).default: fn for name, fn in TRANSLATIONS.items()}
