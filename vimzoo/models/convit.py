"""ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases (d'Ascoli et al., ICML 2021,
arXiv 2103.10697) -- timm-backed family.

timm ships ConViT (`timm/models/convit.py`, adapted from facebookresearch/convit -- released under CC-BY-NC 4.0,
relicensed to Apache-2.0 by its authors on 2021-05-15, which timm's file header predates; the official ImageNet-1k
weights are re-hosted as `timm/convit_{tiny,small,base}.fb_in1k`). The zoo
*adopts* timm's entrypoints unchanged and adds a tiny `test_convit` built through timm's own `_create_convit`.

What timm's `ConVit` lacks and the zoo adds, in the subclass `ZooConVit` (used only by `test_convit`; timm's own
`convit_*` models are never replaced -- build a full-size model with the additions via `create_zoo_convit`):
* gradient checkpointing -- timm's `set_grad_checkpointing(True)` raises ("not supported"); `ZooConVit`
  checkpoints every block (outputs and gradients identical, see tests);
* dense-prediction input sizes -- timm's ConViT only runs at its training size (strict patch embed, fixed
  `pos_embed`, and GPSA rebuilds its relative positions from sqrt(N), i.e. square grids only). With
  `dynamic_img_size=True` `ZooConVit` takes any H x W divisible by the patch size: `pos_embed` is resampled
  (timm's `resample_abs_pos_embed`, bicubic) and every GPSA gets the relative positions of the real H x W grid
  (same values as timm's for square grids, so outputs at the native size are unchanged);
* `no_weight_decay()` is inherited ({'pos_embed', 'cls_token'}); `forward_intermediates` and the `getter`
  feature wrapper are timm's.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models.convit import GPSA, ConVit

from vimzoo.zoo import adopt_timm_models, register_zoo_model

__all__ = ['ZooConVit', 'create_zoo_convit', 'grid_rel_indices', 'TIMM_CONVIT_MODELS']

TIMM_CONVIT_MODELS = ('convit_tiny', 'convit_small', 'convit_base')
adopt_timm_models('convit', TIMM_CONVIT_MODELS)

# The three official sizes (timm's entrypoint arguments; embed_dim is per head, ConVit multiplies it by num_heads).
CONVIT_ARGS = {
    'convit_tiny': dict(local_up_to_layer=10, locality_strength=1.0, embed_dim=48, num_heads=4),
    'convit_small': dict(local_up_to_layer=10, locality_strength=1.0, embed_dim=48, num_heads=9),
    'convit_base': dict(local_up_to_layer=10, locality_strength=1.0, embed_dim=48, num_heads=16),
}


def grid_rel_indices(height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """GPSA relative positions (dx, dy, dx^2 + dy^2) between all tokens of a row-major H x W grid, (1, N, N, 3).

    Equals timm's `GPSA.get_rel_indices(N)` for H == W (which assumes a square grid).
    """
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing='ij')
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    dx = xs[None, :] - xs[:, None]
    dy = ys[None, :] - ys[:, None]
    rel = torch.stack((dx, dy, dx ** 2 + dy ** 2), dim=-1).unsqueeze(0)
    return rel.to(device=device, dtype=dtype)


class ZooConVit(ConVit):
    """timm's `ConVit` plus real gradient checkpointing and (opt-in) arbitrary input sizes for dense prediction."""

    def __init__(self, *args: Any, dynamic_img_size: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grad_checkpointing = False
        self.dynamic_img_size = dynamic_img_size
        if dynamic_img_size:
            self.patch_embed.strict_img_size = False
        self._rel_grid: Optional[Tuple[int, int]] = None

    def _set_grid(self, grid: Tuple[int, int]) -> None:
        """Give every GPSA the relative positions of this token grid (cached; GPSA keeps them as a buffer)."""
        gpsa = [blk.attn for blk in self.blocks if isinstance(blk.attn, GPSA)]
        if not gpsa or (grid == self._rel_grid and gpsa[0].rel_indices.shape[1] == grid[0] * grid[1]):
            return
        weight = gpsa[0].pos_proj.weight
        rel = grid_rel_indices(grid[0], grid[1], device=weight.device, dtype=weight.dtype)
        for attn in gpsa:
            attn.rel_indices = rel
        self._rel_grid = grid

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _block(self, blk: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(blk, x)
        return blk(x)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.patch_embed.dynamic_feat_size(x.shape[-2:]) if self.dynamic_img_size else self.patch_embed.grid_size
        grid = (int(grid[0]), int(grid[1]))
        x = self.patch_embed(x)
        if self.use_pos_embed:
            pos_embed = self.pos_embed
            if grid != tuple(self.patch_embed.grid_size):
                pos_embed = resample_abs_pos_embed(
                    pos_embed, list(grid), old_size=list(self.patch_embed.grid_size), num_prefix_tokens=0)
            x = x + pos_embed
        self._set_grid(grid)
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._embed(x)
        for i, blk in enumerate(self.blocks):
            if i == self.local_up_to_layer and self.cls_token is not None:
                # class token joins after the GPSA (local) blocks, as in timm/official ConViT
                x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
            x = self._block(blk, x)
        return self.norm(x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's ConViT intermediates (patch tokens of each block, class token dropped), with checkpointing."""
        assert output_fmt in ('NCHW', 'NLC'), 'Output format must be one of NCHW or NLC.'
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B, _, height, width = x.shape
        x = self._embed(x)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        intermediates = []
        for i, blk in enumerate(blocks):
            if i == self.local_up_to_layer and self.cls_token is not None:
                x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
            x = self._block(blk, x)
            if i in take_indices:
                y = self.norm(x) if norm else x
                intermediates.append(y[:, 1:] if i >= self.local_up_to_layer and self.cls_token is not None else y)
        if output_fmt == 'NCHW':
            H, W = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates


def _create_zoo_convit(variant: str, pretrained: bool = False, **kwargs: Any) -> ZooConVit:
    """timm's `_create_convit` with the `ZooConVit` class (isometric: `getter` features, last 3 blocks)."""
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(
        ZooConVit,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def create_zoo_convit(variant: str, pretrained: bool = False, **kwargs: Any) -> ZooConVit:
    """Build one of timm's ConViTs (`convit_tiny/small/base`, timm's pretrained cfg and weights) as a `ZooConVit`.

    Same architecture, weights and state_dict keys as `timm.create_model(variant)`; only the zoo additions differ.
    """
    if variant not in CONVIT_ARGS:
        raise ValueError(f'Unknown ConViT variant {variant!r}; choose one of {sorted(CONVIT_ARGS)}.')
    return _create_zoo_convit(variant, pretrained=pretrained, **dict(CONVIT_ARGS[variant], **kwargs))


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD, 'fixed_input_size': True,
        'first_conv': 'patch_embed.proj', 'classifier': 'head', 'license': 'apache-2.0',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'test_convit': _cfg(input_size=(3, 64, 64), crop_pct=1.0),
})


@register_zoo_model('convit')
def test_convit(pretrained: bool = False, **kwargs: Any) -> ZooConVit:
    """Tiny ConViT: 2 GPSA blocks then 2 MHSA blocks (class token joins in between), 8x8 patches on 64x64."""
    model_args = dict(
        img_size=64, patch_size=8, embed_dim=16, num_heads=4, depth=4, local_up_to_layer=2, locality_strength=1.0)
    return _create_zoo_convit('test_convit', pretrained=pretrained, **dict(model_args, **kwargs))
