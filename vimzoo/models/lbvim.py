"""LBVim (Locally Bi-directional Vision Mamba) as timm models, key-compatible with cvlab-stonybrook/LBMamba.

Paper: "LBMamba: Locally Bi-directional Mamba" (Zhang et al., TMLR 2025, https://arxiv.org/abs/2506.15976).
Official code: https://github.com/cvlab-stonybrook/LBMamba (`classification/models_mamba_bi.py`, `BiVisionMamba`).

LBVim is Vim's skeleton (blocks, fp32 residual, fused add + RMSNorm) with three differences:
* one single-direction Mamba mixer per layer (no `_b` parameters) whose selective scan is LBMamba's *locally
  bi-directional* scan: every state also receives a backward scan inside windows of W tokens
  (`vimzoo.ops.selective_scan(local_window=W)`; W = `lb_window(L)`, the value the official CUDA kernel's tiling
  gives for a sequence of L tokens: 4 up to 128 tokens, 8 up to 256 (224² input), else 16);
* the official model flips `hidden` and `residual` after every layer, so odd layers scan right-to-left. Here odd
  layers run the whole mixer mirrored (`reverse=True`: anti-causal conv, reverse scan with end-aligned windows),
  which is exactly flip -> mixer -> flip, so tensors are never flipped and every output is in the original token
  order (the official model returns reversed tokens only for an odd depth; all released variants have depth 24);
* no class token: `pos_embed` is (1, M, C) and the head averages all tokens, or, for the 528-wide variant, uses an
  attention pool with a learned latent query (`head = Sequential(pool, Linear)`, official keys `head.0.*`, `head.1.*`).
No LBVim weights are published ("downloaded [here]()" is an empty link upstream), so the cfgs carry no URL.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_tf_
from timm.models import generate_default_cfgs

from vimzoo.zoo import register_zoo_model

from ._helpers import build_zoo_model
from .vim import VisionMamba, checkpoint_filter_fn

__all__ = ['LBVim', 'LatentAttentionPool']


class LatentAttentionPool(nn.Module):
    """Attention pooling with one learned latent query, no query/output projection and no MLP, then LayerNorm.

    The official `AttentionPoolLatentCus(map_q=False, use_proj=False, use_mlp=False, post_norm=True)`; parameter
    names `latent`, `kv`, `post_norm` match it. timm's `AttentionPoolLatent` always has q / proj / mlp weights.
    """

    def __init__(self, dim: int, num_heads: int = 6):
        super().__init__()
        assert dim % num_heads == 0, f'dim {dim} must be divisible by num_heads {num_heads}'
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.kv = nn.Linear(dim, 2 * dim, bias=True)
        self.post_norm = nn.LayerNorm(dim)
        trunc_normal_tf_(self.latent, std=dim ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q = self.latent.expand(B, -1, -1).reshape(B, 1, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q.to(k.dtype), k, v)  # (B, heads, 1, head_dim)
        return self.post_norm(x.transpose(1, 2).reshape(B, C))


class LBVim(VisionMamba):
    """LBVim: `VisionMamba` with locally bi-directional scans, per-layer direction alternation and no class token.

    global_pool: 'avg' (mean of all tokens, the official `final_pool_type='mean'`), 'map' (latent attention pool,
    the official `head_type='att_qkv_onlyatt_pnorm_nomapq'`) or ''.
    """

    def __init__(self, global_pool: str = 'avg', attn_pool_heads: int = 6, **kwargs: Any):
        assert global_pool in ('avg', 'map', '')
        self.attn_pool_heads = attn_pool_heads
        self._lb_pool = global_pool  # read by _make_head during VisionMamba.__init__
        super().__init__(
            global_pool='avg' if global_pool == 'map' else global_pool, class_token=False, bidirectional=False,
            local_bidir=True, alternate_direction=True, **kwargs)
        self.global_pool = global_pool

    def _make_head(self, num_classes: int) -> nn.Module:
        linear = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if getattr(self, '_lb_pool', None) == 'map':
            return nn.Sequential(LatentAttentionPool(self.embed_dim, self.attn_pool_heads), linear)
        return linear

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            assert global_pool in ('avg', 'map', '')
            if global_pool == 'map' and self.global_pool != 'map':
                raise ValueError('the attention pool is part of the architecture; create the model with '
                                 'global_pool="map" instead of switching to it.')
            self.global_pool = self._lb_pool = global_pool
        self.num_classes = num_classes
        if self.global_pool == 'map':  # keep the (trained) attention pool, replace the classifier only
            self.head[1] = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        else:
            self.head = self._make_head(num_classes)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head[1] if self.global_pool == 'map' else self.head

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        names = super().no_weight_decay()
        if self.global_pool == 'map':
            names.add('head.0.latent')
        return names

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'map':
            x = self.head[0](x)
            return x if pre_logits else self.head[1](x)
        return super().forward_head(x, pre_logits)


def _create_lbvim(variant: str, pretrained: bool = False, **kwargs: Any) -> LBVim:
    out_indices = kwargs.pop('out_indices', 3)
    return build_zoo_model(
        LBVim, variant, pretrained,
        filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'paper_ids': 'arXiv:2506.15976', 'paper_name': 'LBMamba: Locally Bi-directional Mamba',
        'origin_url': 'https://github.com/cvlab-stonybrook/LBMamba',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'lbvim_tiny_patch16_224.untrained': _cfg(),
    'lbvim_300_patch16_224.untrained': _cfg(),
    'lbvim_small_patch16_224.untrained': _cfg(),
    'lbvim_528_patch16_224.untrained': _cfg(classifier='head.1'),
    'test_lbvim.untrained': _cfg(input_size=(3, 64, 64), crop_pct=1.0),
})


@register_zoo_model('lbvim')
def lbvim_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> LBVim:
    """LBVim-T (official `lbvim_tiny_patch16_224`)."""
    model_args = dict(patch_size=16, embed_dim=192, depth=24)
    return _create_lbvim('lbvim_tiny_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('lbvim')
def lbvim_300_patch16_224(pretrained: bool = False, **kwargs: Any) -> LBVim:
    """LBVim-300 (width 300)."""
    model_args = dict(patch_size=16, embed_dim=300, depth=24)
    return _create_lbvim('lbvim_300_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('lbvim')
def lbvim_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> LBVim:
    """LBVim-S (width 384)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=24)
    return _create_lbvim('lbvim_small_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('lbvim')
def lbvim_528_patch16_224(pretrained: bool = False, **kwargs: Any) -> LBVim:
    """LBVim-528 with the latent attention-pool head (official `lbvim_528_patch16_224_atthead`, 6 heads)."""
    model_args = dict(patch_size=16, embed_dim=528, depth=24, global_pool='map', attn_pool_heads=6)
    return _create_lbvim('lbvim_528_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('lbvim')
def test_lbvim(pretrained: bool = False, **kwargs: Any) -> LBVim:
    """Tiny LBVim for tests: 4 blocks (two of each direction), dim 32, 64x64 input (16 tokens, window 4)."""
    model_args = dict(img_size=64, patch_size=16, embed_dim=32, depth=4, d_state=8)
    return _create_lbvim('test_lbvim', pretrained=pretrained, **dict(model_args, **kwargs))
