"""Backbone feature widths before anything is built, and a build-time check that necks and heads agree with them.

`backbone_channels('van_b0')` -> [32, 64, 160, 256] builds the `VimZooBackbone` on the meta device (no memory, no
weights, well under a second for most models), so configs can be written without guessing. `import vimzoo.mm`
also makes every model build (mmdet / mmseg / mmengine registries) check that a `VimZooBackbone`'s `out_channels`
equal what the neck (or, without a neck, the decode / auxiliary heads) expects, and fail with the right values
instead of a convolution shape error at the first forward pass.

`vimzoo.mm.channel_table()` is the channel / stride table of every zoo model in docs/mm.md.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from mmengine.registry import MODELS, Registry

from .backbone import VimZooBackbone

__all__ = ['backbone_channels', 'backbone_strides', 'check_backbone_widths', 'install_width_check',
           'channel_table']


@functools.lru_cache(maxsize=256)
def _meta_backbone(model_name: str, frozen_kwargs: tuple) -> VimZooBackbone:
    with torch.device('meta'):
        return VimZooBackbone(model_name, **dict(frozen_kwargs))


def _freeze(kwargs: Dict[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))


def _backbone(model_name: str, kwargs: Dict[str, Any]) -> VimZooBackbone:
    key = _freeze(kwargs)
    try:
        hash(key)
    except TypeError:  # e.g. a dict-valued model kwarg: build without the cache
        with torch.device('meta'):
            return VimZooBackbone(model_name, **kwargs)
    return _meta_backbone(model_name, key)


def backbone_channels(model_name: str, **backbone_kwargs: Any) -> List[int]:
    """Output channels of `VimZooBackbone(model_name, **backbone_kwargs)` = the neck's / head's `in_channels`."""
    return list(_backbone(model_name, backbone_kwargs).out_channels)


def backbone_strides(model_name: str, **backbone_kwargs: Any) -> List[int]:
    """Output strides of `VimZooBackbone(model_name, **backbone_kwargs)` (4, 8, 16, 32 by default)."""
    return list(_backbone(model_name, backbone_kwargs).strides)


# ---------------------------------------------------------------------------------------------------- build check
def _mismatch(where: str, got: Any, want: Any, bb: VimZooBackbone) -> ValueError:
    return ValueError(
        f'{where}={got} does not match the backbone: VimZooBackbone({bb.model_name!r}) outputs channels '
        f'{bb.out_channels} at strides {bb.strides}. Set {where}={want} '
        f'(vimzoo.mm.backbone_channels(model_name, **backbone_kwargs) gives the widths of any backbone).')


def _check_head(where: str, head: nn.Module, bb: VimZooBackbone) -> None:
    """mmseg BaseDecodeHead: `in_index` picks levels; resize_concat stores the summed width."""
    in_index, got = getattr(head, 'in_index', None), getattr(head, 'in_channels', None)
    if in_index is None or got is None:
        return
    chans = bb.out_channels
    try:
        if isinstance(in_index, int):
            want: Any = chans[in_index]
        else:
            want = [chans[i] for i in in_index]
            if getattr(head, 'input_transform', None) == 'resize_concat':
                want = sum(want)
    except IndexError:
        raise ValueError(f'{where.rsplit(".", 1)[0]}.in_index={in_index} selects a level the backbone does not '
                         f'have: VimZooBackbone({bb.model_name!r}) outputs {len(chans)} levels') from None
    if (list(got) if isinstance(got, (list, tuple)) else got) != want:
        raise _mismatch(f'{where}.in_channels', got, want, bb)


def check_backbone_widths(model: nn.Module) -> None:
    """Raise ValueError if `model.neck` (or `model.decode_head` / `auxiliary_head`) disagrees with a VimZooBackbone."""
    bb = getattr(model, 'backbone', None)
    if not isinstance(bb, VimZooBackbone):
        return
    neck = getattr(model, 'neck', None)
    if isinstance(neck, nn.Module):
        first = neck[0] if isinstance(neck, nn.Sequential) and len(neck) else neck
        got = getattr(first, 'in_channels', None)
        if isinstance(got, (list, tuple)) and list(got) != list(bb.out_channels):
            raise _mismatch('model.neck.in_channels', list(got), list(bb.out_channels), bb)
        return  # the heads read the neck's outputs
    for name in ('decode_head', 'auxiliary_head'):
        head = getattr(model, name, None)
        heads = list(head) if isinstance(head, nn.ModuleList) else [head] if isinstance(head, nn.Module) else []
        for i, h in enumerate(heads):
            _check_head(f'model.{name}' + (f'[{i}]' if len(heads) > 1 else ''), h, bb)


def _descendants(registry: Registry):
    for child in registry.children.values():
        yield child
        yield from _descendants(child)


def install_width_check(root: Registry = MODELS) -> None:
    """Wrap the model build function of `root` and of every registry that inherited it (mmdet's / mmseg's MODELS).

    Registries created later copy the root's (wrapped) function themselves. Idempotent.
    """
    original: Callable = root.build_func
    if getattr(original, '_vimzoo_width_check', False):
        return

    @functools.wraps(original)
    def build_and_check(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        obj = original(cfg, *args, **kwargs)
        if isinstance(obj, nn.Module):
            check_backbone_widths(obj)
        return obj

    build_and_check._vimzoo_width_check = True  # type: ignore[attr-defined]
    root.build_func = build_and_check
    for child in _descendants(root):
        if child.build_func is original:
            child.build_func = build_and_check


# ---------------------------------------------------------------------------------------------------- docs table
def channel_table(names: Optional[Sequence[str]] = None) -> str:
    """Markdown table: model, family, default out_channels and strides of `VimZooBackbone(name)`."""
    import vimzoo
    rows = ['| model | family | `out_channels` (= neck / head `in_channels`) | strides |', '|---|---|---|---|']
    for name in names or vimzoo.list_models():
        rows.append(f'| `{name}` | {vimzoo.family_of(name)} | `{backbone_channels(name)}` | '
                    f'{", ".join(map(str, backbone_strides(name)))} |')
    return '\n'.join(rows)

