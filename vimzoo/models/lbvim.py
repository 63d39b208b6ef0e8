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
  attention pool with a learned latent query (`attn_pool`, `global_pool='map'`; the official `head.0.*` / `head.1.*`
  keys of `head = Sequential(pool, Linear)` are renamed by the checkpoint filter).
All of this is configuration of `VisionMamba` (`vim.py`): this file holds only the LBVim cfgs and entrypoints.
No LBVim weights are published ("downloaded [here]()" is an empty link upstream), so the cfgs carry no URL.
"""
from typing import Any, Dict

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs

from vimzoo.zoo import register_zoo_model

from .vim import LatentAttentionPool, VisionMamba, _create_vim

__all__ = ['LatentAttentionPool']  # re-exported: LBVim-528's pool lives with VisionMamba

# What makes a VisionMamba an LBVim: no class token (mean or attention pooling), one Mamba direction per layer with
# LBMamba's local backward scan (window W(L) of the official kernel), odd layers scanning right-to-left.
_LBVIM = dict(class_token=False, global_pool='avg', bidirectional=False, local_window='auto',
              alternate_direction=True)


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
    'lbvim_528_patch16_224.untrained': _cfg(),
    'test_lbvim.untrained': _cfg(input_size=(3, 64, 64), crop_pct=1.0),
})


@register_zoo_model('lbvim')
def lbvim_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """LBVim-T (official `lbvim_tiny_patch16_224`)."""
    model_args = dict(_LBVIM, patch_size=16, embed_dim=192, depth=24)
    return _create_vim('lbvim_tiny_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('lbvim')
def lbvim_300_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """LBVim-300 (width 300)."""
    model_args = dict(_LBVIM, patch_size=16, embed_dim=300, depth=24)
    return _create_vim('lbvim_300_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('lbvim')
def lbvim_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """LBVim-S (width 384)."""
    model_args = dict(_LBVIM, patch_size=16, embed_dim=384, depth=24)
    return _create_vim('lbvim_small_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('lbvim')
def lbvim_528_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """LBVim-528 with the latent attention-pool head (official `lbvim_528_patch16_224_atthead`, 6 heads)."""
    model_args = dict(_LBVIM, patch_size=16, embed_dim=528, depth=24, global_pool='map', attn_pool_heads=6)
    return _create_vim('lbvim_528_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('lbvim')
def test_lbvim(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Tiny LBVim for tests: 4 blocks (two of each direction), dim 32, 64x64 input (16 tokens, window 4)."""
    model_args = dict(_LBVIM, img_size=64, patch_size=16, embed_dim=32, depth=4, d_state=8)
    return _create_vim('test_lbvim', pretrained=pretrained, **dict(model_args, **kwargs))
