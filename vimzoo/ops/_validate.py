"""Input validation for every public op, in one place, before any backend runs.

The same rules hold whichever route an op takes afterwards (fused or unfused, reference or compiled kernel):
shapes, dtypes, devices, conv width >= 1, d_state >= 1, window >= 1, equal per-direction shapes. Zero-size batch /
channel / length dims are valid and give empty results. Errors are `TypeError` (wrong kind of argument) or
`ValueError` (wrong value or shape) whose message names the argument. Values (NaN/inf) are checked by the backends,
which can do it while they read the data (`check_finite` below is the plain PyTorch version).
"""
import math
import numbers
import operator
from typing import Optional, Sequence

import torch

__all__ = ['FLOATS', 'check_tensor', 'check_window', 'check_scan', 'check_bidirectional_scan', 'check_conv',
           'check_mamba_inner', 'check_add_rms_norm', 'check_finite', 'is_concrete', 'mixer_weight_name',
           'mixer_named', 'check_ssd', 'check_quasiseparable']

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
PARAM_FLOATS = (torch.float32, torch.float64)   # A, D, delta_bias: fp32, or fp64 for gradcheck-grade runs
MIXER_WEIGHT_NAMES = ('conv1d.weight', 'conv1d.bias', 'x_proj.weight', 'dt_proj.weight', 'dt_proj.bias', 'A_log', 'D')
_OPTIONAL_MIXER_WEIGHTS = {1, 4, 6}   # conv1d.bias, dt_proj.bias, D


def mixer_weight_name(i: int, sfx: str = '') -> str:
    """How errors name mamba_inner's i-th weight of a direction, e.g. 'weights_b[2] (x_proj.weight)'."""
    return f'weights{sfx}[{i}] ({MIXER_WEIGHT_NAMES[i]})'


def _describe(t) -> str:
    return f'shape {tuple(t.shape)}' if isinstance(t, torch.Tensor) else f'a {type(t).__name__}'


def check_tensor(op: str, name: str, t, shape: Optional[tuple], dtypes: tuple, device: Optional[torch.device],
                 optional: bool = False, dim: Optional[int] = None) -> None:
    """Type, dtype, shape (or number of dims) and device of one tensor argument."""
    if t is None:
        if optional:
            return
        raise TypeError(f'{op}: {name} is required, got None.')
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'{op}: {name} must be a torch.Tensor, got {type(t).__name__}.')
    if t.is_complex():
        raise TypeError(f'{op}: {name} is complex ({t.dtype}); only real tensors are supported.')
    if t.dtype not in dtypes:
        names = ', '.join(str(d).replace('torch.', '') for d in dtypes)
        raise TypeError(f'{op}: {name} has dtype {t.dtype}; expected one of ({names}).')
    if dim is not None and t.dim() != dim:
        raise ValueError(f'{op}: {name} must be {dim}-D, got {_describe(t)}.')
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f'{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}.')
    if device is not None and t.device != device:
        raise ValueError(f'{op}: all tensors must be on the same device; the first input is on {device} but {name} '
                         f'is on {t.device}.')


def check_window(op: str, local_window) -> int:
    """None -> 1 (plain scan); ints and integer-like scalars (numpy ints) >= 1 are accepted; bools are not."""
    if local_window is None:
        return 1
    try:
        if isinstance(local_window, bool):
            raise TypeError
        value = operator.index(local_window)
    except TypeError:
        raise ValueError(f'{op}: local_window must be None or an int >= 1, got {local_window!r}.') from None
    if value < 1:
        raise ValueError(f'{op}: local_window must be None or an int >= 1, got {local_window!r}.')
    return value


def check_scan(op: str, u, delta, A, B, C, D, z, delta_bias, suffix: str = '', z_name: str = 'z'):
    """Shapes: u, delta, z (b, d, l); A (d, n) with n >= 1; B, C (b, n, l); D, delta_bias (d,).

    dtypes: u any float; delta and z like u; B, C like u or fp32; A, D, delta_bias fp32 (fp64 allowed)."""
    check_tensor(op, f'u{suffix}', u, None, FLOATS, None, dim=3)
    b, d, l = u.shape
    dev = u.device
    check_tensor(op, f'A{suffix}', A, None, PARAM_FLOATS, dev, dim=2)
    n = A.shape[1]
    if A.shape[0] != d:
        raise ValueError(f'{op}: A{suffix} must have shape ({d}, d_state) to match u{suffix} of shape {tuple(u.shape)}, '
                         f'got {tuple(A.shape)}.')
    if n < 1:
        raise ValueError(f'{op}: A{suffix} has d_state = A.shape[1] = 0; the state size must be >= 1.')
    act = (u.dtype,)
    bc = (u.dtype,) if u.dtype == torch.float32 else (u.dtype, torch.float32)
    check_tensor(op, f'delta{suffix}', delta, (b, d, l), act, dev)
    check_tensor(op, f'B{suffix}', B, (b, n, l), bc, dev)
    check_tensor(op, f'C{suffix}', C, (b, n, l), bc, dev)
    check_tensor(op, f'D{suffix}', D, (d,), PARAM_FLOATS, dev, optional=True)
    check_tensor(op, z_name, z, (b, d, l), act, dev, optional=True)
    check_tensor(op, f'delta_bias{suffix}', delta_bias, (d,), PARAM_FLOATS, dev, optional=True)


def check_bidirectional_scan(op: str, fwd: Sequence, bwd: Sequence, z) -> None:
    """Both directions as in `check_scan`, with equal shapes and dtypes (the fused kernels need one state size)."""
    check_scan(op, *fwd[:5], fwd[5], z, fwd[6])
    u, u_b = fwd[0], bwd[0]
    check_tensor(op, 'u_b', u_b, tuple(u.shape), (u.dtype,), u.device)
    check_scan(op, *bwd[:5], bwd[5], None, bwd[6], suffix='_b')
    names = ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')
    for name, tf, tb in zip(names, fwd, bwd):
        if tf is None or tb is None:
            continue
        if tb.shape != tf.shape or tb.dtype != tf.dtype:
            raise ValueError(f'{op}: {name}_b must match {name} in shape and dtype (both directions share one state '
                             f'size), got {tuple(tb.shape)} {tb.dtype} vs {tuple(tf.shape)} {tf.dtype}.')


def check_conv(op: str, x, weight, bias, activation) -> None:
    """x (b, d, l) float; weight (d, k) float with k >= 1; bias (d,) float; activation None | 'silu' | 'swish'."""
    check_tensor(op, 'x', x, None, FLOATS, None, dim=3)
    d = x.shape[1]
    check_tensor(op, 'weight', weight, None, FLOATS, x.device, dim=2)
    if weight.shape[0] != d:
        raise ValueError(f'{op}: weight must have shape ({d}, width) to match x of shape {tuple(x.shape)}, got '
                         f'{tuple(weight.shape)}.')
    if weight.shape[1] < 1:
        raise ValueError(f'{op}: weight has width weight.shape[1] = 0; the conv width must be >= 1.')
    check_tensor(op, 'bias', bias, (d,), FLOATS, x.device, optional=True)
    if activation not in (None, 'silu', 'swish'):
        raise ValueError(f"{op}: activation must be None, 'silu' or 'swish', got {activation!r}.")


def _check_mixer_direction(op: str, weights, d: int, device: torch.device, sfx: str) -> tuple:
    """Returns (conv width, dt rank, d_state) of one direction's 7 module parameters."""
    if not isinstance(weights, (list, tuple)) or len(weights) != 7:
        raise ValueError(f'{op}: weights{sfx} must be a list of 7 tensors ({", ".join(MIXER_WEIGHT_NAMES)}), got '
                         f'{len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__}.')
    names = [mixer_weight_name(i, sfx) for i in range(7)]
    for i, (name, t) in enumerate(zip(names, weights)):
        check_tensor(op, name, t, None, FLOATS, device, optional=i in _OPTIONAL_MIXER_WEIGHTS)
    conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, a_log, d_skip = weights
    if conv_w.dim() == 3 and conv_w.shape[1] == 1:
        width = conv_w.shape[2]
    elif conv_w.dim() == 2:
        width = conv_w.shape[1]
    else:
        raise ValueError(f'{op}: {names[0]} must have shape ({d}, 1, width) or ({d}, width), got '
                         f'{tuple(conv_w.shape)}.')
    if conv_w.shape[0] != d:
        raise ValueError(f'{op}: {names[0]} must have {d} channels (xz has 2 * {d}), got {tuple(conv_w.shape)}.')
    if width < 1:
        raise ValueError(f'{op}: {names[0]} has conv width 0; the conv width must be >= 1.')
    check_tensor(op, names[5], a_log, None, FLOATS, device, dim=2)
    n = a_log.shape[1]
    if a_log.shape[0] != d or n < 1:
        raise ValueError(f'{op}: {names[5]} must have shape ({d}, d_state) with d_state >= 1, got {tuple(a_log.shape)}.')
    check_tensor(op, names[3], dt_proj_w, None, FLOATS, device, dim=2)
    rank = dt_proj_w.shape[1]
    if dt_proj_w.shape[0] != d or rank < 1:
        raise ValueError(f'{op}: {names[3]} must have shape ({d}, dt_rank) with dt_rank >= 1, got '
                         f'{tuple(dt_proj_w.shape)}.')
    check_tensor(op, names[2], x_proj_w, (rank + 2 * n, d), FLOATS, device)
    for i, t in ((1, conv_b), (4, dt_bias), (6, d_skip)):
        check_tensor(op, names[i], t, (d,), FLOATS, device, optional=True)
    return width, rank, n


def check_mamba_inner(op: str, xz, weights, weights_b, reverse, local_window, scale) -> int:
    """xz (b, l, 2d); each direction 7 tensors (see vimzoo.ops.mamba_inner); both directions of equal shapes.
    Returns the window (1 for the plain scan)."""
    check_tensor(op, 'xz', xz, None, FLOATS, None, dim=3)
    if xz.shape[-1] % 2:
        raise ValueError(f'{op}: xz must be (batch, length, 2 * d) with x and z stacked, got an odd last dim: '
                         f'{tuple(xz.shape)}.')
    d = xz.shape[-1] // 2
    window = check_window(op, local_window)
    if not isinstance(scale, numbers.Real) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ValueError(f'{op}: scale must be a finite number, got {scale!r}.')
    sizes = _check_mixer_direction(op, weights, d, xz.device, '')
    if weights_b is not None:
        if reverse:
            raise ValueError(f'{op}: the bidirectional mixer already scans both ways; reverse must be False.')
        if window != 1:
            raise ValueError(f'{op}: local_window applies to one-direction (LBVim) mixers; the bidirectional mixer '
                             f'takes none, got local_window={local_window!r}.')
        sizes_b = _check_mixer_direction(op, weights_b, d, xz.device, '_b')
        if sizes_b != sizes:
            raise ValueError(f'{op}: weights and weights_b must have the same (conv width, dt_rank, d_state), got '
                             f'{sizes} and {sizes_b}.')
    return window


def check_add_rms_norm(op: str, x, residual, weight, eps) -> None:
    """x (..., C) float; residual None or like x (any float); weight (C,) float; eps a finite number >= 0."""
    check_tensor(op, 'x', x, None, FLOATS, None)
    if x.dim() < 1:
        raise ValueError(f'{op}: x must have at least one dim (..., C), got a 0-d tensor.')
    check_tensor(op, 'residual', residual, tuple(x.shape), FLOATS, x.device, optional=True)
    check_tensor(op, 'weight', weight, (x.shape[-1],), FLOATS, x.device)
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f'{op}: eps must be a finite number >= 0, got {eps!r}.')


def _check_flag(op: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f'{op}: {name} must be a bool, got {value!r}.')


def _check_ssd_direction(op: str, x, dt, B, C, sfx: str = '') -> tuple:
    """dt (b, l, h); B, C (b, l, g, n) with g >= 1 dividing h and n >= 1. Returns (g, n)."""
    b, l, h, _ = x.shape
    dev = x.device
    act = (x.dtype,) if x.dtype == torch.float32 else (x.dtype, torch.float32)
    check_tensor(op, f'dt{sfx}', dt, (b, l, h), act, dev)
    check_tensor(op, f'B{sfx}', B, None, act, dev, dim=4)
    g, n = B.shape[2], B.shape[3]
    if tuple(B.shape[:2]) != (b, l) or g < 1 or h % g:
        raise ValueError(f'{op}: B{sfx} must have shape ({b}, {l}, ngroups, d_state) with ngroups >= 1 dividing the '
                         f'{h} heads of x, got {tuple(B.shape)}.')
    if n < 1:
        raise ValueError(f'{op}: B{sfx} has d_state = B.shape[3] = 0; the state size must be >= 1.')
    check_tensor(op, f'C{sfx}', C, tuple(B.shape), act, dev)
    return g, n


def _check_ssd_common(op: str, x, A, dt_bias, initial_states, n: int, dt_softplus) -> None:
    b, _, h, p = x.shape
    check_tensor(op, 'A', A, (h,), PARAM_FLOATS, x.device)
    check_tensor(op, 'dt_bias', dt_bias, (h,), PARAM_FLOATS, x.device, optional=True)
    check_tensor(op, 'initial_states', initial_states, (b, h, p, n), FLOATS, x.device, optional=True)
    _check_flag(op, 'dt_softplus', dt_softplus)


def check_ssd(op: str, x, dt, A, B, C, D, dt_bias, initial_states, dt_softplus, reverse) -> None:
    """Mamba-2 SSD scan: x (b, l, h, p); dt (b, l, h); A (h,); B, C (b, l, g, n); D, dt_bias (h,);
    initial_states (b, h, p, n). dt / B / C in x's dtype or fp32; A, D, dt_bias fp32 (fp64 allowed)."""
    check_tensor(op, 'x', x, None, FLOATS, None, dim=4)
    _, n = _check_ssd_direction(op, x, dt, B, C)
    check_tensor(op, 'D', D, (x.shape[2],), PARAM_FLOATS, x.device, optional=True)
    _check_ssd_common(op, x, A, dt_bias, initial_states, n, dt_softplus)
    _check_flag(op, 'reverse', reverse)


def check_quasiseparable(op: str, x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states, dt_softplus) -> None:
    """Hydra's mixer core: both directions as in `check_ssd`, with equal B / B_b shapes (one state size); D is
    (h,) (fp32 / fp64) or per token (b, l, h) (x's dtype or fp32)."""
    check_tensor(op, 'x', x, None, FLOATS, None, dim=4)
    sizes = _check_ssd_direction(op, x, dt, B, C)
    sizes_b = _check_ssd_direction(op, x, dt_b, B_b, C_b, '_b')
    if sizes_b != sizes:
        raise ValueError(f'{op}: B_b must match B in shape (both directions share one state size and grouping), '
                         f'got {tuple(B_b.shape)} vs {tuple(B.shape)}.')
    b, l, h, _ = x.shape
    if isinstance(D, torch.Tensor) and D.dim() == 3:
        act = (x.dtype,) if x.dtype == torch.float32 else (x.dtype, torch.float32)
        check_tensor(op, 'D', D, (b, l, h), act, x.device)
    elif isinstance(D, torch.Tensor) and D.dim() != 1:
        raise ValueError(f'{op}: D must be ({h},) or per token ({b}, {l}, {h}), got {tuple(D.shape)}.')
    else:
        check_tensor(op, 'D', D, (h,), PARAM_FLOATS, x.device, optional=True)
    _check_ssd_common(op, x, A, dt_bias, initial_states, sizes[1], dt_softplus)


def is_concrete(t: torch.Tensor) -> bool:
    """True for real tensors whose values can be inspected (not meta/fake, not while compiling)."""
    if torch.compiler.is_compiling() or t.device.type == 'meta':
        return False
    from torch._subclasses.fake_tensor import FakeTensor
    return not isinstance(t, FakeTensor)


def all_finite(t: torch.Tensor) -> bool:
    """No NaN / inf in a non-empty tensor. One min/max reduction (NaN propagates into both), about 10x cheaper on
    the CPU than isfinite(t).all(), which makes several passes; non-float tensors are finite by definition."""
    if not t.is_floating_point():
        return True
    low, high = torch.aminmax(t.detach())   # detached: the check must not join (or grow) the autograd graph
    return bool(torch.isfinite(low) & torch.isfinite(high))


def check_finite(op: str, named: dict) -> None:
    """NaN/inf check in plain PyTorch (one reduction + host sync per tensor), used by backends that cannot check
    while reading. Opt out with vimzoo.ops.set_check_finite(False) / use_check_finite(False)."""
    for name, t in named.items():
        if t is not None and t.numel() and is_concrete(t) and not all_finite(t):
            raise ValueError(f'{op}: {name} contains NaN or inf values.')


def mixer_named(xz, fwd, bwd) -> dict:
    """mamba_inner's inputs by the names its errors use: x and z (the halves of xz) and each weight."""
    d = xz.shape[-1] // 2
    named = {'x': xz[..., :d], 'z': xz[..., d:]}
    for sfx, weights in (('', fwd), ('_b', bwd)):
        named.update({mixer_weight_name(i, sfx): t for i, t in enumerate(weights or ())})
    return named
