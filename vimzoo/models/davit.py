"""DaViT: Dual Attention Vision Transformers (Ding et al., ECCV 2022, arXiv 2204.03645) -- timm-backed family.

timm already ships DaViT (`timm/models/davit.py`, adapted from the official MIT-licensed dingmyu/davit, with the
official ImageNet-1k weights re-hosted as `timm/davit_{tiny,small,base}.msft_in1k`). The zoo therefore *adopts*
timm's own entrypoints (nothing is re-registered, so `timm.create_model('davit_tiny')` still runs timm's code) and
only adds a tiny `test_davit` built through timm's own `_create_davit` for the contract suite.

What the zoo adds on top of timm's class (for `test_davit` only, timm's models are untouched):
* `no_weight_decay()` -- timm's `DaVit` has none (timm's optimizer factory treats that as "no extra exclusions");
  `ZooDaVit` returns the same empty set explicitly so the zoo contract can rely on the method.
"""
from __future__ import annotations

from typing import Any, Dict, Set

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models.davit import DaVit, checkpoint_filter_fn

from vimzoo.zoo import adopt_timm_models, register_zoo_model

__all__ = ['ZooDaVit', 'TIMM_DAVIT_MODELS']

# timm's DaViT classification models that are the paper's (or scaled-up paper) configurations. The Florence-2 towers
# (`davit_base_fl`, `davit_huge_fl`) are image encoders of another model (no classifier weights), so not adopted.
TIMM_DAVIT_MODELS = ('davit_tiny', 'davit_small', 'davit_base', 'davit_large', 'davit_huge', 'davit_giant')
adopt_timm_models('davit', TIMM_DAVIT_MODELS)


class ZooDaVit(DaVit):
    """timm's `DaVit`, unchanged, plus an explicit `no_weight_decay()` (the zoo contract requires the method)."""

    def no_weight_decay(self) -> Set[str]:
        # DaViT has no position embeddings or tokens; norms and biases are 1-D and excluded by timm's optimizer anyway
        return set()


def _create_zoo_davit(variant: str, pretrained: bool = False, **kwargs: Any) -> ZooDaVit:
    """Same as timm's `_create_davit` (checkpoint filter, flattened 4-stage features), with the `ZooDaVit` class."""
    out_indices = kwargs.pop('out_indices', tuple(range(len(kwargs.get('depths', (1, 1, 3, 1))))))
    return build_model_with_cfg(
        ZooDaVit,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.95, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv', 'classifier': 'head.fc', 'license': 'mit',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'test_davit': _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
})


@register_zoo_model('davit')
def test_davit(pretrained: bool = False, **kwargs: Any) -> ZooDaVit:
    """Tiny DaViT (all four stages, spatial + channel attention, window 7 on a 16x16 first stage) for fast tests."""
    model_args = dict(depths=(1, 1, 2, 1), embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), window_size=7)
    return _create_zoo_davit('test_davit', pretrained=pretrained, **dict(model_args, **kwargs))
