"""HaloNet: Scaling Local Self-Attention for Parameter Efficient Visual Backbones (Vaswani et al., CVPR 2021,
arXiv 2103.12731) -- timm-backed family.

timm implements HaloNet attention (`timm.layers.HaloAttn`) and the configurable ResNet-like body (`ByobNet` from
`timm/models/byobnet.py`, configs in `timm/models/byoanet.py`), but only registers the paper's H1 (`halonet_h1`) next
to its own hybrid designs. The zoo adopts `halonet_h1`, `halonet26t`, `halonet50ts` unchanged and *adds the paper's
other variants* H0, H2-H7 as `ByoModelCfg`s built by timm's `ByobNet` + `HaloAttn`:

* every block is timm's `SelfAttnBlock` (1x1 conv -> halo attention -> BN-act -> 1x1 conv, residual) with the base
  widths 64/128/256/512 of the paper's H1 (which timm reproduces with 8,100,056 params = the paper's 8.1M);
* `r_b` scales the block output (c = base * r_b, bottleneck ratio 1 / r_b so attention runs at the base width);
* `r_v` scales only the attention *value* width (queries/keys stay at the base width); timm's `SelfAttnBlock` ties
  the value width to its input, so `r_v != 1` (H5-H7) uses `HaloValueBlock`, a subclass whose attention is timm's
  `HaloAttn(dim_out=base * r_v)` followed by BN-act and the 1x1 output conv over those wider channels;
* `l_3` is the depth of the third stage (others 3), `d_f` the width of a final 1x1 conv-BN-act (timm's
  `ByoModelCfg.num_features`; none for H0-H2).
The derivation and the parameter check against the paper (all eight within 0.35%) are in docs/halonet.md.

The paper released no code or weights, so H0-H7 are untrained architectures. Zoo additions over timm: the variants
above, `no_weight_decay()` and an input check with a clear message (`HaloAttn` needs every stage's feature map to be
a multiple of the block size, i.e. the image a multiple of 32 * b), both in the `ZooByobNet` subclass.
"""
from functools import partial
from typing import Any, Dict, List, Optional, Set, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs
from timm.models.byobnet import ByoBlockCfg, ByoModelCfg, ByobNet, SelfAttnBlock

from vimzoo.models._input import check_image_input
from vimzoo.zoo import adopt_timm_models, register_zoo_model

__all__ = [
    'ZooByobNet', 'HaloValueBlock', 'check_halo_input', 'HALONET_PAPER', 'halonet_cfg', 'model_cfgs',
    'TIMM_HALONET_MODELS',
]

# `halonet_h1` is the paper's H1 as configured by timm. `halonet26t` / `halonet50ts` are timm's own ResNet-26/50-like
# hybrids with halo attention in the later stages (not paper configurations) and the only HaloNets with trained
# ImageNet weights anywhere, so they are family members too. The other timm hybrids (sehalonet33ts, eca_halonext26ts,
# haloregnetz_b, lamhalobotnet50ts_256, halo2botnet50ts_256) mix in SE/ECA/RegNet/lambda/BoT ideas and stay timm's.
TIMM_HALONET_MODELS = ('halonet_h1', 'halonet26t', 'halonet50ts')
adopt_timm_models('halonet', TIMM_HALONET_MODELS)

# The paper's model table (b: query block size, h: halo, r_v: value width multiplier, r_b: block output multiplier,
# l_3: third-stage depth, d_f: final 1x1 conv width or 0, image size, params in M, ImageNet top-1).
HALONET_PAPER: Dict[str, Dict[str, Any]] = {
    'halonet_h0': dict(b=8, h=3, rv=1.0, rb=0.5, l3=7, df=0, img_size=256, params_m=5.5, top1=77.9),
    'halonet_h1': dict(b=8, h=3, rv=1.0, rb=1.0, l3=10, df=0, img_size=256, params_m=8.1, top1=79.9),
    'halonet_h2': dict(b=8, h=3, rv=1.0, rb=1.25, l3=11, df=0, img_size=256, params_m=9.4, top1=80.4),
    'halonet_h3': dict(b=10, h=3, rv=1.0, rb=1.5, l3=12, df=1024, img_size=320, params_m=11.8, top1=81.9),
    'halonet_h4': dict(b=12, h=2, rv=1.0, rb=3.0, l3=12, df=1280, img_size=384, params_m=19.1, top1=83.3),
    'halonet_h5': dict(b=14, h=2, rv=2.5, rb=2.0, l3=23, df=1536, img_size=448, params_m=30.7, top1=84.0),
    'halonet_h6': dict(b=8, h=4, rv=3.0, rb=2.75, l3=24, df=1536, img_size=512, params_m=43.4, top1=84.4),
    'halonet_h7': dict(b=10, h=3, rv=4.0, rb=3.5, l3=26, df=2048, img_size=600, params_m=67.4, top1=84.9),
}
BASE_WIDTHS = (64, 128, 256, 512)


class HaloValueBlock(SelfAttnBlock):
    """timm's `SelfAttnBlock` with the attention value width scaled by `value_ratio` (the paper's r_v).

    Queries and keys keep the bottleneck width; the values -- and so the attention output, the post-attention BN and
    the input of the closing 1x1 conv -- are `value_ratio` times wider. value_ratio == 1 is exactly `SelfAttnBlock`.
    """

    def __init__(self, in_chs: int, out_chs: int, value_ratio: float = 1.0, **kwargs: Any) -> None:
        super().__init__(in_chs, out_chs, **kwargs)
        if value_ratio == 1.0:
            return
        layers = kwargs['layers']
        dd = {'device': kwargs.get('device'), 'dtype': kwargs.get('dtype')}
        mid_chs = self.conv1_1x1.conv.out_channels
        v_chs = int(round(mid_chs * value_ratio))
        # HaloAttn sizes q/k as dim_out * qk_ratio (rounded to 8) and v as dim_out: keep q/k at mid_chs
        self.self_attn = layers.self_attn(
            mid_chs, dim_out=v_chs, qk_ratio=mid_chs / v_chs, stride=kwargs.get('stride', 1), **dd)
        self.post_attn = layers.norm_act(v_chs, **dd)
        self.conv3_1x1 = layers.conv_norm_act(v_chs, out_chs, 1, apply_act=False, **dd)


@register_notrace_function  # reason: checks concrete input sizes
def check_halo_input(x: torch.Tensor, in_chans: int, multiple: int, name: str = 'ZooByobNet') -> torch.Tensor:
    """`check_image_input` plus HaloAttn's constraint: sides are multiples of 32 x block size; returns `x`."""
    x = check_image_input(x, in_chans, (multiple, multiple), name)
    if not torch.jit.is_scripting() and torch.compiler.is_compiling():
        return x
    if x.shape[-2] % multiple or x.shape[-1] % multiple:
        raise ValueError(
            f'this HaloNet needs an input height and width that are multiples of {multiple} (32 x its attention '
            f'block size), got {x.shape[-2]}x{x.shape[-1]}; resize or pad the image.')
    return x


class ZooByobNet(ByobNet):
    """timm's `ByobNet` plus `no_weight_decay()` and an input-size check that names the HaloNet constraint."""

    def __init__(self, cfg: ByoModelCfg, input_multiple: int = 1, **kwargs: Any) -> None:
        super().__init__(cfg, **kwargs)
        self.input_multiple = input_multiple

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        # same as timm's ByobNet models (no exclusions beyond timm's 1-D/bias rule, relative position tables decay)
        return set()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # ByobNet.forward_features after the check, written out: TorchScript has no super() calls
        x = self.stem(check_halo_input(x, self.in_chans, self.input_multiple))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return self.final_conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # defined here (same as ByobNet's) so FX autowraps this module's notrace functions (it looks in the globals of
        # the root's forward)
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
            **kwargs: Any,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        x = check_halo_input(x, self.in_chans, self.input_multiple)
        return super().forward_intermediates(
            x, indices=indices, norm=norm, stop_early=stop_early, output_fmt=output_fmt,
            intermediates_only=intermediates_only, **kwargs)


def halonet_cfg(
        b: int,
        h: int,
        rv: float,
        rb: float,
        l3: int,
        df: int = 0,
        widths: Tuple[int, ...] = BASE_WIDTHS,
        depths: Optional[Tuple[int, ...]] = None,
        stem_chs: int = 64,
        num_heads: int = 8,
        **unused: Any,
) -> ByoModelCfg:
    """A paper HaloNet (b, h, r_v, r_b, l_3, d_f) as a timm `ByoModelCfg` (7x7 stem + max-pool, as timm's H1)."""
    depths = depths or (3, 3, l3, 3)
    block_type = 'self_attn' if rv == 1.0 else partial(HaloValueBlock, value_ratio=rv)
    blocks = tuple(
        ByoBlockCfg(type=block_type, d=d, c=int(round(w * rb)), s=1 if i == 0 else 2, gs=0, br=1.0 / rb)
        for i, (w, d) in enumerate(zip(widths, depths)))
    return ByoModelCfg(
        blocks=blocks,
        stem_chs=stem_chs,
        stem_type='7x7',
        stem_pool='maxpool',
        num_features=df,
        self_attn_layer='halo',
        self_attn_kwargs=dict(block_size=b, halo_size=h, num_heads=num_heads),
    )


model_cfgs: Dict[str, ByoModelCfg] = {name: halonet_cfg(**p) for name, p in HALONET_PAPER.items()}
_INPUT_MULTIPLE = {name: 32 * p['b'] for name, p in HALONET_PAPER.items()}

# tiny net for the contract suite: every HaloNet feature (strided halo attention, r_b, r_v via HaloValueBlock, d_f)
_TEST_B = 2
model_cfgs['test_halonet'] = halonet_cfg(
    b=_TEST_B, h=1, rv=2.0, rb=1.5, l3=2, df=96, widths=(16, 32, 48, 64), depths=(1, 1, 2, 1), stem_chs=16,
    num_heads=4)
_INPUT_MULTIPLE['test_halonet'] = 32 * _TEST_B


def _create_halonet(variant: str, pretrained: bool = False, **kwargs: Any) -> ZooByobNet:
    """timm's `_create_byoanet`, but with the zoo's config table and class (timm's `model_cfgs` stays untouched).

    `features_only` defaults to the four stage outputs (strides 4-32) like the zoo's other hierarchical families;
    `out_indices=(0, 1, 2, 3, 4)` adds the stride-2 stem output as in timm's own ByobNets. Features come from
    `forward_intermediates` ('getter'), so a features-only net checks its input like the model does.
    """
    out_indices = kwargs.pop('out_indices', (1, 2, 3, 4))
    return build_model_with_cfg(
        ZooByobNet,
        variant,
        pretrained,
        model_cfg=model_cfgs[variant],
        input_multiple=_INPUT_MULTIPLE[variant],
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(img_size: int, b: int, url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, img_size, img_size),
        'pool_size': (img_size // 32, img_size // 32), 'min_input_size': (3, 32 * b, 32 * b),
        'crop_pct': 0.95, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv1.conv', 'classifier': 'head.fc', 'license': 'apache-2.0',
        **kwargs,
    }


def _paper_cfg(name: str) -> Dict[str, Any]:
    p = HALONET_PAPER[name]
    size = p['img_size']
    if size % (32 * p['b']):
        # H7: the paper trains at 600, which is not a multiple of 32 * b = 320, so timm's HaloAttn cannot run it
        # (its blocks need feature maps divisible by b); the default is the next valid size, 640
        size = -(-size // (32 * p['b'])) * 32 * p['b']
    return _cfg(size, p['b'])


default_cfgs = generate_default_cfgs({
    **{f'{name}.untrained': _paper_cfg(name) for name in HALONET_PAPER if name != 'halonet_h1'},
    'test_halonet.untrained': _cfg(64, _TEST_B, crop_pct=1.0),
})


@register_zoo_model('halonet')
def halonet_h0(pretrained: bool = False, **kwargs: Any) -> ZooByobNet:
    """HaloNet-H0 (paper: b=8, h=3, r_v=1, r_b=0.5, l_3=7, 256 px, 5.5M params)."""
    return _create_halonet('halonet_h0', pretrained=pretrained, **kwargs)


@register_zoo_model('halonet')
def halonet_h2(pretrained: bool = False, **kwargs: Any) -> ZooByobNet:
    """HaloNet-H2 (paper: b=8, h=3, r_v=1, r_b=1.25, l_3=11, 256 px, 9.4M params)."""
    return _create_halonet('halonet_h2', pretrained=pretrained, **kwargs)


@register_zoo_model('halonet')
def halonet_h3(pretrained: bool = False, **kwargs: Any) -> ZooByobNet:
    """HaloNet-H3 (paper: b=10, h=3, r_v=1, r_b=1.5, l_3=12, d_f=1024, 320 px, 11.8M params)."""
    return _create_halonet('halonet_h3', pretrained=pretrained, **kwargs)


@register_zoo_model('halonet')
def halonet_h4(pretrained: bool = False, **kwargs: Any) -> ZooByobNet:
    """HaloNet-H4 (paper: b=12, h=2, r_v=1, r_b=3, l_3=12, d_f=1280, 384 px, 19.1M params)."""
    return _create_halonet('halonet_h4', pretrained=pretrained, **kwargs)


@register_zoo_model('halonet')
def halonet_h5(pretrained: bool = False, **kwargs: Any) -> ZooByobNet:
    """HaloNet-H5 (paper: b=14, h=2, r_v=2.5, r_b=2, l_3=23, d_f=1536, 448 px, 30.7M params)."""
    return _create_halonet('halonet_h5', pretrained=pretrained, **kwargs)


@register_zoo_model('halonet')
def halonet_h6(pretrained: bool = False, **kwargs: Any) -> ZooByobNet:
    """HaloNet-H6 (paper: b=8, h=4, r_v=3, r_b=2.75, l_3=24, d_f=1536, 512 px, 43.4M params)."""
    return _create_halonet('halonet_h6', pretrained=pretrained, **kwargs)


@register_zoo_model('halonet')
def halonet_h7(pretrained: bool = False, **kwargs: Any) -> ZooByobNet:
    """HaloNet-H7 (paper: b=10, h=3, r_v=4, r_b=3.5, l_3=26, d_f=2048, 600 px (640 here), 67.4M params)."""
    return _create_halonet('halonet_h7', pretrained=pretrained, **kwargs)


@register_zoo_model('halonet')
def test_halonet(pretrained: bool = False, **kwargs: Any) -> ZooByobNet:
    """Tiny HaloNet (b=2, h=1, r_v=2, r_b=1.5, d_f=96) on 64x64 inputs for fast tests."""
    return _create_halonet('test_halonet', pretrained=pretrained, **kwargs)
