"""Input validation for the public op wrappers (shape/dtype/device: TypeError/ValueError instead of kernel crashes)
and the NaN/inf check the op implementations run."""
from typing import Optional

import torch

from ._backend import check_finite_enabled

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_PARAM_FLOATS = (torch.float32, torch.float64)


def _is_concrete(t: torch.Tensor) -> bool:
    """True for real tensors whose values can be inspected (not meta/fake, not while compiling)."""
    if torch.compiler.is_compiling() or t.device.type == 'meta':
        return False
    try:
        from torch._subclasses.fake_tensor import FakeTensor
        if isinstance(t, FakeTensor):
            return False
    except ImportError:  # pragma: no cover
        pass
    return True


def check_tensor(op: str, name: str, t, shape: tuple, dtypes: tuple, device: Optional[torch.device],
                 optional: bool = False) -> None:
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
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f'{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}.')
    if device is not None and t.device != device:
        raise ValueError(f'{op}: all tensors must be on the same device; u is on {device} but {name} is on '
                         f'{t.device}.')


def check_finite(op: str, named: dict) -> None:
    """NaN/inf check run inside the op implementations (eager, real tensors; the CPU kernel checks in-kernel).

    Costs one reduction + host sync per tensor; disable with vimzoo.ops.set_check_finite(False)."""
    if not check_finite_enabled():
        return
    for name, t in named.items():
        if t is not None and _is_concrete(t) and t.numel() and not bool(torch.isfinite(t).all()):
            raise ValueError(f'{op}: {name} contains NaN or inf values.')


def check_scan_inputs(op: str, u, delta, A, B, C, D, z, delta_bias, local_window=None, suffix: str = ''):
    """Shapes: u, delta, z (b, d, l); A (d, n); B, C (b, n, l); D, delta_bias (d,). Returns (b, d, l, n)."""
    if not isinstance(u, torch.Tensor):
        raise TypeError(f'{op}: u{suffix} must be a torch.Tensor, got {type(u).__name__}.')
    if u.dim() != 3:
        raise ValueError(f'{op}: u{suffix} must be 3-D (batch, dim, length), got shape {tuple(u.shape)}.')
    if u.dtype not in _FLOATS:
        raise TypeError(f'{op}: u{suffix} has dtype {u.dtype}; expected float16, bfloat16, float32 or float64.')
    b, d, l = u.shape
    if l < 1:
        raise ValueError(f'{op}: sequence length must be >= 1, got u{suffix} of shape {tuple(u.shape)}.')
    if not isinstance(A, torch.Tensor) or A.dim() != 2:
        raise ValueError(f'{op}: A{suffix} must be a 2-D (dim, d_state) tensor, got '
                         f'{tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__}.')
    n = A.shape[1]
    dev = u.device
    act = (u.dtype,)
    bc = (u.dtype,) if u.dtype == torch.float32 else (u.dtype, torch.float32)   # B, C: dtype of u or fp32
    params = _PARAM_FLOATS
    check_tensor(op, f'u{suffix}', u, (b, d, l), act, dev)
    check_tensor(op, f'delta{suffix}', delta, (b, d, l), act, dev)
    check_tensor(op, f'A{suffix}', A, (d, n), params, dev)
    check_tensor(op, f'B{suffix}', B, (b, n, l), bc, dev)
    check_tensor(op, f'C{suffix}', C, (b, n, l), bc, dev)
    check_tensor(op, f'D{suffix}', D, (d,), params, dev, optional=True)
    check_tensor(op, 'z', z, (b, d, l), act, dev, optional=True)
    check_tensor(op, f'delta_bias{suffix}', delta_bias, (d,), params, dev, optional=True)
    if local_window is not None and (isinstance(local_window, bool) or not isinstance(local_window, int)
                                     or local_window < 1):
        raise ValueError(f'{op}: local_window must be None or an int >= 1, got {local_window!r}.')
    return b, d, l, n
