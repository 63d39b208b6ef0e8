"""DependencyViT: Visual Dependency Transformers (Ding et al., CVPR 2023, arXiv 2304.03282).

PAPER RE-IMPLEMENTATION WITHOUT OFFICIAL WEIGHTS. The official repository (dingmyu/DependencyViT) holds only a LICENSE;
no code or checkpoints were ever released. Every model here is randomly initialised (`.untrained` cfgs) and nothing
about its accuracy is claimed; see docs/dependencyvit.md for what follows the paper and what is our interpretation.

Reversed attention. With forward attention A_F = softmax(q k^T / sqrt(d)) (row i = sender/child, normalised over the
keys j = candidate parents), the reversed matrix A_R = A_F^T lets each *child send* its value to its parents with a
normalised distribution instead of each token gathering. Two gates act on the sender side:
* head selector P: per token, softmax over heads of a linear map with temperature 0.1 (how the message is split over
  heads);
* message controller M: sigmoid of a small MLP (dim -> dim/2 -> 1, GELU, no biases), accumulated multiplicatively over
  layers (a token that stopped sending stays quiet). It is accumulated in log space (sum of log-sigmoids), so it
  cannot underflow to 0/NaN in bf16 or over deep stacks.
  out_h[j] = sum_i A_F,h[i, j] * P_h(i) * M(i) * v_h[i]; the soft dependency mask is A^M = sum_h A_R,h.
The product is computed as A_F^T @ (P M v), never materialising the scaled N x N matrix.

DependencyViT-Lite: after the attention of selected blocks, tokens that *receive* the fewest messages (row sums of
A_R over heads and senders, i.e. leaves of the induced tree) are pruned with top-k. `forward_intermediates` scatters the
kept tokens back onto the full patch grid (pruned positions are zero), so maps keep their stride-16 geometry.

Final features: LayerNorm, then each token is weighted by its cumulative message strength normalised to mean 1 over
the tokens (a softmax of log M times N), so average pooling becomes message-weighted pooling without the collapse
to ~0.5^depth that a raw multiplication by M would cause.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import (DropPath, LayerScale, Mlp, PatchEmbed, get_device_dtype, register_notrace_function,
                         resample_abs_pos_embed, trunc_normal_)
from timm.models import checkpoint, generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models._input import update_model_input_size
from torch.jit import Final

from vimzoo.models._helpers import build_zoo_model, load_checkpoint, match_head, unwrap_checkpoint
from vimzoo.models._input import check_image_input, check_input_size
from vimzoo.zoo import register_zoo_model

__all__ = ['DependencyViT', 'ReversedAttention', 'checkpoint_filter_fn']


class ReversedAttention(nn.Module):
    """Multi-head reversed attention with head selector and message controller (see module docstring)."""
    dependency_mask: Optional[torch.Tensor]

    def __init__(
            self,
            dim: int,
            num_heads: int = 12,
            qkv_bias: bool = False,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            head_temperature: float = 0.1,
            controller_ratio: float = 0.5,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if dim % num_heads:
            raise ValueError(f'dim {dim} must be divisible by num_heads {num_heads}.')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.head_temperature = head_temperature
        self.head_selector = nn.Linear(dim, num_heads, bias=False, **dd)
        self.message_controller = Mlp(dim, int(dim * controller_ratio), 1, act_layer=nn.GELU, bias=False, **dd)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.track_dependency = False
        self.dependency_mask: Optional[torch.Tensor] = None

    def forward(
            self,
            x: torch.Tensor,
            log_m: torch.Tensor,
            need_received: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """x: (B, N, C) normed tokens; log_m: (B, N) fp32 cumulative log message strength before this layer.

        Returns the attention output, the updated log_m and (if asked) the messages each token receives (B, N).
        """
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # A_F, (B, H, N_send, N_recv)
        attn = self.attn_drop(attn)

        # sender gates in fp32: a temperature-0.1 softmax and a deep product of sigmoids are the fragile parts
        p = (self.head_selector(x).float() / self.head_temperature).softmax(dim=-1)  # (B, N, H)
        log_m = log_m + F.logsigmoid(self.message_controller(x).float()).squeeze(-1)
        send = (p * log_m.exp().unsqueeze(-1)).transpose(1, 2).unsqueeze(-1)  # (B, H, N_send, 1)

        attn_r = attn.transpose(-2, -1)  # A_R up to the sender gates: (B, H, N_recv, N_send)
        out = attn_r @ (v * send.to(v.dtype))
        received: Optional[torch.Tensor] = None
        if need_received or self.track_dependency:
            with torch.no_grad():
                attn_r32, send32 = attn_r.detach().float(), send.detach()
                if need_received:
                    received = (attn_r32 @ send32).sum(dim=1).squeeze(-1)  # (B, N_recv)
                if self.track_dependency:
                    self.dependency_mask = (attn_r32 * send32.transpose(-2, -1)).sum(dim=1)  # A^M, (B, N, N)
        out = out.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out)), log_m, received


@register_notrace_function  # reason: how many tokens remain depends on the input's token count
def prune_leaves(
        x: torch.Tensor,
        log_m: torch.Tensor,
        pos_idx: torch.Tensor,
        received: torch.Tensor,
        num_tokens: int,
        keep_ratio: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep `keep_ratio` of the initial `num_tokens` tokens: those receiving the most messages (non-leaves), in
    raster order; x (B, N, C)."""
    keep = max(1, min(x.shape[1], int(num_tokens * keep_ratio + 1e-6)))
    if keep >= x.shape[1]:
        return x, log_m, pos_idx
    idx = received.topk(keep, dim=1)[1].sort(dim=1)[0]
    x = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return x, log_m.gather(1, idx), pos_idx.gather(1, idx)


class DependencyBlock(nn.Module):
    """Pre-norm block: reversed attention (+LayerScale, drop path), optional leaf pruning, then MLP."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.,
            qkv_bias: bool = False,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            init_values: Optional[float] = 1e-6,
            drop_path: float = 0.,
            head_temperature: float = 0.1,
            keep_ratio: Optional[float] = None,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.attn = ReversedAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop, head_temperature, **dd)
        self.ls1 = LayerScale(dim, init_values, **dd) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop, **dd)
        self.ls2 = LayerScale(dim, init_values, **dd) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        # fraction of the *initial* token count kept after this block (None: no pruning here)
        self.keep_ratio = keep_ratio
        self.prune = keep_ratio is not None

    def forward(
            self,
            x: torch.Tensor,
            log_m: torch.Tensor,
            pos_idx: torch.Tensor,
            num_tokens: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, log_m, received = self.attn(self.norm1(x), log_m, need_received=self.prune)
        x = x + self.drop_path1(self.ls1(y))
        if received is not None and self.keep_ratio is not None:
            x, log_m, pos_idx = prune_leaves(x, log_m, pos_idx, received, num_tokens, self.keep_ratio)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, log_m, pos_idx


@register_notrace_function  # reason: builds tensors sized by the token count
def init_message_state(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-token state for (B, N, C) tokens: cumulative log message strength (0, fp32) and raster positions."""
    B, N = x.shape[0], x.shape[1]
    log_m = torch.zeros(B, N, device=x.device, dtype=torch.float32)
    pos_idx = torch.arange(N, device=x.device).unsqueeze(0).expand(B, N)
    return log_m, pos_idx


class DependencyViT(nn.Module):
    """Isometric ViT (no class token, learned absolute position embedding) with reversed-attention blocks.

    dynamic_img_size=True (default) resamples `pos_embed` on the fly to any input whose sides divide by the patch
    size; False pins the input to `img_size` like timm's ViT (`set_input_size` changes it).
    """
    dynamic_img_size: Final[bool]

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 192,
            depth: int = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.,
            qkv_bias: bool = False,
            init_values: Optional[float] = 1e-6,
            head_temperature: float = 0.1,
            prune_layers: Optional[Sequence[int]] = None,
            prune_ratio: float = 0.16,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            dynamic_img_size: bool = True,
            device=None,
            dtype=None,
    ) -> None:
        """prune_layers: 1-based block numbers after whose attention leaves are pruned; after the k-th of them
        `1 - k * prune_ratio` of the initial tokens remain (Lite-Tiny: blocks 2, 5, 8, 11 with 0.16 -> 36%)."""
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if global_pool not in ('avg', ''):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}.")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False

        keep: Dict[int, float] = {}
        if prune_layers:
            layers = sorted(set(int(i) for i in prune_layers))
            if layers[0] < 1 or layers[-1] > depth:
                raise ValueError(f'prune_layers are 1-based block numbers in [1, {depth}], got {list(prune_layers)}.')
            if not 0. < prune_ratio * len(layers) < 1.:
                raise ValueError(
                    f'prune_ratio * len(prune_layers) must be in (0, 1), got {prune_ratio} * {len(layers)}.')
            keep = {layer - 1: 1. - k * prune_ratio for k, layer in enumerate(layers, 1)}
        self.prune_layers = tuple(sorted(i + 1 for i in keep))
        self.prune_ratio = prune_ratio

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, output_fmt='NHWC',
                                      strict_img_size=not dynamic_img_size, **dd)
        num_patches = self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = [drop_path_rate * i / (depth - 1) if depth > 1 else 0. for i in range(depth)]
        self.blocks = nn.ModuleList([
            DependencyBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, proj_drop_rate, attn_drop_rate, init_values,
                            dpr[i], head_temperature, keep.get(i), **dd)
            for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f'blocks.{i}') for i in range(depth)]

        trunc_normal_(self.pos_embed, std=.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'pos_embed'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^pos_embed|^patch_embed', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ('avg', ''):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}.")
            self.global_pool = global_pool
        dd = get_device_dtype(self)
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    @torch.jit.ignore
    def set_input_size(self, img_size: Optional[Union[int, Tuple[int, int]]] = None,
                       patch_size: Optional[Union[int, Tuple[int, int]]] = None) -> None:
        """Change the input size (and patch size, via timm's PatchEmbed): `pos_embed` is resampled once."""
        prev_grid = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size=img_size, patch_size=patch_size)
        if self.patch_embed.grid_size != prev_grid:
            with torch.no_grad():
                pos = resample_abs_pos_embed(self.pos_embed, list(self.patch_embed.grid_size), list(prev_grid),
                                             num_prefix_tokens=0)
            self.pos_embed = nn.Parameter(pos, requires_grad=self.pos_embed.requires_grad)
        self.patch_size = self.patch_embed.patch_size[0]
        for info in self.feature_info:
            info['reduction'] = self.patch_size
        update_model_input_size(self, self.patch_embed.img_size, patch_size=patch_size)

    @torch.jit.ignore
    def set_dependency_tracking(self, enable: bool = True) -> None:
        """Keep each block's soft dependency mask A^M (B, N_l, N_l) after the next forward (for analysis)."""
        for blk in self.blocks:
            blk.attn.track_dependency = enable
            blk.attn.dependency_mask = None

    @torch.jit.ignore
    def get_dependency_masks(self) -> List[Optional[torch.Tensor]]:
        return [blk.attn.dependency_mask for blk in self.blocks]

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = check_image_input(x, self.in_chans, (self.patch_size, self.patch_size), 'DependencyViT')
        if not self.dynamic_img_size:
            x = check_input_size(x, self.patch_embed.img_size, 'DependencyViT')
        x = self.patch_embed(x)  # (B, gh, gw, C)
        grid = (x.shape[1], x.shape[2])
        pos = self.pos_embed
        if self.dynamic_img_size:
            base = self.patch_embed.grid_size
            pos = resample_abs_pos_embed(pos, [grid[0], grid[1]], [base[0], base[1]], num_prefix_tokens=0)
        return self.pos_drop(x.flatten(1, 2) + pos), grid

    def _finalize(self, x: torch.Tensor, log_m: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        weight = torch.softmax(log_m, dim=1) * x.shape[1]  # message strength, mean 1 over the kept tokens
        return x * weight.unsqueeze(-1).to(x.dtype)


    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N_kept, C) message-weighted tokens; N_kept < N for Lite (pruned) models."""
        x, _ = self._embed(x)
        num_tokens = x.shape[1]
        log_m, pos_idx = init_message_state(x)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, log_m, pos_idx = checkpoint(blk, x, log_m, pos_idx, num_tokens)
            else:
                x, log_m, pos_idx = blk(x, log_m, pos_idx, num_tokens)
        return self._finalize(x, log_m)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @staticmethod
    def _to_grid(x: torch.Tensor, pos_idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """Scatter (B, N_kept, C) tokens to their original positions on the full (B, N, C) grid; pruned -> 0."""
        if x.shape[1] == num_tokens:
            return x
        full = x.new_zeros(x.shape[0], num_tokens, x.shape[2])
        return full.scatter(1, pos_idx.unsqueeze(-1).expand(-1, -1, x.shape[2]), x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Block outputs as stride-`patch_size` maps (NCHW / NHWC) or full-grid tokens (NLC).

        For Lite models the kept tokens are scattered back to their patch positions and pruned positions are zero,
        so every map has the full grid; the final output equals `forward_features` (kept tokens only).
        """
        if output_fmt not in ('NCHW', 'NHWC', 'NLC'):
            raise ValueError(f"DependencyViT intermediates support output_fmt 'NCHW', 'NHWC' or 'NLC', got "
                             f"{output_fmt!r}.")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x, grid = self._embed(x)
        num_tokens = x.shape[1]
        log_m, pos_idx = init_message_state(x)
        blocks = self.blocks if not (stop_early or intermediates_only) else self.blocks[:max_index + 1]
        intermediates = []
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, log_m, pos_idx = checkpoint(blk, x, log_m, pos_idx, num_tokens)
            else:
                x, log_m, pos_idx = blk(x, log_m, pos_idx, num_tokens)
            if i in take_indices:
                feat = self._to_grid(self.norm(x) if norm else x, pos_idx, num_tokens)
                if output_fmt != 'NLC':
                    feat = feat.reshape(feat.shape[0], grid[0], grid[1], -1)
                    feat = feat.permute(0, 3, 1, 2).contiguous() if output_fmt == 'NCHW' else feat
                intermediates.append(feat)
        if intermediates_only:
            return intermediates
        return self._finalize(x, log_m), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def load_pretrained(self, checkpoint_path: str, use_ema: bool = False, strict: bool = True) -> None:
        """Load a trainer checkpoint file: the main weights ('model' / 'state_dict') unless `use_ema`."""
        load_checkpoint(self, checkpoint_path, checkpoint_filter_fn, use_ema=use_ema, strict=strict)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: DependencyViT, use_ema: bool = False
                         ) -> Dict[str, torch.Tensor]:
    """Unwrap trainer checkpoints ('model' / 'state_dict', or the EMA copy with `use_ema`), resample `pos_embed` to
    the model's grid and keep the model's classifier where the checkpoint's does not fit. Keys follow timm's ViT
    naming (also used by the unofficial timm PR #2062), so those load as they are."""
    out = {}
    for k, v in unwrap_checkpoint(state_dict, use_ema=use_ema, main_keys=('model', 'state_dict')).items():
        if k == 'pos_embed' and v.shape != model.pos_embed.shape:
            v = resample_abs_pos_embed(v, list(model.patch_embed.grid_size), num_prefix_tokens=0)
        out[k] = v
    return match_head(out, model, family='DependencyViT')


def _create_dependencyvit(variant: str, pretrained: bool = False, **kwargs: Any) -> DependencyViT:
    out_indices = kwargs.pop('out_indices', 3)
    return build_zoo_model(
        DependencyViT,
        variant,
        pretrained,
        filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    # no released weights: preprocessing follows the unofficial timm PR (Inception mean/std, crop 0.9, bicubic)
    return {
        'url': '',
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': None,
        'crop_pct': 0.9,
        'interpolation': 'bicubic',
        'mean': IMAGENET_INCEPTION_MEAN,
        'std': IMAGENET_INCEPTION_STD,
        'first_conv': 'patch_embed.proj',
        'classifier': 'head',
        'paper_ids': 'arXiv:2304.03282',
        'notes': ('paper re-implementation; no official weights exist',),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'dependencyvit_tiny_patch16_224.untrained': _cfg(),
    'dependencyvit_small_patch16_224.untrained': _cfg(),
    'dependencyvit_lite_tiny_patch16_224.untrained': _cfg(),
    'test_dependencyvit.untrained': _cfg(input_size=(3, 64, 64)),
    'test_dependencyvit_lite.untrained': _cfg(input_size=(3, 64, 64)),
})


@register_zoo_model('dependencyvit')
def dependencyvit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> DependencyViT:
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=12)
    return _create_dependencyvit('dependencyvit_tiny_patch16_224', pretrained, **dict(model_args, **kwargs))


@register_zoo_model('dependencyvit')
def dependencyvit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> DependencyViT:
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=12)
    return _create_dependencyvit('dependencyvit_small_patch16_224', pretrained, **dict(model_args, **kwargs))


@register_zoo_model('dependencyvit')
def dependencyvit_lite_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> DependencyViT:
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=12, prune_layers=(2, 5, 8, 11),
                      prune_ratio=0.16)
    return _create_dependencyvit('dependencyvit_lite_tiny_patch16_224', pretrained, **dict(model_args, **kwargs))


@register_zoo_model('dependencyvit')
def test_dependencyvit(pretrained: bool = False, **kwargs: Any) -> DependencyViT:
    model_args = dict(img_size=64, patch_size=8, embed_dim=32, depth=4, num_heads=4, mlp_ratio=2.)
    return _create_dependencyvit('test_dependencyvit', pretrained, **dict(model_args, **kwargs))


@register_zoo_model('dependencyvit')
def test_dependencyvit_lite(pretrained: bool = False, **kwargs: Any) -> DependencyViT:
    model_args = dict(img_size=64, patch_size=8, embed_dim=32, depth=4, num_heads=4, mlp_ratio=2.,
                      prune_layers=(1, 3), prune_ratio=0.25)
    return _create_dependencyvit('test_dependencyvit_lite', pretrained, **dict(model_args, **kwargs))
