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
  (same values as timm's for square grids, so outputs at the native size are unchanged); `set_input_size()`
  changes the native size like timm's ViT;
* FX / TorchScript / torch.export friendly GPSA (`ZooGPSA`): the relative positions are an argument computed by the
  model (a non-persistent buffer for the native grid), so no forward pass ever writes module state;
* `no_weight_decay()` is inherited ({'pos_embed', 'cls_token'}); `forward_intermediates` and the `getter`
  feature wrapper are timm's.
"""
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function, resample_abs_pos_embed
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models._input import update_model_input_size
from timm.models.convit import GPSA, ConVit
from torch.jit import Final

from vimzoo.zoo import adopt_timm_models, register_zoo_model

__all__ = ['ZooConVit', 'ZooGPSA', 'create_zoo_convit', 'grid_rel_indices', 'TIMM_CONVIT_MODELS']

TIMM_CONVIT_MODELS = ('convit_tiny', 'convit_small', 'convit_base')
adopt_timm_models('convit', TIMM_CONVIT_MODELS)

# The three official sizes (timm's entrypoint arguments; embed_dim is per head, ConVit multiplies it by num_heads).
CONVIT_ARGS = {
    'convit_tiny': dict(local_up_to_layer=10, locality_strength=1.0, embed_dim=48, num_heads=4),
    'convit_small': dict(local_up_to_layer=10, locality_strength=1.0, embed_dim=48, num_heads=9),
    'convit_base': dict(local_up_to_layer=10, locality_strength=1.0, embed_dim=48, num_heads=16),
}


def grid_rel_indices(height: int, width: int, device: Optional[torch.device] = None,
                     dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """GPSA relative positions (dx, dy, dx^2 + dy^2) between all tokens of a row-major H x W grid, (1, N, N, 3).

    Equals timm's `GPSA.get_rel_indices(N)` for H == W (which assumes a square grid).
    """
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device),
        torch.arange(width, dtype=torch.float32, device=device), indexing='ij')
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    dx = xs[None, :] - xs[:, None]
    dy = ys[None, :] - ys[:, None]
    rel = torch.stack((dx, dy, dx ** 2 + dy ** 2), dim=-1).unsqueeze(0)
    return rel.to(device=device, dtype=dtype)


@register_notrace_function  # reason: the token grid comes from the input size
def rel_indices_for_grid(native: torch.Tensor, native_grid: Tuple[int, int], grid: Tuple[int, int]) -> torch.Tensor:
    """The GPSA relative positions for `grid`: the precomputed `native` ones, or built for another grid."""
    if grid[0] == native_grid[0] and grid[1] == native_grid[1]:
        return native
    return grid_rel_indices(grid[0], grid[1], device=native.device, dtype=native.dtype)


class ZooGPSA(GPSA):
    """timm's GPSA (same parameters and math) that takes the relative positions as an argument.

    timm's GPSA rebuilds its `rel_indices` buffer inside forward whenever the token count changes (square grids
    only); here the model passes the positions of the real grid, and the module never writes its own state.
    """

    @classmethod
    def from_gpsa(cls, gpsa: GPSA) -> 'ZooGPSA':
        """A ZooGPSA holding `gpsa`'s weights (ConVit builds timm's GPSA; the zoo swaps it after construction)."""
        weight = gpsa.qk.weight
        new = cls(gpsa.dim, num_heads=gpsa.num_heads, qkv_bias=gpsa.qk.bias is not None, attn_drop=gpsa.attn_drop.p,
                  proj_drop=gpsa.proj_drop.p, locality_strength=gpsa.locality_strength, device=weight.device,
                  dtype=weight.dtype)
        new.load_state_dict(gpsa.state_dict())
        return new

    def forward(self, x: torch.Tensor, rel_indices: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, N, C); rel_indices (1, N, N, 3) of the token grid (None, e.g. from timm's `Block`: a square grid)."""
        B, N, C = x.shape
        if rel_indices is None:
            side = int(N ** .5)
            rel_indices = grid_rel_indices(side, side, device=x.device, dtype=self.qk.weight.dtype)
        qk = self.qk(x).reshape(B, N, 2, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = qk[0], qk[1]
        pos_score = self.pos_proj(rel_indices.expand(B, -1, -1, -1)).permute(0, 3, 1, 2)
        patch_score = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        pos_score = pos_score.softmax(dim=-1)
        gating = self.gating_param.view(1, -1, 1, 1)
        attn = (1. - torch.sigmoid(gating)) * patch_score + torch.sigmoid(gating) * pos_score
        attn = self.attn_drop(attn / attn.sum(dim=-1).unsqueeze(-1))
        v = self.v(x).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


def _gpsa_block(blk: nn.Module, x: torch.Tensor, rel_indices: torch.Tensor) -> torch.Tensor:
    """timm's convit `Block.forward` for a block whose attention is a ZooGPSA."""
    x = x + blk.drop_path(blk.attn(blk.norm1(x), rel_indices))
    return x + blk.drop_path(blk.mlp(blk.norm2(x)))


class ZooConVit(ConVit):
    """timm's `ConVit` plus real gradient checkpointing, (opt-in) arbitrary input sizes and `set_input_size`."""
    dynamic_img_size: Final[bool]

    def __init__(self, *args: Any, dynamic_img_size: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grad_checkpointing = False
        self.dynamic_img_size = dynamic_img_size
        if dynamic_img_size:
            self.patch_embed.strict_img_size = False
        for blk in self.blocks:
            if isinstance(blk.attn, GPSA):
                blk.attn = ZooGPSA.from_gpsa(blk.attn)
        self.register_buffer('rel_indices', self._native_rel_indices(), persistent=False)

    def _native_rel_indices(self) -> torch.Tensor:
        weight = self.patch_embed.proj.weight
        grid = self.patch_embed.grid_size
        return grid_rel_indices(grid[0], grid[1], device=weight.device, dtype=weight.dtype)

    @torch.jit.ignore
    def init_non_persistent_buffers(self) -> None:
        """Recompute the native grid's GPSA positions (timm's `reinit_non_persistent_buffers`, after `to_empty`)."""
        self.rel_indices = self._native_rel_indices()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def set_input_size(self, img_size: Optional[Union[int, Tuple[int, int]]] = None,
                       patch_size: Optional[Union[int, Tuple[int, int]]] = None) -> None:
        """Change the native input size (and patch size): `pos_embed` is resampled once, GPSA positions rebuilt."""
        prev_grid = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size=img_size, patch_size=patch_size)
        if self.use_pos_embed and self.patch_embed.grid_size != prev_grid:
            with torch.no_grad():
                pos = resample_abs_pos_embed(self.pos_embed, list(self.patch_embed.grid_size), list(prev_grid),
                                             num_prefix_tokens=0)
            self.pos_embed = nn.Parameter(pos, requires_grad=self.pos_embed.requires_grad)
        self.num_patches = self.patch_embed.num_patches
        self.rel_indices = self._native_rel_indices().to(self.rel_indices.dtype)
        for info in self.feature_info:
            info['reduction'] = self.patch_embed.feat_ratio()
        update_model_input_size(self, self.patch_embed.img_size, patch_size=patch_size)

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens + position embedding, and the GPSA relative positions of their grid."""
        native = self.patch_embed.grid_size
        grid = native
        if self.dynamic_img_size:
            grid = self.patch_embed.dynamic_feat_size((x.shape[-2], x.shape[-1]))
        x = self.patch_embed(x)
        if self.use_pos_embed:
            pos_embed = self.pos_embed
            if self.dynamic_img_size:
                pos_embed = resample_abs_pos_embed(
                    pos_embed, [grid[0], grid[1]], old_size=[native[0], native[1]], num_prefix_tokens=0)
            x = x + pos_embed
        rel_indices = self.rel_indices
        if self.dynamic_img_size:
            rel_indices = rel_indices_for_grid(rel_indices, native, grid)
        return self.pos_drop(x), rel_indices

    def _run_blocks(self, x: torch.Tensor, rel_indices: torch.Tensor, take_indices: Optional[List[int]] = None,
                    last: int = -1) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Blocks up to `last` (-1: all; the class token joins after the GPSA blocks); `take_indices` outputs kept."""
        intermediates: List[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            if last < 0 or i <= last:  # (no `break`: TorchScript unrolls loops over ModuleLists)
                if i == self.local_up_to_layer and self.cls_token is not None:
                    # class token joins after the GPSA (local) blocks, as in timm/official ConViT
                    x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
                if isinstance(blk.attn, ZooGPSA):
                    if self.grad_checkpointing and not torch.jit.is_scripting():
                        x = checkpoint(_gpsa_block, blk, x, rel_indices)
                    else:
                        x = x + blk.drop_path(blk.attn(blk.norm1(x), rel_indices))
                        x = x + blk.drop_path(blk.mlp(blk.norm2(x)))
                elif self.grad_checkpointing and not torch.jit.is_scripting():
                    x = checkpoint(blk, x)
                else:
                    x = blk(x)
                if take_indices is not None and i in take_indices:
                    intermediates.append(x)
        return x, intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, rel_indices = self._embed(x)
        x, _ = self._run_blocks(x, rel_indices)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # defined here (same as ConVit's) so FX autowraps this module's notrace functions
        return self.forward_head(self.forward_features(x))

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
        if output_fmt not in ('NCHW', 'NHWC', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {output_fmt!r}.")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B, _, height, width = x.shape
        x, rel_indices = self._embed(x)
        x, taken = self._run_blocks(x, rel_indices, take_indices, max_index if stop_early else -1)
        intermediates = []
        for i, y in zip(sorted(take_indices), taken):
            y = self.norm(y) if norm else y
            intermediates.append(y[:, 1:] if i >= self.local_up_to_layer and self.cls_token is not None else y)
        if output_fmt != 'NLC':
            H, W = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [y.reshape(B, H, W, -1) for y in intermediates]
            if output_fmt == 'NCHW':
                intermediates = [y.permute(0, 3, 1, 2).contiguous() for y in intermediates]
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
