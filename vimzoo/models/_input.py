"""Input validation shared by every zoo model, so bad input fails with a message instead of a shape error deep
inside a conv or a scan.

`check_image_input` is TorchScript-compatible (the scripted model keeps the checks) and an FX leaf
(`register_notrace_function`): a traced graph records one call to it and validates the real input at run time.
It returns its input so that the call stays in traced graphs instead of being removed as dead code.
"""
from typing import Tuple, Union

import torch
from timm.layers import register_notrace_function, to_2tuple

__all__ = ['check_image_input', 'check_input_size', 'min_input_size_of', 'pair']


def pair(size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    """An int or (h, w) as an (h, w) tuple of ints (the `min_size` argument of `check_image_input`)."""
    h, w = to_2tuple(size)
    return int(h), int(w)


@register_notrace_function  # reason: checks concrete shapes / dtypes; one opaque call in a traced graph
def check_image_input(x: torch.Tensor, in_chans: int, min_size: Tuple[int, int], name: str = 'model') -> torch.Tensor:
    """Raise ValueError unless `x` is a float (B, in_chans, H, W) batch with (H, W) >= min_size; returns `x`.

    Skipped while torch.compile / torch.export trace the model: shapes are checked once there, by the graph.
    """
    if not torch.jit.is_scripting():
        if torch.compiler.is_compiling():
            return x
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'{name} expects a torch.Tensor image batch, got {type(x).__name__}.')
    if x.dim() != 4:
        raise ValueError(f'{name} expects a 4-D (B, C, H, W) image batch, got shape {list(x.shape)}.')
    if x.shape[1] != in_chans:
        raise ValueError(
            f'{name} was built for {in_chans} input channels but got {x.shape[1]} (input shape {list(x.shape)}). '
            f'Create it with in_chans={x.shape[1]} (timm adapts pretrained first-conv weights) or convert the input.')
    if x.shape[2] < min_size[0] or x.shape[3] < min_size[1]:
        raise ValueError(
            f'{name} needs an input of at least {min_size[0]}x{min_size[1]} pixels, got {x.shape[2]}x{x.shape[3]}.')
    if not x.is_floating_point():
        raise TypeError(f'{name} expects a floating point image batch, got {x.dtype}; normalise it first.')
    return x


@register_notrace_function  # reason: compares concrete input sizes
def check_input_size(x: torch.Tensor, img_size: Tuple[int, int], name: str = 'model') -> torch.Tensor:
    """Raise ValueError unless `x` is exactly `img_size` (models built with `dynamic_img_size=False`); returns `x`."""
    if not torch.jit.is_scripting() and torch.compiler.is_compiling():
        return x
    if x.shape[-2] != img_size[0] or x.shape[-1] != img_size[1]:
        raise ValueError(
            f'{name} was built for {img_size[0]}x{img_size[1]} inputs (dynamic_img_size=False), got '
            f'{x.shape[-2]}x{x.shape[-1]}. Create it with dynamic_img_size=True (or img_size=...), or call '
            f'set_input_size(img_size=...).')
    return x


def min_input_size_of(model: torch.nn.Module) -> Tuple[int, int]:
    """Smallest H, W a model accepts: its cfg's `min_input_size`, else its largest feature reduction."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if cfg.get('min_input_size'):
        return pair(tuple(cfg['min_input_size'][-2:]))
    reductions = [info['reduction'] for info in getattr(model, 'feature_info', []) or []]
    size = max(reductions) if reductions else 1
    return size, size
