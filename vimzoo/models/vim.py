"""Vision Mamba (Vim) as timm models, weight-compatible with the official hustvl/Vim checkpoints.

Paper: "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model"
(Zhu et al., ICML 2024, https://arxiv.org/abs/2401.09417). Official code: https://github.com/hustvl/Vim (Apache-2.0).

What the official model does, and what this file reproduces without CUDA-only dependencies:
* patch embedding `Conv2d(k=16, s=stride)` (stride 8 for the "+" fine-grained models), a *middle* class token
  inserted at index M // 2 of the M patch tokens, an absolute position embedding whose entry M // 2 is the class slot;
* 24 "Add -> RMSNorm -> Mixer" blocks that carry `(hidden, residual)`; the residual stream stays in fp32 and the
  add + RMSNorm (eps 1e-5, weight only) is computed in fp32, like mamba_ssm's fused Triton `rms_norm_fn`;
* the bidirectional "v2" Mamba mixer: one shared `in_proj` / `out_proj`, separate conv / x_proj / dt_proj / A / D
  for the backward direction (the `_b` parameters); the backward branch runs anti-causally on the original token
  order via `causal_conv1d(reverse=True)` and the reverse selective scan, so no sequence is ever flipped in memory;
  the two gated outputs are averaged (`if_divide_out`) before `out_proj`;
* a final fused add + RMSNorm (`norm_f`), then the class token (the released variants are named "final_pool_mean"
  but pool the middle class token; that is what the checkpoints were trained with).

State-dict keys and shapes equal the official ones (`layers.{i}.mixer.*`, `layers.{i}.norm.weight`, `norm_f.weight`,
`patch_embed.proj`, `cls_token`, `pos_embed`, `head`), so `checkpoint['model']` loads with `strict=True`.
LBVim (`lbvim.py`) is a configuration of `VisionMamba` (no class token, single-direction locally bi-directional
mixers, alternating scan direction, 'avg' or 'map' pooling); its official checkpoints load through the same filter.
"""
import math
from typing import Any, Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.jit import Final
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (DropPath, get_device_dtype, lecun_normal_, register_notrace_function, resample_abs_pos_embed,
                         resample_patch_embed, to_2tuple, trunc_normal_, trunc_normal_tf_)
from timm.models import generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models._input import update_model_input_size
from timm.models._manipulate import checkpoint

from vimzoo.ops import add_rms_norm, lb_window, mamba_inner
from vimzoo.ops._validate import check_window
from vimzoo.zoo import register_zoo_model

from ._helpers import build_zoo_model, load_checkpoint, match_head, released_weights, unwrap_checkpoint
from ._input import check_image_input, check_input_size
from ._layers import check_positive_ints

__all__ = [
    'PatchEmbed', 'RmsNormF32', 'MambaMixer', 'MambaBlock', 'LatentAttentionPool', 'VisionMamba',
    'checkpoint_filter_fn', 'fused_add_rms_norm', 'mixer_scan', 'auto_scan_window',
    'split_mid_cls_pos_embed', 'join_mid_cls_pos_embed', 'resample_mid_cls_pos_embed',
]


class PatchEmbed(nn.Module):
    """Conv patch embedding with a stride that may differ from the patch size (Vim "+" models use 16 / 8).

    Unlike the official module it accepts any input of at least one patch; the grid follows the input.
    """

    def __init__(
            self,
            patch_size: int = 16,
            stride: int = 16,
            in_chans: int = 3,
            embed_dim: int = 192,
            img_size: Union[int, Tuple[int, int]] = 224,
            device=None,
            dtype=None,
    ):
        super().__init__()
        check_positive_ints('PatchEmbed', patch_size=patch_size, stride=stride, in_chans=in_chans, embed_dim=embed_dim)
        self.patch_size = to_2tuple(patch_size)
        self.stride = to_2tuple(stride)
        self.img_size = to_2tuple(img_size)
        self.grid_size = self.grid_for(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.stride,
                              device=device, dtype=dtype)

    def grid_for(self, hw: Tuple[int, int]) -> Tuple[int, int]:
        return ((hw[0] - self.patch_size[0]) // self.stride[0] + 1, (hw[1] - self.patch_size[1]) // self.stride[1] + 1)

    def set_input_size(self, img_size: Optional[Union[int, Tuple[int, int]]] = None,
                       patch_size: Optional[Union[int, Tuple[int, int]]] = None) -> None:
        """New image size and/or patch size; a new patch size resamples the conv (timm's `resample_patch_embed`)."""
        if patch_size is not None and to_2tuple(patch_size) != self.patch_size:
            if self.stride != self.patch_size:
                raise ValueError(f'set_input_size(patch_size=...) needs stride == patch size; this embedding has '
                                 f'patch {self.patch_size} with stride {self.stride}.')
            new_patch = to_2tuple(patch_size)
            old = self.proj
            with torch.no_grad():
                new = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=new_patch, stride=new_patch,
                                bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
                new.weight.copy_(resample_patch_embed(old.weight, list(new_patch)))
                new.weight.requires_grad_(old.weight.requires_grad)
                if old.bias is not None:
                    new.bias.copy_(old.bias)
                    new.bias.requires_grad_(old.bias.requires_grad)
            new.train(old.training)
            self.proj = new
            self.patch_size = self.stride = new_patch
        if img_size is not None:
            self.img_size = to_2tuple(img_size)
        self.grid_size = self.grid_for(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.proj(x)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid


@register_notrace_function  # reason: vimzoo.ops.add_rms_norm picks its fused CPU kernel from runtime dtype/grad state
def fused_add_rms_norm(x: torch.Tensor, residual: Optional[torch.Tensor], weight: torch.Tensor,
                  eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    if not torch.jit.is_scripting():
        return add_rms_norm(x, residual, weight, eps)
    # TorchScript: the same math as the op's torch path (the fused kernel's dispatch is Python-side)
    summed = x.float() if residual is None else residual.float() + x.float()
    normed = F.rms_norm(summed, [summed.shape[-1]], weight.float(), eps)
    return normed.to(x.dtype), summed


class RmsNormF32(nn.Module):
    """RMSNorm with an optional fused residual add, computed in fp32 (mamba_ssm `rms_norm_fn` semantics).

    `forward(x, residual)` returns `(norm(x + residual) cast to x.dtype, x + residual in fp32)`; the official blocks
    keep the residual stream in fp32 (`residual_in_fp32=True`), which is what keeps bf16 autocast stable.
    """

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        return fused_add_rms_norm(x, residual, self.weight, self.eps)  # x * rsqrt(mean x² + eps) * w, fp32


@register_notrace_function  # reason: LBMamba's window W(L) is a Python choice on the sequence length
def auto_scan_window(x: torch.Tensor) -> int:
    return lb_window(x.shape[1])


@register_notrace_function  # reason: vimzoo.ops.mamba_inner validates its inputs in Python
def mixer_scan(
        xz: torch.Tensor,
        w: List[torch.Tensor],
        w_b: Optional[List[torch.Tensor]],
        reverse: bool,
        window: int,
        scale: float,
        backend: Optional[str],
) -> torch.Tensor:
    """`vimzoo.ops.mamba_inner` (window 1 = plain scan); under TorchScript the op it wraps, called directly (its
    Python validation does not script; the op still picks the backend when it runs, 'default' = use_backend's)."""
    if not torch.jit.is_scripting():
        return mamba_inner(xz, w, w_b, reverse=reverse, local_window=None if window == 1 else window, scale=scale,
                           backend=backend)
    return torch.ops.vimzoo.mamba_inner_fwd(xz, w, [] if w_b is None else w_b, reverse, window, scale,
                                            'default' if backend is None else backend, True)[0]


def _check_mixer_args(dim, d_state, d_conv, expand, dt_rank, local_window) -> None:
    """Impossible mixer sizes fail here, with the argument's name, not later inside a kernel (local_window: None,
    'auto' or an int >= 1)."""
    check_positive_ints('MambaMixer', dim=dim, d_state=d_state, d_conv=d_conv)
    if isinstance(expand, bool) or not isinstance(expand, (int, float)) or int(expand * dim) < 1:
        raise ValueError(f'MambaMixer: expand must be a number with int(expand * dim) >= 1, got {expand!r}.')
    if dt_rank != 'auto' and (isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank < 1):
        raise ValueError(f"MambaMixer: dt_rank must be 'auto' or an int >= 1, got {dt_rank!r}.")
    if local_window != 'auto':
        check_window('MambaMixer', local_window)


class MambaMixer(nn.Module):
    """Mamba selective-SSM mixer with the official parameter names.

    bidirectional=True is Vim's "v2" mixer (second set of `_b` parameters scanning right-to-left, outputs averaged);
    bidirectional=False is the plain Mamba mixer used by LBVim. `local_window` turns the scan into LBMamba's locally
    bi-directional scan: an int W, or 'auto' for `lb_window(L)`, the window the official CUDA kernel uses for L tokens.
    """
    bidirectional: Final[bool]
    auto_window: Final[bool]

    def __init__(
            self,
            dim: int,
            d_state: int = 16,
            d_conv: int = 4,
            expand: int = 2,
            dt_rank: Union[int, str] = 'auto',
            dt_min: float = 0.001,
            dt_max: float = 0.1,
            dt_init_floor: float = 1e-4,
            bidirectional: bool = True,
            divide_out: bool = True,
            local_window: Optional[Union[int, str]] = None,
            scan_backend: Optional[str] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        _check_mixer_args(dim, d_state, d_conv, expand, dt_rank, local_window)
        self.dim = dim
        self.d_state = d_state
        self.d_inner = int(expand * dim)
        self.dt_rank = math.ceil(dim / 16) if dt_rank == 'auto' else int(dt_rank)
        self.bidirectional = bidirectional
        self.divide_out = divide_out
        self.auto_window = local_window == 'auto'
        self.window = 1 if local_window is None or self.auto_window else int(local_window)  # 1 = plain scan
        self.scan_backend = scan_backend
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        d_inner, proj_out = self.d_inner, self.dt_rank + 2 * d_state

        # Registration order follows the official module so state_dict() order matches too.
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False, **dd)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=True, **dd)
        self.x_proj = nn.Linear(d_inner, proj_out, bias=False, **dd)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True, **dd)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state, **dd))
        self.D = nn.Parameter(torch.empty(d_inner, **dd))
        if bidirectional:
            self.A_b_log = nn.Parameter(torch.empty(d_inner, d_state, **dd))
            self.conv1d_b = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=True, **dd)
            self.x_proj_b = nn.Linear(d_inner, proj_out, bias=False, **dd)
            self.dt_proj_b = nn.Linear(self.dt_rank, d_inner, bias=True, **dd)
            self.D_b = nn.Parameter(torch.empty(d_inner, **dd))
        self.out_proj = nn.Linear(d_inner, dim, bias=False, **dd)
        self.init_weights()

    @property
    def local_window(self) -> Optional[Union[int, str]]:
        """The constructor's `local_window` (None: plain scan)."""
        return 'auto' if self.auto_window else (None if self.window == 1 else self.window)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Mamba's init: S4D-real A = 1..N, D = 1, dt bias = softplus^-1 of log-uniform dt in [dt_min, dt_max].

        Only `dt_proj` gets the dt-bias init (as in the official code, where the model-level init then zeroes
        `dt_proj_b.bias`; `VisionMamba.init_weights` reproduces that).
        """
        dt_min, dt_max, floor = self._dt_range
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        dt_std = self.dt_rank ** -0.5
        for suffix in ('', '_b') if self.bidirectional else ('',):
            getattr(self, f'A{suffix}_log').copy_(torch.log(a).expand(self.d_inner, -1))
            getattr(self, f'D{suffix}').fill_(1.)
        nn.init.uniform_(self.dt_proj.weight, -dt_std, dt_std)
        dt = torch.exp(torch.rand(self.d_inner, device=self.dt_proj.bias.device) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def _weights(self) -> List[torch.Tensor]:
        """Forward-direction parameters in `vimzoo.ops.mamba_inner` order (it casts them as the kernels need)."""
        conv_bias, dt_bias = self.conv1d.bias, self.dt_proj.bias
        assert conv_bias is not None and dt_bias is not None  # both built with bias=True (TorchScript refinement)
        return [self.conv1d.weight, conv_bias, self.x_proj.weight, self.dt_proj.weight, dt_bias, self.A_log, self.D]

    def _weights_b(self) -> Optional[List[torch.Tensor]]:
        if self.bidirectional:
            conv_bias, dt_bias = self.conv1d_b.bias, self.dt_proj_b.bias
            assert conv_bias is not None and dt_bias is not None
            return [self.conv1d_b.weight, conv_bias, self.x_proj_b.weight, self.dt_proj_b.weight, dt_bias,
                    self.A_b_log, self.D_b]
        return None

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        """x: (B, L, dim). reverse=True runs the whole mixer right-to-left (equals flip -> mixer -> flip).

        Activations stay token-major (b, l, channels), as Linear layers produce them; `mamba_inner` (conv, x_proj,
        scan, gate) runs as one fused C++ call for fp32 CPU inference and through the differentiable ops otherwise.
        """
        if self.bidirectional and reverse:
            raise NotImplementedError('the bidirectional (v2) mixer already scans both ways; reverse is unused')
        xz = F.linear(x, self.in_proj.weight)  # (b, l, 2 * d_inner)
        window = auto_scan_window(x) if self.auto_window else self.window
        # official: out_proj((y_f + y_b) / 2); the power-of-two scale is applied to y inside mamba_inner (exact)
        scale = 0.5 if self.bidirectional and self.divide_out else 1.0
        y = mixer_scan(xz, self._weights(), self._weights_b(), reverse, window, scale, self.scan_backend)
        return self.out_proj(y)


class MambaBlock(nn.Module):
    """Add -> RMSNorm -> Mixer block carrying `(hidden, residual)` (the official `Block` with fused add + norm).

    `drop_path` acts on the *incoming* hidden state, as in the official code: block i drops block i-1's output.
    """

    def __init__(self, dim: int, mixer: MambaMixer, drop_path: float = 0., norm_eps: float = 1e-5,
                 device=None, dtype=None):
        super().__init__()
        self.mixer = mixer
        self.norm = RmsNormF32(dim, eps=norm_eps, device=device, dtype=dtype)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, hidden: torch.Tensor, residual: Optional[torch.Tensor] = None,
                reverse: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        if residual is not None:
            hidden = self.drop_path(hidden)
        normed, residual = self.norm(hidden, residual)
        return self.mixer(normed, reverse=reverse), residual


class LatentAttentionPool(nn.Module):
    """Attention pooling with one learned latent query, no query/output projection and no MLP, then LayerNorm.

    LBVim-528's head: the official `AttentionPoolLatentCus(map_q=False, use_proj=False, use_mlp=False,
    post_norm=True)`; parameter names `latent`, `kv`, `post_norm` match it. timm's `AttentionPoolLatent` always has
    q / proj / mlp weights.
    """

    def __init__(self, dim: int, num_heads: int = 6, device=None, dtype=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} must be divisible by num_heads {num_heads}.')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, dim, device=device, dtype=dtype))
        self.kv = nn.Linear(dim, 2 * dim, bias=True, device=device, dtype=dtype)
        self.post_norm = nn.LayerNorm(dim, device=device, dtype=dtype)
        trunc_normal_tf_(self.latent, std=dim ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q = self.latent.expand(B, -1, -1).reshape(B, 1, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q.to(k.dtype), k, v)  # (B, heads, 1, head_dim)
        return self.post_norm(x.transpose(1, 2).reshape(B, C))


def split_mid_cls_pos_embed(pos_embed: torch.Tensor, num_prefix: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """(1, M + 1, C) with the class slot at M // 2 -> (class entry (1, 1, C), patch grid entries (1, M, C))."""
    if num_prefix == 0:
        return pos_embed[:, :0], pos_embed
    mid = (pos_embed.shape[1] - 1) // 2
    return pos_embed[:, mid:mid + 1], torch.cat([pos_embed[:, :mid], pos_embed[:, mid + 1:]], dim=1)


def join_mid_cls_pos_embed(cls_pos: torch.Tensor, grid_pos: torch.Tensor) -> torch.Tensor:
    """Inverse of `split_mid_cls_pos_embed`: insert the class entry at the middle (index M // 2) of M grid entries."""
    if cls_pos.shape[1] == 0:
        return grid_pos
    mid = grid_pos.shape[1] // 2
    return torch.cat([grid_pos[:, :mid], cls_pos, grid_pos[:, mid:]], dim=1)


@register_notrace_function  # reason: compares grid sizes taken from the input
def resample_mid_cls_pos_embed(pos_embed: torch.Tensor, new_size: List[int], old_size: List[int],
                               num_prefix: int = 1, interpolation: str = 'bicubic',
                               antialias: bool = True) -> torch.Tensor:
    """Resample a Vim position embedding whose class slot sits in the MIDDLE of the patch tokens.

    timm's `resample_abs_pos_embed` assumes prefix tokens at index 0; the class entry is cut out at M // 2, the grid
    resampled, and the entry reinserted at the new middle M' // 2 (where the model inserts the class token).
    """
    if new_size[0] == old_size[0] and new_size[1] == old_size[1]:
        return pos_embed
    cls_pos, grid_pos = split_mid_cls_pos_embed(pos_embed, num_prefix)
    grid_pos = resample_abs_pos_embed(grid_pos, [new_size[0], new_size[1]], [old_size[0], old_size[1]],
                                      num_prefix_tokens=0, interpolation=interpolation, antialias=antialias)
    return join_mid_cls_pos_embed(cls_pos, grid_pos)


class VisionMamba(nn.Module):
    """Vision Mamba backbone + classifier, timm style; Vim and LBVim are configurations of this one class.

    Args beyond the usual timm ones:
        stride: patch-embedding stride (16, or 8 for the "+" models).
        global_pool: 'token' (the middle class token, Vim), 'avg' (mean of the patch tokens, LBVim), 'map' (latent
            attention pool `attn_pool`, LBVim-528) or '' (all tokens).
        class_token: insert a learned class token in the middle of the patch sequence (Vim) or not (LBVim).
        bidirectional: Vim-v2 mixer with `_b` parameters (Vim) or a single-direction mixer (LBVim).
        local_window: LBMamba's locally bi-directional scan: None (off, Vim), 'auto' (the official kernel's W(L),
            LBVim) or a fixed window W.
        alternate_direction: scan right-to-left in every odd layer (LBVim's per-layer sequence flip, done without
            flipping tensors: the mixer runs mirrored, so hidden states always stay in the original token order).
        attn_pool_heads: heads of the 'map' pool.
        dynamic_img_size: resample `pos_embed` on the fly to the input's patch grid (default, any size of at least
            one patch); False pins the input to `img_size` like timm's ViT (`set_input_size` changes it).
        scan_backend: vimzoo.ops backend for conv + scan ('reference', 'cpu', 'cuda'; None = automatic).
    """
    dynamic_img_size: Final[bool]
    alternate_direction: Final[bool]

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            stride: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 192,
            depth: int = 24,
            d_state: int = 16,
            d_conv: int = 4,
            expand: int = 2,
            dt_rank: Union[int, str] = 'auto',
            norm_eps: float = 1e-5,
            class_token: bool = True,
            bidirectional: bool = True,
            divide_out: bool = True,
            local_window: Optional[Union[int, str]] = None,
            alternate_direction: bool = False,
            attn_pool_heads: int = 6,
            dynamic_img_size: bool = True,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            scan_backend: Optional[str] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if global_pool not in ('token', 'avg', 'map', ''):
            raise ValueError(f"global_pool must be 'token', 'avg', 'map' or '', got {global_pool!r}.")
        if global_pool == 'token' and not class_token:
            global_pool = 'avg'
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.alternate_direction = alternate_direction
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(patch_size, stride, in_chans, embed_dim, img_size, **dd)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd)) if class_token else None
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.patch_embed.num_patches + self.num_prefix_tokens, embed_dim, **dd))
        self.pos_drop = nn.Dropout(drop_rate)
        # head (and pool) created before the layers: official state_dict order
        self.attn_pool = LatentAttentionPool(embed_dim, attn_pool_heads, **dd) if global_pool == 'map' else None
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        # Official stochastic depth: block i drops with linspace(0, rate, depth)[i - 1] (block 0: none), and a
        # separate DropPath(rate) acts on the last block's output before `norm_f`.
        dpr = [0.] + [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layers = nn.ModuleList([
            MambaBlock(
                embed_dim,
                MambaMixer(embed_dim, d_state, d_conv, expand, dt_rank, bidirectional=bidirectional,
                           divide_out=divide_out, local_window=local_window, scan_backend=scan_backend, **dd),
                drop_path=dpr[i], norm_eps=norm_eps, **dd)
            for i in range(depth)])
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0. else nn.Identity()
        self.norm_f = RmsNormF32(embed_dim, eps=norm_eps, **dd)

        self.feature_info = [dict(num_chs=embed_dim, reduction=self.patch_embed.stride[0], module=f'layers.{i}')
                             for i in range(depth)]
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official init, so training from scratch behaves as upstream (see the research notes on quirks).

        patch_embed: lecun-normal; head (and the pool's kv): trunc-normal(.02); pos_embed / cls_token:
        trunc-normal(.02); every Linear bias zeroed except the dt_proj bias (so `dt_proj_b.bias` is 0, as upstream);
        out_proj: kaiming-uniform(a=√5) divided by √depth.
        """
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        trunc_normal_(self.pos_embed, std=.02)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=.02)
        heads = [self.attn_pool, self.head] if self.attn_pool is not None else [self.head]
        for module in (m for head in heads for m in head.modules()):
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=.02)
                nn.init.zeros_(module.bias)
        for layer in self.layers:
            mixer = layer.mixer
            if mixer.bidirectional:
                nn.init.zeros_(mixer.dt_proj_b.bias)
            nn.init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
            mixer.out_proj.weight.div_(math.sqrt(len(self.layers)))

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Embeddings plus the SSM A / D parameters (the official `_no_weight_decay` flags), as fnmatch patterns."""
        names = {'pos_embed', '*.A_log', '*.A_b_log', '*.D', '*.D_b'}
        if self.cls_token is not None:
            names.add('cls_token')
        if self.attn_pool is not None:
            names.add('attn_pool.latent')
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^cls_token|^pos_embed|^patch_embed',
            blocks=[(r'^layers\.(\d+)', None), (r'^norm_f', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New classifier; the 'map' pool is kept for 'map', removed for any other pooling, never added."""
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ('token', 'avg', 'map', ''):
                raise ValueError(f"global_pool must be 'token', 'avg', 'map' or '', got {global_pool!r}.")
            if global_pool == 'token' and self.cls_token is None:
                raise ValueError('global_pool="token" needs a class token; this model has none (use "avg").')
            if global_pool == 'map' and self.attn_pool is None:
                raise ValueError('the attention pool is part of the architecture; create the model with '
                                 'global_pool="map" instead of switching to it.')
            if global_pool != 'map':
                self.attn_pool = None
            self.global_pool = global_pool
        dd = get_device_dtype(self)
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    @torch.jit.ignore
    def set_input_size(self, img_size: Optional[Union[int, Tuple[int, int]]] = None,
                       patch_size: Optional[Union[int, Tuple[int, int]]] = None) -> None:
        """Change the model's input size (and patch size): `pos_embed` is resampled once, class slot kept mid."""
        prev_grid = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size=img_size, patch_size=patch_size)
        new_grid = self.patch_embed.grid_size
        if new_grid != prev_grid:
            with torch.no_grad():
                pos = resample_mid_cls_pos_embed(self.pos_embed, list(new_grid), list(prev_grid),
                                                 self.num_prefix_tokens)
            self.pos_embed = nn.Parameter(pos, requires_grad=self.pos_embed.requires_grad)
        for info in self.feature_info:
            info['reduction'] = self.patch_embed.stride[0]
        update_model_input_size(self, self.patch_embed.img_size, patch_size=patch_size)

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_input(x, self.in_chans, self.patch_embed.patch_size, 'VisionMamba')
        if not self.dynamic_img_size:
            x = check_input_size(x, self.patch_embed.img_size, 'VisionMamba')
        return x

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x, grid = self.patch_embed(x)
        if self.cls_token is not None:
            mid = x.shape[1] // 2
            x = torch.cat([x[:, :mid], self.cls_token.expand(x.shape[0], -1, -1), x[:, mid:]], dim=1)
        pos_embed = self.pos_embed
        if self.dynamic_img_size:
            base = self.patch_embed.grid_size
            pos_embed = resample_mid_cls_pos_embed(pos_embed, [grid[0], grid[1]], [base[0], base[1]],
                                                   self.num_prefix_tokens)
        return self.pos_drop(x + pos_embed), grid

    def _final_norm(self, hidden: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
        if residual is not None:
            hidden = self.drop_path(hidden)
        if isinstance(self.norm_f, nn.Identity):  # pruned by prune_intermediate_layers(prune_norm=True)
            return hidden if residual is None else (residual + hidden.float()).to(hidden.dtype)
        return self.norm_f(hidden, residual)[0]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised tokens (B, N, C); with a class token it sits at index (N - 1) // 2."""
        hidden, _ = self._embed(self._check_input(x))
        residual: Optional[torch.Tensor] = None
        for idx, layer in enumerate(self.layers):
            reverse = self.alternate_direction and idx % 2 == 1
            if self.grad_checkpointing and not torch.jit.is_scripting():
                hidden, residual = checkpoint(layer, hidden, residual, reverse)
            else:
                hidden, residual = layer(hidden, residual, reverse)
        return self._final_norm(hidden, residual)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pool is not None:
            return self.attn_pool(x)
        if self.global_pool == 'token':
            return x[:, (x.shape[1] - 1) // 2]
        if self.global_pool == 'avg':
            return self._patch_tokens(x).mean(dim=1)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self._pool(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop the middle class token: (B, N, C) -> (B, N - prefix, C) in raster order."""
        if self.num_prefix_tokens:
            mid = (tokens.shape[1] - 1) // 2
            tokens = torch.cat([tokens[:, :mid], tokens[:, mid + 1:]], dim=1)
        return tokens

    def _tokens_to_map(self, tokens: torch.Tensor, grid: Tuple[int, int], output_fmt: str) -> torch.Tensor:
        tokens = self._patch_tokens(tokens)
        if output_fmt == 'NLC':
            return tokens
        tokens = tokens.reshape(tokens.shape[0], grid[0], grid[1], -1)
        return tokens.permute(0, 3, 1, 2).contiguous() if output_fmt == 'NCHW' else tokens

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Block outputs as maps (class token removed, original token order).

        The output of block i is the residual stream after it, `residual + hidden` (what the official ViTDet wrapper
        calls `last_layer_process='add'`); norm=True applies `norm_f` to it. Maps are (B, C, H', W') for 'NCHW',
        (B, H', W', C) for 'NHWC', patch tokens (B, H' * W', C) for 'NLC'.
        """
        if output_fmt not in ('NCHW', 'NHWC', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {output_fmt!r}.")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        hidden, grid = self._embed(self._check_input(x))
        residual: Optional[torch.Tensor] = None
        last = max_index if (stop_early or intermediates_only) else len(self.layers) - 1
        intermediates = []
        for idx, layer in enumerate(self.layers[:last + 1]):
            reverse = self.alternate_direction and idx % 2 == 1
            if self.grad_checkpointing and not torch.jit.is_scripting():
                hidden, residual = checkpoint(layer, hidden, residual, reverse)
            else:
                hidden, residual = layer(hidden, residual, reverse)
            if idx in take_indices:
                if norm and not isinstance(self.norm_f, nn.Identity):
                    feat = self.norm_f(hidden, residual)[0]
                else:
                    feat = (residual + hidden.float()).to(hidden.dtype)
                intermediates.append(self._tokens_to_map(feat, grid, output_fmt))
        if intermediates_only:
            return intermediates
        return self._final_norm(hidden, residual), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def load_pretrained(self, checkpoint_path: str, use_ema: bool = False, strict: bool = True) -> None:
        """Load an official Vim / LBVim or vimzoo checkpoint file: the main weights ('model', what the official
        evaluation loads) unless `use_ema`. timm calls this for `pretrained=True` URL weights and files."""
        load_checkpoint(self, checkpoint_path, checkpoint_filter_fn, use_ema=use_ema, strict=strict)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: VisionMamba, use_ema: bool = False,
                         interpolation: str = 'bicubic', antialias: bool = True) -> Dict[str, torch.Tensor]:
    """Official Vim (and LBVim) checkpoint -> this model.

    * unwraps DeiT-style snapshots (`{'model': ...}` or `'state_dict'`, the EMA copy with `use_ema`; see
      `_helpers.unwrap_checkpoint`) and keeps the model's own classifier where the checkpoint's does not fit;
    * drops the unused RoPE buffers of `if_rope=True` training runs;
    * infers the checkpoint's token grid from its `pos_embed` length (stride 16: 14x14 + 1, stride 8: 27x27 + 1 at
      224) and resamples it to this model's grid with the middle class slot kept in the middle. Loading a stride-16
      checkpoint into a stride-8 model (or vice versa) therefore only resamples `pos_embed`; the conv is shared;
    * maps LBVim-528's official attention-pool head (`head.0.*` pool, `head.1.*` Linear) to `attn_pool.*` / `head.*`.
    """
    state_dict = unwrap_checkpoint(state_dict, use_ema=use_ema, main_keys=('model', 'state_dict'))
    official_map_head = any(k.endswith('head.0.latent') for k in state_dict)
    out = {}
    for k, v in state_dict.items():
        if k.startswith('rope.'):
            continue
        if official_map_head:  # LBVim-528: Sequential(pool, Linear) -> attn_pool, head
            k = 'attn_pool.' + k[len('head.0.'):] if k.startswith('head.0.') else k
            k = 'head.' + k[len('head.1.'):] if k.startswith('head.1.') else k
        if k == 'pos_embed':
            num_prefix = model.num_prefix_tokens
            num_grid = v.shape[1] - num_prefix
            side = int(math.sqrt(num_grid))
            if side * side != num_grid:
                raise ValueError(f'pos_embed of length {v.shape[1]} is not a square grid (+{num_prefix} class slot)')
            v = resample_mid_cls_pos_embed(v, list(model.patch_embed.grid_size), [side, side], num_prefix,
                                           interpolation=interpolation, antialias=antialias)
        out[k] = v
    return match_head(out, model, family='Vim')


def _create_vim(variant: str, pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    out_indices = kwargs.pop('out_indices', 3)
    return build_zoo_model(
        VisionMamba, variant, pretrained,
        filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    # Eval transform of the official `vim/datasets.py`: bicubic resize to 224 / 0.875, centre crop, ImageNet stats.
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2401.09417', 'paper_name': 'Vision Mamba',
        'origin_url': 'https://github.com/hustvl/Vim',
        **kwargs,
    }


def _hf(repo: str, filename: str, **kwargs: Any) -> Dict[str, Any]:
    # the official weights live on the Hub (hustvl/Vim-*-midclstok); the URL is timm's fallback without huggingface_hub
    url = f'https://huggingface.co/{repo}/resolve/main/{filename}'
    return _cfg(**released_weights(url, filename, hf_hub_id=repo), **kwargs)


default_cfgs = generate_default_cfgs({
    'vim_tiny_patch16_224.in1k': _hf('hustvl/Vim-tiny-midclstok', 'vim_t_midclstok_76p1acc.pth'),
    'vim_tiny_patch16_stride8_224.in1k': _hf('hustvl/Vim-tiny-midclstok', 'vim_t_midclstok_ft_78p3acc.pth'),
    'vim_small_patch16_224.in1k': _hf('hustvl/Vim-small-midclstok', 'vim_s_midclstok_80p5acc.pth'),
    'vim_small_patch16_stride8_224.in1k': _hf('hustvl/Vim-small-midclstok', 'vim_s_midclstok_ft_81p6acc.pth'),
    'vim_base_patch16_224.in1k': _hf('hustvl/Vim-base-midclstok', 'vim_b_midclstok_81p9acc.pth'),
    'test_vim.untrained': _cfg(input_size=(3, 64, 64), crop_pct=1.0),
})


@register_zoo_model('vim')
def vim_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Vim-Ti (official `vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2`)."""
    model_args = dict(patch_size=16, stride=16, embed_dim=192, depth=24)
    return _create_vim('vim_tiny_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('vim')
def vim_tiny_patch16_stride8_224(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Vim-Ti+ (stride-8 patch embedding, fine-tuned from Vim-Ti)."""
    model_args = dict(patch_size=16, stride=8, embed_dim=192, depth=24)
    return _create_vim('vim_tiny_patch16_stride8_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('vim')
def vim_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Vim-S."""
    model_args = dict(patch_size=16, stride=16, embed_dim=384, depth=24)
    return _create_vim('vim_small_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('vim')
def vim_small_patch16_stride8_224(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Vim-S+ (stride-8 patch embedding, fine-tuned from Vim-S)."""
    model_args = dict(patch_size=16, stride=8, embed_dim=384, depth=24)
    return _create_vim('vim_small_patch16_stride8_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('vim')
def vim_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Vim-B."""
    model_args = dict(patch_size=16, stride=16, embed_dim=768, depth=24)
    return _create_vim('vim_base_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('vim')
def test_vim(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Tiny Vim for tests: 4 blocks, dim 32, 64x64 input (16 patches + middle class token)."""
    model_args = dict(img_size=64, patch_size=16, stride=16, embed_dim=32, depth=4, d_state=8)
    return _create_vim('test_vim', pretrained=pretrained, **dict(model_args, **kwargs))
