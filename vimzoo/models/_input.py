"""Input validation shared by every zoo model, so bad input fails with a message instead of a shape error deep
inside a conv or a scan."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch

__all__ = ['check_image_input', 'min_input_size_of']


def check_image_input(x: torch.Tensor, in_chans: int, min_size: Union[int, Sequence[int]], name: str = 'model') -> None:
    """Raise ValueError unless `x` is a float (B, in_chans, H, W) batch with H, W >= min_size."""
    if torch.jit.is_scripting() or torch.compiler.is_compiling():
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{name} expects a torch.Tensor image batch, got {type(x).__name__}.')
    if x.ndim != 4:
        raise ValueError(f'{name} expects a 4-D (B, C, H, W) image batch, got shape {tuple(x.shape)}.')
    if x.shape[1] != in_chans:
        raise ValueError(
            f'{name} was built for {in_chans} input channels but got {x.shape[1]} (input shape {tuple(x.shape)}). '
            f'Create it with in_chans={x.shape[1]} (timm adapts pretrained first-conv weights) or convert the input.')
    min_h, min_w = (min_size, min_size) if isinstance(min_size, int) else tuple(min_size)
    if x.shape[2] < min_h or x.shape[3] < min_w:
        raise ValueError(
            f'{name} needs an input of at least {min_h}x{min_w} pixels, got {x.shape[2]}x{x.shape[3]}.')
    if not x.is_floating_point():
        raise TypeError(f'{name} expects a floating point image batch, got {x.dtype}; normalise it first.')


def min_input_size_of(model: torch.nn.Module) -> Tuple[int, int]:
    """Smallest H, W a model accepts: its cfg's `min_input_size`, else its largest feature reduction."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if cfg.get('min_input_size'):
        return tuple(cfg['min_input_size'][-2:])
    reductions = [info['reduction'] for info in getattr(model, 'feature_info', []) or []]
    size = max(reductions) if reductions else 1
    return size, size
