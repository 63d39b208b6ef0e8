"""VAN: Visual Attention Network (Guo et al., arXiv 2202.09741, CVMJ 2023).

A hierarchical conv net whose token mixer is Large Kernel Attention (LKA): a 5x5 depth-wise conv, a 7x7 depth-wise conv
with dilation 3 and a 1x1 conv (~21x21 receptive field), whose output *multiplies* the input (no sigmoid).

Written for vimzoo from the paper and the facts of the official code (Visual-Attention-Network/VAN-Classification,
Apache-2.0); module names follow the official state_dict (`patch_embed{i}`, `block{i}.{j}`, `norm{i}`, 1-based) so
the released checkpoints load through `checkpoint_filter_fn` without renaming. Numerically equivalent to the official
forward (see docs/parity.md, "VAN").

Differences in form, not in numbers:
* the per-stage LayerNorm is a channels-first `StageNorm` (same `weight`/`bias` keys, same math as the official
  flatten -> LayerNorm -> reshape), so every stage stays NCHW and dense-task adapters get maps directly;
* `forward_features` returns the final NCHW map (official: its token mean); `forward_head` does the mean pooling.
"""
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import DropPath, get_device_dtype, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs
from timm.models._features import feature_take_indices

from vimzoo.models._helpers import build_zoo_model, load_checkpoint, match_head, released_weights, unwrap_checkpoint
from vimzoo.models._input import check_image_input
from vimzoo.models._layers import check_pooled_head, create_pool2d
from vimzoo.zoo import register_zoo_model

__all__ = ['VAN', 'LKA', 'checkpoint_filter_fn']


class LKA(nn.Module):
    """Large Kernel Attention: dw5x5 -> dw7x7 (dilation 3) -> 1x1, then an element-wise product with the input."""

    def __init__(self, dim: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, **dd)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, stride=1, padding=9, groups=dim, dilation=3, **dd)
        self.conv1 = nn.Conv2d(dim, dim, 1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv1(self.conv_spatial(self.conv0(x)))


class SpatialAttention(nn.Module):
    """1x1 -> GELU -> LKA -> 1x1 with its own residual on the (normed) input, as in the official `Attention`."""

    def __init__(self, dim: int, act_layer: type = nn.GELU, device=None, dtype=None) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.proj_1 = nn.Conv2d(dim, dim, 1, **dd)
        self.activation = act_layer()
        self.spatial_gating_unit = LKA(dim, **dd)
        self.proj_2 = nn.Conv2d(dim, dim, 1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x)))) + x


class DWConv(nn.Module):
    """3x3 depth-wise conv; a wrapper only so the key is `mlp.dwconv.dwconv` like the official checkpoints."""

    def __init__(self, dim: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dwconv(x)


class ConvMlp(nn.Module):
    """1x1 conv -> dw3x3 -> GELU -> 1x1 conv (the dw conv gives the MLP positional information)."""

    def __init__(self, dim: int, hidden_dim: int, act_layer: type = nn.GELU, drop: float = 0.,
                 device=None, dtype=None) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1, **dd)
        self.dwconv = DWConv(hidden_dim, **dd)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        return self.drop(self.fc2(x))


class VanBlock(nn.Module):
    """BN -> spatial attention and BN -> conv MLP, each with a per-channel layer scale and drop path."""

    def __init__(
            self,
            dim: int,
            mlp_ratio: float = 4.,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            ls_init_value: float = 1e-2,
            act_layer: type = nn.GELU,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm1 = nn.BatchNorm2d(dim, **dd)
        self.attn = SpatialAttention(dim, act_layer=act_layer, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.BatchNorm2d(dim, **dd)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.layer_scale_1 = nn.Parameter(ls_init_value * torch.ones(dim, **dd))
        self.layer_scale_2 = nn.Parameter(ls_init_value * torch.ones(dim, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.drop_path, nn.Identity):  # residual + scale in one pass over memory
            x = torch.addcmul(x, self.layer_scale_1[:, None, None], self.attn(self.norm1(x)))
            return torch.addcmul(x, self.layer_scale_2[:, None, None], self.mlp(self.norm2(x)))
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.attn(self.norm1(x)))
        x = x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x)))
        return x


class OverlapPatchEmbed(nn.Module):
    """Strided conv (7x7/s4 for the stem, 3x3/s2 between stages) + BatchNorm; padding k//2 so any size works."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 7, stride: int = 4,
                 device=None, dtype=None) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=stride, padding=patch_size // 2, **dd)
        self.norm = nn.BatchNorm2d(embed_dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class VanStageBlocks(nn.Sequential):
    """A stage's blocks (`block{i}`), with gradient checkpointing inside, so the stage loop stays TorchScript-able."""

    def __init__(self, *blocks: nn.Module) -> None:
        super().__init__(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self, x)
        for block in self:
            x = block(x)
        return x


class StageNorm(nn.LayerNorm):
    """LayerNorm over channels of an NCHW map, returned contiguous.

    Same keys and math as the official flatten -> LayerNorm -> reshape. timm's LayerNorm2d would hand the next stage a
    permuted (channels_last-strided) tensor; convs then propagate that layout and CPU 1x1 convs get ~15% slower.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2).contiguous()


class VAN(nn.Module):
    """Visual Attention Network.

    Stage i (1-based, official attribute names): `patch_embed{i}` -> `block{i}` (Sequential of VanBlock) -> `norm{i}`
    (channels-first LayerNorm, eps 1e-6). Outputs of `norm{i}` are the stage features (strides 4, 8, 16, 32).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Sequence[int] = (64, 128, 256, 512),
            depths: Sequence[int] = (3, 4, 6, 3),
            mlp_ratios: Sequence[float] = (8, 8, 4, 4),
            ls_init_value: float = 1e-2,
            norm_eps: float = 1e-6,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            act_layer: type = nn.GELU,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if not (len(embed_dims) == len(depths) == len(mlp_ratios) == 4):
            raise ValueError(f'VAN has 4 stages: embed_dims, depths and mlp_ratios need 4 entries each, got '
                             f'{len(embed_dims)}, {len(depths)}, {len(mlp_ratios)}.')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.embed_dims = tuple(embed_dims)
        self.num_stages = len(depths)
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        total = sum(depths)
        # python-side drop-path schedule (no .item(), so the model builds on the meta device)
        dpr = [drop_path_rate * i / (total - 1) if total > 1 else 0. for i in range(total)]
        self.feature_info: List[Dict[str, Any]] = []
        prev_dim, cur, reduction = in_chans, 0, 1
        for i in range(self.num_stages):
            patch, stride = (7, 4) if i == 0 else (3, 2)
            reduction *= stride
            setattr(self, f'patch_embed{i + 1}', OverlapPatchEmbed(prev_dim, embed_dims[i], patch, stride, **dd))
            setattr(self, f'block{i + 1}', VanStageBlocks(*[
                VanBlock(embed_dims[i], mlp_ratios[i], proj_drop_rate, dpr[cur + j], ls_init_value, act_layer, **dd)
                for j in range(depths[i])]))
            setattr(self, f'norm{i + 1}', StageNorm(embed_dims[i], eps=norm_eps, **dd))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=reduction, module=f'norm{i + 1}'))
            prev_dim, cur = embed_dims[i], cur + depths[i]

        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.global_pool = create_pool2d(global_pool)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # same scheme as the official code: He-normal on fan_out for convs, trunc-normal(.02) for linears
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0., math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def _stage(self, i: int) -> Tuple[nn.Module, nn.Module, nn.Module]:
        return getattr(self, f'patch_embed{i + 1}'), getattr(self, f'block{i + 1}'), getattr(self, f'norm{i + 1}')

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^patch_embed1\.',
            blocks=r'^(?:patch_embed|block|norm)(\d+)' if coarse else [
                (r'^block(\d+)\.(\d+)', None),
                (r'^patch_embed(\d+)', (0,)),  # stays before block{i}.0 (its index tuple sorts first)
                (r'^norm(\d+)', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for module in self.modules():
            if isinstance(module, VanStageBlocks):
                module.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New classifier; global_pool='' (with num_classes=0) returns the unpooled NCHW map, as timm's CNNs do."""
        self.num_classes = num_classes
        pool_type = self.global_pool.pool_type if global_pool is None else global_pool
        self.global_pool = create_pool2d(pool_type)
        dd = get_device_dtype(self)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.global_pool.train(self.training)
        self.head.train(self.training)

    @torch.jit.ignore
    def _run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        patch_embed, blocks, norm = self._stage(i)
        return norm(blocks(patch_embed(x)))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs after each stage's LayerNorm (what the official seg backbone returns).

        `norm` is accepted for API compatibility; the stage norms are always applied since they are part of the net.
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"VAN intermediates support output_fmt 'NCHW' or 'NHWC', got {output_fmt!r}.")
        x = check_image_input(x, self.in_chans, (32, 32), 'VAN')
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        intermediates = []
        last = max_index if (stop_early or intermediates_only) else self.num_stages - 1
        for i in range(last + 1):
            x = self._run_stage(i, x)
            if i in take_indices:
                intermediates.append(x if output_fmt == 'NCHW' else x.permute(0, 2, 3, 1))
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last one needed (and the head), e.g. for a features-only backbone."""
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        for i in range(max_index + 1, self.num_stages):
            for name in (f'patch_embed{i + 1}', f'block{i + 1}', f'norm{i + 1}'):
                setattr(self, name, nn.Identity())
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_input(x, self.in_chans, (32, 32), 'VAN')
        # the four stages by their official names (TorchScript cannot index modules by a computed name)
        x = self.norm1(self.block1(self.patch_embed1(x)))
        x = self.norm2(self.block2(self.patch_embed2(x)))
        x = self.norm3(self.block3(self.patch_embed3(x)))
        return self.norm4(self.block4(self.patch_embed4(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        check_pooled_head(self.global_pool.pool_type, not isinstance(self.head, nn.Identity))
        x = self.global_pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def load_pretrained(self, checkpoint_path: str, use_ema: bool = False, strict: bool = True) -> None:
        """Load an official VAN, mmpretrain or vimzoo checkpoint file: the main weights ('state_dict', what the
        official evaluation loads) unless `use_ema`. timm calls this for `pretrained=True` URL weights and files."""
        load_checkpoint(self, checkpoint_path, checkpoint_filter_fn, use_ema=use_ema, strict=strict)


_MMPRETRAIN_RENAMES = (
    ('.projection.', '.proj.'),
    ('.spatial_gating_unit.DW_conv.', '.spatial_gating_unit.conv0.'),
    ('.spatial_gating_unit.DW_D_conv.', '.spatial_gating_unit.conv_spatial.'),
    ('.mlp.dwconv.weight', '.mlp.dwconv.dwconv.weight'),
    ('.mlp.dwconv.bias', '.mlp.dwconv.dwconv.bias'),
)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: VAN, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """Official VAN checkpoints -> vimzoo VAN.

    Accepts the official timm-trainer files (weights under 'state_dict', what the official evaluation loads; the EMA
    copy 'state_dict_ema' with `use_ema`), bare state dicts, and mmpretrain conversions ('backbone.'/'head.fc.'
    prefixes, `blocks{i}`, `DW_conv`...). Stage widths are checked against the model so a width mismatch (see the
    VAN-B6 note in docs/van.md) fails with a clear message.
    """
    out: Dict[str, torch.Tensor] = {}
    for k, v in unwrap_checkpoint(state_dict, use_ema=use_ema, main_keys=('state_dict', 'model')).items():
        if k.startswith('backbone.'):  # mmpretrain layout
            k = k[len('backbone.'):]
            for old, new in _MMPRETRAIN_RENAMES:
                k = k.replace(old, new)
            if k.startswith('blocks'):
                k = 'block' + k[len('blocks'):]
        elif k.startswith('head.fc.'):
            k = 'head.' + k[len('head.fc.'):]
        out[k] = v

    model_sd = model.state_dict()
    for i in range(model.num_stages):
        key = f'patch_embed{i + 1}.proj.weight'
        if key in out and key in model_sd and out[key].shape[0] != model_sd[key].shape[0]:
            raise ValueError(
                f'Checkpoint stage {i + 1} has width {out[key].shape[0]} but the model has {model_sd[key].shape[0]} '
                f'(model embed_dims={list(model.embed_dims)}). Build the model with matching embed_dims.')
    return match_head(out, model, family='VAN')


def _create_van(variant: str, pretrained: bool = False, **kwargs: Any) -> VAN:
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_zoo_model(
        VAN,
        variant,
        pretrained,
        filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    # the official models were trained/evaluated through timm's resolve_data_config with the ViT `_cfg`:
    # mean = std = 0.5, crop 0.9, bicubic
    return {
        'url': '',
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'min_input_size': (3, 32, 32),
        'crop_pct': 0.9,
        'interpolation': 'bicubic',
        'mean': IMAGENET_INCEPTION_MEAN,
        'std': IMAGENET_INCEPTION_STD,
        'first_conv': 'patch_embed1.proj',
        'classifier': 'head',
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2202.09741',
        'origin_url': 'https://github.com/Visual-Attention-Network/VAN-Classification',
        **kwargs,
    }


_HF = 'https://huggingface.co/Visual-Attention-Network/{}/resolve/main/{}'
_TSINGHUA = 'https://cloud.tsinghua.edu.cn/d/0100f0cea37d41ba8d08/files/?p=%2F{}&dl=1'


def _hf_cfg(repo: str, filename: str, **kwargs: Any) -> Dict[str, Any]:
    # the original files, re-hosted by the authors on the Hub (the official code's model_urls point there); they carry
    # the training `args` (argparse.Namespace), which timm's and vimzoo's weights_only loaders allow
    url = _HF.format(repo, filename)
    return _cfg(**released_weights(url, filename, hf_hub_id=f'Visual-Attention-Network/{repo}'), **kwargs)


def _tsinghua_cfg(filename: str, **kwargs: Any) -> Dict[str, Any]:
    # a file in the authors' Tsinghua Cloud folder: the URL path is the folder ('.../files/'), so the cache needs the
    # file name given explicitly
    return _cfg(**released_weights(_TSINGHUA.format(filename), filename), **kwargs)


default_cfgs = generate_default_cfgs({
    'van_b0.in1k': _hf_cfg('VAN-Tiny-original', 'van_tiny_754.pth.tar'),
    'van_b1.in1k': _hf_cfg('VAN-Small-original', 'van_small_811.pth.tar'),
    'van_b2.in1k': _hf_cfg('VAN-Base-original', 'van_base_828.pth.tar'),
    'van_b3.in1k': _hf_cfg('VAN-Large-original', 'van_large_839.pth.tar'),
    # released in the authors' Tsinghua Cloud folder only (README); file layout not verified offline
    'van_b4.in1k': _tsinghua_cfg('van_b4.pth'),
    'van_b4.in22k': _tsinghua_cfg('van_b4_22k.pth', num_classes=21841),
    'van_b5.in22k': _tsinghua_cfg('van_b5_22k.pth', num_classes=21841),
    'van_b6.in22k': _tsinghua_cfg('van_b6_22k.pth', num_classes=21841),
    # no ImageNet-1k weights were released for B5/B6 (VAN-Classification#28); '*' makes these 1000-class,
    # weightless cfgs the default so `create_model('van_b5')` is the 1k classifier
    'van_b5.untrained*': _cfg(),
    'van_b6.untrained*': _cfg(),
    'test_van.untrained': _cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
})


@register_zoo_model('van')
def van_b0(pretrained: bool = False, **kwargs: Any) -> VAN:
    model_args = dict(embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), mlp_ratios=(8, 8, 4, 4))
    return _create_van('van_b0', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('van')
def van_b1(pretrained: bool = False, **kwargs: Any) -> VAN:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 4, 2), mlp_ratios=(8, 8, 4, 4))
    return _create_van('van_b1', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('van')
def van_b2(pretrained: bool = False, **kwargs: Any) -> VAN:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(3, 3, 12, 3), mlp_ratios=(8, 8, 4, 4))
    return _create_van('van_b2', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('van')
def van_b3(pretrained: bool = False, **kwargs: Any) -> VAN:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(3, 5, 27, 3), mlp_ratios=(8, 8, 4, 4))
    return _create_van('van_b3', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('van')
def van_b4(pretrained: bool = False, **kwargs: Any) -> VAN:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3), mlp_ratios=(8, 8, 4, 4))
    return _create_van('van_b4', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('van')
def van_b5(pretrained: bool = False, **kwargs: Any) -> VAN:
    model_args = dict(embed_dims=(96, 192, 480, 768), depths=(3, 3, 24, 3), mlp_ratios=(8, 8, 4, 4))
    return _create_van('van_b5', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('van')
def van_b6(pretrained: bool = False, **kwargs: Any) -> VAN:
    # stage-3 width 384 as in the official code and seg configs; mmpretrain's 283.9 M figure implies 480 (docs/van.md)
    model_args = dict(embed_dims=(96, 192, 384, 768), depths=(6, 6, 90, 6), mlp_ratios=(8, 8, 4, 4))
    return _create_van('van_b6', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('van')
def test_van(pretrained: bool = False, **kwargs: Any) -> VAN:
    model_args = dict(embed_dims=(16, 24, 32, 48), depths=(1, 1, 2, 1), mlp_ratios=(4, 4, 2, 2))
    return _create_van('test_van', pretrained=pretrained, **dict(model_args, **kwargs))
