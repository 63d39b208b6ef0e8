"""`VimZooBackbone`: any zoo (or timm) model as an mmdet / mmseg backbone.

Features come from the model's own `forward_intermediates`, so the adapter needs nothing family specific beyond the
small table in `families.py`. Hierarchical nets return their stage maps (strides 4-32, plus the official per-level
LayerNorm where the family's dense code has one). Isometric token nets (Vim, LBVim, ConViT, DependencyViT) return 4
block outputs turned into a stride 4/8/16/32 pyramid the way Vim-seg / BEiT-seg / ViTDet do: two stride-2
deconvolutions, one deconvolution, identity, 2x2 max-pool (ratios follow the patch stride, e.g. patch 8 shifts them).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from timm.layers import LayerNorm2d
from timm.models import group_parameters

from .families import FAMILY_DEFAULTS, family_defaults

__all__ = ['VimZooBackbone', 'SimplePyramid', 'DEFAULT_OUT_NORM']

# family -> per-level output norm of its official dense wrapper (None: the features are used as they are)
DEFAULT_OUT_NORM = {family: d.get('out_norm') for family, d in FAMILY_DEFAULTS.items()}

_BN = (nn.modules.batchnorm._BatchNorm,)


def _norm2d(kind: str, channels: int, eps: float = 1e-5) -> nn.Module:
    if kind == 'BN':
        return nn.BatchNorm2d(channels, eps=eps)
    if kind == 'SyncBN':
        return nn.SyncBatchNorm(channels, eps=eps)
    if kind in ('LN', 'LN2d'):
        return LayerNorm2d(channels, eps=eps)
    if kind == 'GN':
        return nn.GroupNorm(32 if channels % 32 == 0 else 1, channels, eps=eps)
    raise ValueError(f'unknown norm {kind!r}; use BN, SyncBN, LN or GN')


def _pyramid_op(channels: int, src_stride: int, dst_stride: int, norm: str) -> nn.Module:
    """Resample a stride-`src_stride` map to `dst_stride`: ConvT(2,2) steps (norm + GELU between), identity or
    max-pool."""
    if dst_stride == src_stride:
        return nn.Identity()
    ratio = src_stride / dst_stride if dst_stride < src_stride else dst_stride / src_stride
    steps = round(math.log2(ratio))
    if 2 ** steps != ratio:
        raise ValueError(f'pyramid strides must be power-of-two multiples of the patch stride {src_stride}, '
                         f'got {dst_stride}')
    if dst_stride > src_stride:
        return nn.MaxPool2d(kernel_size=int(ratio), stride=int(ratio))
    layers: List[nn.Module] = []
    for i in range(steps):
        if i:
            layers += [_norm2d(norm, channels), nn.GELU()]
        layers.append(nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class SimplePyramid(nn.Module):
    """Isometric (single-stride) maps -> a multi-stride pyramid, one resampling op per output stride.

    Given 1 map, every op reads it (ViTDet); given one map per stride, op i reads map i (Vim-seg / BEiT-seg fpn1-4).
    """

    def __init__(self, channels: int, src_stride: int, strides: Sequence[int] = (4, 8, 16, 32), norm: str = 'BN'):
        super().__init__()
        self.strides = list(strides)
        self.ops = nn.ModuleList([_pyramid_op(channels, src_stride, s, norm) for s in strides])

    def forward(self, feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if len(feats) == 1:
            feats = list(feats) * len(self.ops)
        if len(feats) != len(self.ops):
            raise ValueError(f'SimplePyramid expects 1 or {len(self.ops)} maps, got {len(feats)}')
        return [op(f) for op, f in zip(self.ops, feats)]


def _probe_input_multiple(create: Any, model_name: str, kwargs: Dict[str, Any]) -> int:
    """Smallest multiple of 32 the input sides must have (timm's HaloNets assert it inside HaloAttn).

    Found by running a copy of the model on the meta device (no memory, no compute) at sizes 3M x 5M.
    """
    kwargs = {k: v for k, v in kwargs.items() if k != 'pretrained_cfg_overlay'}
    with torch.device('meta'):
        probe = create(model_name, pretrained=False, **kwargs)
        for m in (32, 64, 128, 256, 512, 1024):
            try:
                probe.forward_intermediates(torch.empty(1, 3, 3 * m, 5 * m), intermediates_only=True)
                return m
            except (AssertionError, ValueError, RuntimeError):
                continue
    return 1


def _split_pretrained(pretrained: Union[bool, str, None], init_cfg: Any) -> Tuple[Union[bool, str], Any]:
    """Pull a whole-model classification checkpoint out of `pretrained` / `init_cfg=dict(type='Pretrained')`.

    Such checkpoints must go through the family's timm `checkpoint_filter_fn` (official key layouts, pos-embed
    resampling), so they are loaded by timm, not by mmengine. A Pretrained init_cfg with a `prefix` (e.g. the
    'backbone.' of a detector checkpoint) is mmengine's business and stays in init_cfg.
    """
    source: Union[bool, str] = pretrained or False
    cfgs = init_cfg if isinstance(init_cfg, list) else ([init_cfg] if init_cfg else [])
    kept = []
    for cfg in cfgs:
        if cfg.get('type') == 'Pretrained' and not cfg.get('prefix'):
            if source:
                raise ValueError('give the checkpoint once: either pretrained=... or init_cfg=dict(type="Pretrained")')
            source = cfg['checkpoint']
        else:
            kept.append(cfg)
    if isinstance(init_cfg, list):
        return source, kept
    return source, (kept[0] if kept else None)


@MODELS.register_module()
class VimZooBackbone(BaseModule):
    """A zoo model's multi-scale features for mmdet / mmseg (registered in mmengine's root MODELS registry).

    Args:
        model_name: any `timm.create_model` name (zoo or timm), e.g. 'biformer_small', 'vim_tiny_patch16_224'.
        out_indices: indices into the model's `feature_info` (= `forward_intermediates` indices). Default:
            hierarchical nets -> the last feature at each of strides 4/8/16/32; isometric nets -> the last block of
            each quarter of the depth (Vim-seg's [5, 11, 17, 23] for depth 24). One index on an isometric net gives
            ViTDet's simple pyramid from the last map.
        pretrained: True (the model's default weights), a checkpoint path (.pth / .safetensors, official or timm
            layout; loaded by timm with weights_only=True through the family's checkpoint filter) or False.
        frozen_stages: -1 trains everything; 0 freezes the stem (patch embedding, position embeddings); k >= 1 also
            freezes every trunk layer up to the k-th output level (mmdet ResNet semantics for stage nets).
        norm_eval: keep BatchNorm layers in eval mode while training (frozen statistics).
        out_norm: 'auto' (the family's official dense wrapper), None, or 'LN' / 'BN' / 'GN': a fresh norm on each
            trunk output.
        pyramid: 'auto' (isometric nets only), True or False.
        pyramid_strides: output strides of the pyramid.
        pyramid_norm: norm between the two deconvolutions of the stride-4 branch ('BN' as Vim-seg; 'SyncBN', 'LN').
        grad_checkpointing: enable the model's activation checkpointing.
        init_cfg: mmengine init config. dict(type='Pretrained', checkpoint=path) without `prefix` is treated like
            `pretrained=path` (family filter); with `prefix` mmengine loads it as usual.
        **model_kwargs: passed to timm.create_model (drop_path_rate, img_size, n_win, ...).
    """

    def __init__(self, model_name: str, out_indices: Optional[Sequence[int]] = None,
                 pretrained: Union[bool, str, None] = False, frozen_stages: int = -1, norm_eval: bool = False,
                 out_norm: Optional[str] = 'auto', pyramid: Union[str, bool] = 'auto',
                 pyramid_strides: Sequence[int] = (4, 8, 16, 32), pyramid_norm: str = 'BN',
                 grad_checkpointing: bool = False, init_cfg: Any = None, **model_kwargs: Any) -> None:
        source, init_cfg = _split_pretrained(pretrained, init_cfg)
        super().__init__(init_cfg=init_cfg)
        import vimzoo  # noqa: F401  (registers the zoo with timm)
        defaults = family_defaults(model_name)
        self.model_name = model_name
        self.family = defaults.get('family')
        kwargs = dict(defaults.get('model_kwargs', {}), **model_kwargs)
        if kwargs.pop('features_only', False):
            raise ValueError('VimZooBackbone builds the full model and uses forward_intermediates; '
                             'do not pass features_only')
        if isinstance(source, str):
            kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, file=source)
        create = defaults.get('create') or timm.create_model
        model = create(model_name, pretrained=bool(source), **kwargs)
        if not hasattr(model, 'forward_intermediates'):
            raise TypeError(f'{model_name} has no forward_intermediates(); it cannot be used as a dense backbone')
        self.pretrained = source
        info = list(model.feature_info)
        reductions = [int(d['reduction']) for d in info]
        isometric = len(set(reductions)) == 1 and len(info) > 1
        if out_indices is None:
            if isometric:
                n = len(info)
                out_indices = sorted({max(n * (i + 1) // 4 - 1, 0) for i in range(4)})
            else:
                out_indices = [max(i for i, r in enumerate(reductions) if r == s) for s in (4, 8, 16, 32)
                               if s in reductions]
        self.out_indices = [i % len(info) for i in out_indices]
        self.trunk_channels = [int(info[i]['num_chs']) for i in self.out_indices]
        self.trunk_strides = [reductions[i] for i in self.out_indices]
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval
        self._feature_modules = [info[i]['module'] for i in self.out_indices]

        # drop what the features never use (head, final norm, later blocks): no unused parameters in DDP / grads.
        model.prune_intermediate_layers(self.out_indices, prune_norm=True, prune_head=True)
        if grad_checkpointing:
            model.set_grad_checkpointing(True)
        model.is_init = True  # mmengine must not call the timm model's own init_weights() after loading weights
        self.model = model
        self.input_multiple = int(getattr(model, 'input_multiple', 0) or 0)
        if not self.input_multiple:
            self.input_multiple = _probe_input_multiple(create, model_name, kwargs) if defaults.get('probe_multiple') \
                else 1
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        self.min_input_size = tuple(cfg['min_input_size'][-2:]) if cfg.get('min_input_size') else (1, 1)

        if out_norm == 'auto':
            out_norm, eps = defaults.get('out_norm'), defaults.get('out_norm_eps', 1e-5)
        else:
            eps = 1e-6 if self.family == 'biformer' else 1e-5
        self.out_norm_type = out_norm
        self.out_norms = nn.ModuleList([_norm2d(out_norm, c, eps) for c in self.trunk_channels]) if out_norm else None

        use_pyramid = isometric if pyramid == 'auto' else bool(pyramid)
        if use_pyramid:
            if len(set(self.trunk_strides)) != 1 or len(self.out_indices) not in (1, len(pyramid_strides)):
                raise ValueError(f'the pyramid needs 1 or {len(pyramid_strides)} same-stride outputs, got strides '
                                 f'{self.trunk_strides} for out_indices {self.out_indices}')
            src, chans = self.trunk_strides[0], self.trunk_channels[0]
            self.pyramid = SimplePyramid(chans, src, pyramid_strides, pyramid_norm)
            self.out_channels = [chans] * len(pyramid_strides)
            self.strides = list(pyramid_strides)
        else:
            self.pyramid = None
            self.out_channels = list(self.trunk_channels)
            self.strides = list(self.trunk_strides)
        self._freeze_stages()

    # ------------------------------------------------------------------------------------------------ forward
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad bottom/right to the model's input multiple (HaloNet blocks) and minimum size."""
        h, w = x.shape[-2:]
        m = self.input_multiple
        th = max(-(-h // m) * m, self.min_input_size[0])
        tw = max(-(-w // m) * m, self.min_input_size[1])
        if (th, tw) != (h, w):
            x = F.pad(x, (0, tw - w, 0, th - h))
        return x

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        h, w = x.shape[-2:]
        feats = self.model.forward_intermediates(
            self._pad(x), indices=self.out_indices, stop_early=True, intermediates_only=True)
        outs = []
        for i, (f, s) in enumerate(zip(feats, self.trunk_strides)):
            f = f[..., :-(-h // s), :-(-w // s)]  # drop what only the padding produced
            if self.out_norms is not None:
                f = self.out_norms[i](f)
            outs.append(f.contiguous())
        if self.pyramid is not None:
            outs = self.pyramid(outs)
        return tuple(outs)

    # ------------------------------------------------------------------------------------------------ freezing
    def layer_map(self) -> Dict[str, int]:
        """Trunk parameter name -> depth ordinal (timm group_matcher, fine grouping): 0 = stem, then layers."""
        return group_parameters(self.model, self.model.group_matcher(coarse=False), reverse=True)

    def frozen_parameter_names(self) -> List[str]:
        if self.frozen_stages < 0:
            return []
        layer_map = self.layer_map()
        if self.frozen_stages == 0:
            limit = 0
        else:
            k = min(self.frozen_stages, len(self._feature_modules)) - 1
            prefix = self._feature_modules[k] + '.'
            ids = [lid for name, lid in layer_map.items() if name.startswith(prefix)]
            if not ids:
                raise ValueError(f'cannot locate the parameters of {self._feature_modules[k]!r} to freeze')
            limit = max(ids)
        return [name for name, lid in layer_map.items() if lid <= limit]

    def _freeze_stages(self) -> None:
        names = set(self.frozen_parameter_names())
        if not names:
            return
        for name, p in self.model.named_parameters():
            if name in names:
                p.requires_grad_(False)
        # modules whose parameters are all frozen behave as at inference (BN statistics, dropout, drop-path)
        for mod in self.model.modules():
            params = list(mod.parameters())
            if params and not any(p.requires_grad for p in params):
                mod.eval()

    def train(self, mode: bool = True) -> 'VimZooBackbone':
        super().train(mode)
        if mode:
            self._freeze_stages()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, _BN):
                        m.eval()
        return self
