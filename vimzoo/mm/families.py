"""Per-family defaults for the dense-prediction backbone, taken from each family's official mmdet/mmseg code.

Only facts that change the *network* live here (per-level output norms, constructor flags a dense input needs);
training hyper-parameters live in `configs/`. A family that is not listed, or any other timm model, gets the
generic behaviour: hierarchical nets return their stage maps as they are, isometric nets get a pyramid.
"""
from __future__ import annotations

from typing import Any, Dict

import torch.nn as nn

__all__ = ['FAMILY_DEFAULTS', 'family_defaults']


def _create_convit(model_name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """timm's convit_tiny/small/base are plain `ConVit`s; the zoo's `ZooConVit` (same weights and keys) adds
    `dynamic_img_size`, which padded detection inputs need. test_convit is a ZooConVit already."""
    import timm
    from vimzoo.models.convit import CONVIT_ARGS, create_zoo_convit
    if model_name.split('.')[0] in CONVIT_ARGS:
        return create_zoo_convit(model_name, pretrained=pretrained, **kwargs)
    return timm.create_model(model_name, pretrained=pretrained, **kwargs)

FAMILY_DEFAULTS: Dict[str, Dict[str, Any]] = {
    # hustvl/Vim seg/backbone/vim.py (VisionMambaSeg): 4 block outputs at out_indices [5, 11, 17, 23] -> fpn1..4
    # (ConvT-BN-GELU-ConvT / ConvT / Identity / MaxPool); no per-level norm.
    'vim': dict(out_norm=None),
    # LBMamba segmentation/model.py (Backbone_BiVisionMamba): per-output LayerNorm `outnorm_i`.
    'lbvim': dict(out_norm='LN', out_norm_eps=1e-5),
    # BiFormer object_detection/semantic_segmentation models_mm/biformer_mm.py: `extra_norms` = LayerNorm2d(eps=1e-6)
    # on each of the 4 stage outputs (the next stage still gets the un-normed map).
    'biformer': dict(out_norm='LN', out_norm_eps=1e-6),
    # dingmyu/davit mmdet|mmseg backbones/davit.py: `norm{i}` = nn.LayerNorm (eps 1e-5) on every stage output.
    'davit': dict(out_norm='LN', out_norm_eps=1e-5),
    # VAN-Segmentation van.py: outputs are taken after the per-stage LayerNorm, which is part of the net already.
    'van': dict(out_norm=None),
    # No official dense code (ConViT, HaloNet, DependencyViT): plain features; ConViT needs its opt-in
    # dynamic_img_size so that any padded H x W works (pos_embed / GPSA positions resampled).
    'convit': dict(out_norm=None, model_kwargs=dict(dynamic_img_size=True), create=_create_convit),
    # timm's HaloNets (halonet26t, halonet50ts, halonet_h1) need input sides divisible by 32 x block size; the
    # zoo's ZooByobNet says so in `input_multiple`, timm's models are probed once on the meta device.
    'halonet': dict(out_norm=None, probe_multiple=True),
    'dependencyvit': dict(out_norm=None),
    # Hydra: no official dense code; plain features. Detection / segmentation inputs are not 224 x 224, so the
    # backbone is built with timm ViT's dynamic_img_size (position embedding resampled per input).
    'hydra': dict(out_norm=None, model_kwargs=dict(dynamic_img_size=True)),
}


def family_defaults(model_name: str) -> Dict[str, Any]:
    """Defaults for a zoo model name; {} for models outside the zoo."""
    from vimzoo.zoo import family_of
    try:
        family = family_of(model_name)
    except KeyError:
        return {}
    return dict(FAMILY_DEFAULTS.get(family, {}), family=family)
