"""Hydra (quasiseparable bidirectional SSM) as a ViT-style timm backbone.

Paper: "Hydra: Bidirectional State Space Models Through Generalized Matrix Mixers" (Hwang, Lahoti, Dao, Gu,
NeurIPS 2024, https://arxiv.org/abs/2407.09941). Official code: https://github.com/goombalab/hydra (Apache-2.0),
which ships the `Hydra` mixer module (GPU-only, through mamba_ssm's Triton SSD scan) and a BERT, but no vision model
and no ImageNet weights.

What this file builds:
* `HydraMixer`: the official `Hydra` module's parameters, names, shapes, initialisation and forward math. A
  state_dict saved from the official module loads with strict=True (tools/parity_hydra.py checks outputs and input
  gradients against it). Its core (both scan directions, the one-token shift and the data-dependent diagonal
  `x * (fc_D(x) + D)`) is one call of `vimzoo.ops.quasiseparable_scan`, which runs on CPU (C++ kernel) and CUDA and
  never materialises a flipped sequence. Gated RMSNorm `rmsnorm(y) * w * silu(z)` (norm before gate) in fp32.
* `HydraBlock`: a pre-norm ViT block with attention replaced by Hydra ("drop-in replacement for attention"):
  x + DropPath(Hydra(LN(x))), then x + DropPath(MLP(LN(x))).
* `HydraViT`: DeiT-style 16x16 conv patch embedding, learned absolute position embedding, 12 blocks, final LayerNorm,
  mean pooling over the tokens (no class token by default; `class_token=True, global_pool='token'` gives one at
  index 0), linear head; T / S / B widths 192 / 384 / 768.

The paper's ImageNet model is ViT-B-sized (its Table 5 compares ViT-B, S4-ViT-B, Hyena-ViT-B, Mamba-ViT-B and Hydra),
but the architecture details of its vision experiment are not in the public code. Where the paper is unspecified
we chose: the official mixer defaults (d_state 64, d_conv 7, expand 2, headdim 64, one group), ViT-B's depth and MLP
ratio, mean pooling and no class token (as the Hyena-ViT-B baseline in the same table), a learned position
embedding (DeiT), timm-ViT initialisation of the Linear layers (trunc-normal 0.02; the only released Hydra training
code, the BERT, also re-initialises every Linear with N(0, 0.02)); the SSM parameters keep the module's own init.
docs/hydra.md lists these choices.
"""
import math
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, PatchEmbed, register_notrace_function, resample_abs_pos_embed, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from torch.jit import Final

from vimzoo.ops import quasiseparable_scan
from vimzoo.zoo import register_zoo_model

from ._input import check_image_input
from ._layers import check_positive_ints

__all__ = ['GatedRMSNorm', 'HydraMixer', 'HydraBlock', 'HydraViT', 'hydra_scan', 'checkpoint_filter_fn']

_NO_DT_LIMIT = (0.0, float('inf'))


@register_notrace_function  # reason: vimzoo.ops validates concrete shapes and dispatches on device / dtype / grad
def hydra_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               dt_b: torch.Tensor, B_b: torch.Tensor, C_b: torch.Tensor, D: torch.Tensor,
               dt_bias: Optional[torch.Tensor], initial_states: Optional[torch.Tensor], dt_softplus: bool,
               backend: Optional[str]) -> torch.Tensor:
    """`vimzoo.ops.quasiseparable_scan`; under TorchScript (which cannot script its Python checks) the op itself."""
    if not torch.jit.is_scripting():
        return quasiseparable_scan(x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, dt_softplus, initial_states,
                                   backend=backend)
    return torch.ops.vimzoo.quasiseparable_scan(x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, initial_states,
                                                dt_softplus, 'auto' if backend is None else backend, True)


@register_notrace_function  # reason: the compute dtype (fp64 for fp64 models, else fp32) follows the parameters
def ssm_parameters(A_log: torch.Tensor, dt_bias: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """A = -exp(A_log) and dt_bias in the compute dtype (the official module takes A_log.float())."""
    cdt = torch.float64 if A_log.dtype == torch.float64 else torch.float32
    return -torch.exp(A_log.to(cdt)), dt_bias.to(cdt)


@register_notrace_function  # reason: the compute dtype follows the input
def limited_dt(dt: torch.Tensor, dt_bias: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """softplus(dt + dt_bias) clamped to [low, high] (the official scan's non-default `dt_limit`)."""
    cdt = torch.float64 if dt.dtype == torch.float64 else torch.float32
    return F.softplus(dt.to(cdt) + dt_bias).clamp(low, high)


@register_notrace_function  # reason: the compute dtype follows the input
def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    cdt = torch.float64 if y.dtype == torch.float64 else torch.float32
    out = F.rms_norm(y.to(cdt), [y.shape[-1]], weight.to(cdt), eps)
    return (out * F.silu(z.to(cdt))).to(y.dtype)


class GatedRMSNorm(nn.Module):
    """`rmsnorm(y) * weight * silu(z)` over all channels, in fp32 (fp64 for fp64; mamba_ssm's `RMSNormGated` with
    norm_before_gate=True and one group, which is what Hydra uses; Mamba-2 gates before the norm)."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return gated_rms_norm(y, z, self.weight, self.eps)


def _check_mixer_args(d_model, d_state, d_conv, expand, headdim, ngroups, dt_limit) -> None:
    """Impossible mixer sizes fail here, with the argument's name, not later inside a kernel."""
    check_positive_ints('HydraMixer', d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand, headdim=headdim,
                        ngroups=ngroups)
    if d_conv % 2 == 0:
        raise ValueError(f'HydraMixer: d_conv must be odd (the conv is centred, padding d_conv // 2), got {d_conv}.')
    d_inner = expand * d_model
    if d_inner % headdim:
        raise ValueError(f'HydraMixer: expand * d_model = {d_inner} must be divisible by headdim = {headdim}.')
    if (d_inner // headdim) % ngroups:
        raise ValueError(f'HydraMixer: the {d_inner // headdim} heads must be divisible by ngroups = {ngroups}.')
    if len(dt_limit) != 2 or not dt_limit[0] <= dt_limit[1]:
        raise ValueError(f'HydraMixer: dt_limit must be (low, high) with low <= high, got {dt_limit!r}.')


class HydraMixer(nn.Module):
    """The Hydra mixer (official `hydra.modules.hydra.Hydra`, same parameter names and state_dict layout).

    in_proj output channels: [z | x | B | C | B_b | C_b | dt | dt_b]; the centred depthwise conv + SiLU runs once over
    [x | B | C | B_b | C_b] in token order; y = QS(x) with the forward scan on (dt, B, C), the backward scan on
    (dt_b, B_b, C_b), both shifted by one token, plus x * (fc_D(x) + D); out = out_proj(rmsnorm(y) * w * silu(z)).
    The official constructor's arguments are all accepted (so `Hydra(...)` calls port unchanged); `chunk_size`,
    `use_mem_eff_path` and `layer_idx` are speed knobs / bookkeeping of its GPU kernels and change nothing here.
    """
    clamp_dt: Final[bool]
    learnable_init_states: Final[bool]

    def __init__(
            self,
            d_model: int,
            d_state: int = 64,
            d_conv: int = 7,
            conv_init: Optional[float] = None,
            expand: int = 2,
            headdim: int = 64,
            ngroups: int = 1,
            dt_min: float = 0.001,
            dt_max: float = 0.1,
            dt_init_floor: float = 1e-4,
            dt_limit: Tuple[float, float] = _NO_DT_LIMIT,
            learnable_init_states: bool = False,
            activation: str = 'swish',
            bias: bool = False,
            conv_bias: bool = True,
            chunk_size: int = 256,
            use_mem_eff_path: bool = False,
            layer_idx: Optional[int] = None,
            scan_backend: Optional[str] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        _check_mixer_args(d_model, d_state, d_conv, expand, headdim, ngroups, tuple(dt_limit))
        if activation not in ('silu', 'swish'):
            raise ValueError(f"HydraMixer: activation must be 'silu' or 'swish' (as upstream), got {activation!r}.")
        del chunk_size, use_mem_eff_path, layer_idx   # the official kernels' speed knobs / bookkeeping: same math
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.headdim, self.ngroups = headdim, ngroups
        self.nheads = self.d_inner // headdim
        self.dt_limit = (float(dt_limit[0]), float(dt_limit[1]))
        self.clamp_dt = self.dt_limit != _NO_DT_LIMIT
        self.learnable_init_states = learnable_init_states
        self.scan_backend = scan_backend
        self.conv_dim = self.d_inner + 4 * ngroups * d_state

        # Registration order follows the official module, so state_dict() order matches too.
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 4 * ngroups * d_state + 2 * self.nheads, bias=bias, **dd)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv // 2,
                                bias=conv_bias, **dd)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        self.init_states = nn.Parameter(torch.zeros(self.nheads, headdim, d_state, **dd)) \
            if learnable_init_states else None
        self.dt_bias = nn.Parameter(torch.empty(self.nheads, **dd))
        self.A_log = nn.Parameter(torch.empty(self.nheads, **dd))
        self.D = nn.Parameter(torch.empty(self.nheads, **dd))
        self.fc_D = nn.Linear(self.d_inner, self.nheads, bias=False, **dd)
        self.norm = GatedRMSNorm(self.d_inner, eps=1e-5, **dd)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **dd)
        self._dt_init = (dt_min, dt_max, dt_init_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """The official init: dt_bias = softplus⁻¹ of log-uniform dt in [dt_min, dt_max] (floored), A_log = 0
        (A = -1 for every head, unlike Mamba-2's U[1, 16]), D = 1, initial states 0."""
        dt_min, dt_max, floor = self._dt_init
        if self.dt_bias.device.type == 'meta':
            return
        dt = torch.exp(torch.rand(self.nheads, device=self.dt_bias.device) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.zero_()
        self.D.fill_(1.0)
        if self.init_states is not None:
            self.init_states.zero_()

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, L, d_model) -> (B, L, d_model)."""
        di, gn, h = self.d_inner, self.ngroups * self.d_state, self.nheads
        zxbcdt = self.in_proj(u)
        z = zxbcdt[..., :di]
        xbc = F.silu(self.conv1d(zxbcdt[..., di:di + self.conv_dim].transpose(1, 2)).transpose(1, 2))
        x = xbc[..., :di]
        heads, groups = (h, self.headdim), (self.ngroups, self.d_state)
        b_f, c_f = xbc[..., di:di + gn].unflatten(-1, groups), xbc[..., di + gn:di + 2 * gn].unflatten(-1, groups)
        b_b, c_b = (xbc[..., di + 2 * gn:di + 3 * gn].unflatten(-1, groups),
                    xbc[..., di + 3 * gn:].unflatten(-1, groups))
        dt_f, dt_b = zxbcdt[..., di + self.conv_dim:di + self.conv_dim + h], zxbcdt[..., di + self.conv_dim + h:]
        A, bias = ssm_parameters(self.A_log, self.dt_bias)
        dt_bias: Optional[torch.Tensor] = bias
        softplus = True
        if self.clamp_dt:   # clamp after the softplus, as the official scan does with a non-default dt_limit
            dt_f = limited_dt(dt_f, bias, self.dt_limit[0], self.dt_limit[1])
            dt_b = limited_dt(dt_b, bias, self.dt_limit[0], self.dt_limit[1])
            dt_bias = None
            softplus = False
        diag = F.linear(x, self.fc_D.weight, self.D.to(x.dtype))     # (B, L, H): data-dependent per-head diagonal
        init: Optional[torch.Tensor] = None
        if self.init_states is not None:
            init = self.init_states.unsqueeze(0).expand(u.shape[0], -1, -1, -1)
        y = hydra_scan(x.unflatten(-1, heads), dt_f, A, b_f, c_f, dt_b, b_b, c_b, diag, dt_bias, init, softplus,
                       self.scan_backend)
        return self.out_proj(self.norm(y.flatten(-2), z))


class HydraBlock(nn.Module):
    """Pre-norm ViT block with Hydra as the token mixer: x + DropPath(Hydra(LN(x))), x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim: int, mlp_ratio: float = 4., proj_drop: float = 0., drop_path: float = 0.,
                 norm_layer: Callable[..., nn.Module] = nn.LayerNorm, act_layer: Callable[..., nn.Module] = nn.GELU,
                 mixer_kwargs: Optional[Dict[str, Any]] = None, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm1 = norm_layer(dim, **dd)
        self.mixer = HydraMixer(dim, **(mixer_kwargs or {}), **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.mixer(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


@register_notrace_function  # reason: resampling depends on the input's token grid
def _resize_pos_embed(pos_embed: torch.Tensor, grid: List[int], old_grid: List[int], num_prefix: int) -> torch.Tensor:
    if grid[0] == old_grid[0] and grid[1] == old_grid[1]:
        return pos_embed
    return resample_abs_pos_embed(pos_embed, grid, old_grid, num_prefix_tokens=num_prefix)


class HydraViT(nn.Module):
    """ViT-style image classifier / backbone whose token mixer is Hydra.

    Args beyond timm ViT's: `mixer_kwargs` go to every `HydraMixer` (d_state, d_conv, expand, headdim, ngroups,
    learnable_init_states, dt_limit, ...); `scan_backend` picks the vimzoo.ops backend (None = automatic).
    `dynamic_img_size=True` accepts any input whose sides are multiples of the patch size (the position embedding is
    resampled on the fly, as timm's ViT does; `dynamic_img_pad=True` pads other sizes); otherwise inputs must be
    `img_size` (`set_input_size` changes it).
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 768,
            depth: int = 12,
            mlp_ratio: float = 4.,
            class_token: bool = False,
            pos_embed: str = 'learn',
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            mixer_kwargs: Optional[Dict[str, Any]] = None,
            scan_backend: Optional[str] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if global_pool not in ('', 'avg', 'token'):
            raise ValueError(f"global_pool must be '', 'avg' or 'token', got {global_pool!r}.")
        if global_pool == 'token' and not class_token:
            raise ValueError('global_pool="token" needs class_token=True; this model has no class token.')
        if pos_embed not in ('learn', 'none'):
            raise ValueError(f"pos_embed must be 'learn' or 'none', got {pos_embed!r}.")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.in_chans = in_chans
        self.num_prefix_tokens = 1 if class_token else 0
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim,
                                      output_fmt='NHWC' if dynamic_img_size else None,
                                      strict_img_size=not dynamic_img_size, dynamic_img_pad=dynamic_img_pad, **dd)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd)) if class_token else None
        num_pos = self.patch_embed.num_patches + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, num_pos, embed_dim, **dd)) if pos_embed == 'learn' else None
        self.pos_drop = nn.Dropout(pos_drop_rate)
        mixer_kwargs = dict(mixer_kwargs or {}, scan_backend=scan_backend)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]   # timm ViT's linear rule
        norm_layer = _layer_norm
        self.blocks = nn.Sequential(*[
            HydraBlock(embed_dim, mlp_ratio, proj_drop_rate, dpr[i], norm_layer, nn.GELU, mixer_kwargs, **dd)
            for i in range(depth)])
        reduction = self.patch_embed.feat_ratio()
        self.feature_info = [dict(num_chs=embed_dim, reduction=reduction, module=f'blocks.{i}') for i in range(depth)]
        self.norm = norm_layer(embed_dim, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm ViT's init: trunc-normal(.02) for the position embedding, class token and every Linear (zero bias);
        LayerNorms at 1 / 0; the conv layers and the SSM parameters (dt_bias, A_log, D) keep their own init."""
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Embeddings and the SSM parameters the official module flags `_no_weight_decay` (init_states is 3-D, so
        timm's 1-D rule alone would miss it)."""
        return {'pos_embed', 'cls_token', '*.dt_bias', '*.A_log', '*.D', '*.init_states'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^cls_token|^pos_embed|^patch_embed',
                    blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ('', 'avg', 'token'):
                raise ValueError(f"global_pool must be '', 'avg' or 'token', got {global_pool!r}.")
            if global_pool == 'token' and self.cls_token is None:
                raise ValueError('global_pool="token" needs a class token; this model has none (use "avg").')
            self.global_pool = global_pool
        ref = self.patch_embed.proj.weight   # keeps the model's device, dtype and train / eval mode
        self.head = nn.Linear(self.embed_dim, num_classes, device=ref.device, dtype=ref.dtype) \
            if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    def set_input_size(self, img_size: Optional[Tuple[int, int]] = None,
                       patch_size: Optional[Tuple[int, int]] = None) -> None:
        """Change the input resolution (and patch size); the position embedding is resampled once."""
        prev_grid = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size=img_size, patch_size=patch_size)
        if self.pos_embed is not None and self.patch_embed.grid_size != prev_grid:
            self.pos_embed = nn.Parameter(
                resample_abs_pos_embed(self.pos_embed.detach(), list(self.patch_embed.grid_size), list(prev_grid),
                                       num_prefix_tokens=self.num_prefix_tokens),
                requires_grad=self.pos_embed.requires_grad)
        self.feature_info = [dict(d, reduction=self.patch_embed.feat_ratio()) for d in self.feature_info]

    # ------------------------------------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> None:
        check_image_input(x, self.in_chans, self.patch_embed.patch_size, 'HydraViT')

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Patch tokens (+ class token at index 0) + position embedding; returns the token grid too."""
        x = self.patch_embed(x)
        if self.dynamic_img_size:
            grid = (x.shape[1], x.shape[2])
            x = x.flatten(1, 2)
        else:
            grid = (self.patch_embed.grid_size[0], self.patch_embed.grid_size[1])
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        if self.pos_embed is not None:
            pos = self.pos_embed
            if self.dynamic_img_size:
                pos = _resize_pos_embed(pos, [grid[0], grid[1]],
                                        [self.patch_embed.grid_size[0], self.patch_embed.grid_size[1]],
                                        self.num_prefix_tokens)
            x = x + pos
        return self.pos_drop(x), grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised tokens (B, N, C); with a class token it is token 0."""
        self._check_input(x)
        x, _ = self._embed(x)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x)
            else:
                x = block(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        elif self.global_pool == 'token':
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _tokens_to_map(self, tokens: torch.Tensor, grid: Tuple[int, int], output_fmt: str) -> torch.Tensor:
        tokens = tokens[:, self.num_prefix_tokens:]
        if output_fmt == 'NLC':
            return tokens
        tokens = tokens.reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[-1])
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
        """Block outputs without the class token: (B, C, H', W') maps ('NCHW'), (B, H', W', C) ('NHWC') or the
        patch tokens (B, N, C) ('NLC'); norm=True applies the final LayerNorm to them."""
        if output_fmt not in ('NCHW', 'NHWC', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {output_fmt!r}.")
        self._check_input(x)
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x, grid = self._embed(x)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        intermediates = []
        for idx, block in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x)
            else:
                x = block(x)
            if idx in take_indices:
                feat = self.norm(x) if norm else x
                intermediates.append(self._tokens_to_map(feat, grid, output_fmt))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices


def _layer_norm(dim: int, device=None, dtype=None) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: HydraViT) -> Dict[str, torch.Tensor]:
    """A training snapshot or plain state_dict -> this model: unwraps `{'model': ...}` / `{'state_dict': ...}` and
    `module.` prefixes, resamples `pos_embed` to the model's token grid (square checkpoint grids)."""
    for key in ('model', 'state_dict', 'model_ema'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    out = {}
    for k, v in state_dict.items():
        k = k[7:] if k.startswith('module.') else k
        if k == 'pos_embed' and model.pos_embed is not None and v.shape != model.pos_embed.shape:
            num_grid = v.shape[1] - model.num_prefix_tokens
            side = int(math.sqrt(num_grid))
            if side * side != num_grid:
                raise ValueError(f'pos_embed of length {v.shape[1]} is not a square grid '
                                 f'(+{model.num_prefix_tokens} prefix tokens).')
            v = resample_abs_pos_embed(v, list(model.patch_embed.grid_size), [side, side],
                                       num_prefix_tokens=model.num_prefix_tokens)
        out[k] = v
    return out


def _create_hydra(variant: str, pretrained: bool = False, **kwargs: Any) -> HydraViT:
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(
        HydraViT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    # DeiT's eval transform (bicubic resize to 224 / 0.875, centre crop, ImageNet mean / std).
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2407.09941',
        'paper_name': 'Hydra: Bidirectional State Space Models Through Generalized Matrix Mixers',
        'origin_url': 'https://github.com/goombalab/hydra',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'hydra_tiny_patch16_224.untrained': _cfg(),
    'hydra_small_patch16_224.untrained': _cfg(),
    'hydra_base_patch16_224.untrained': _cfg(),
    'test_hydra.untrained': _cfg(input_size=(3, 64, 64), crop_pct=1.0),
})


@register_zoo_model('hydra')
def hydra_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> HydraViT:
    """Hydra-T: DeiT-T width (192), 12 blocks, 6 Hydra heads of 64 channels."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12)
    return _create_hydra('hydra_tiny_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('hydra')
def hydra_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> HydraViT:
    """Hydra-S: DeiT-S width (384), 12 blocks, 12 Hydra heads."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12)
    return _create_hydra('hydra_small_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('hydra')
def hydra_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> HydraViT:
    """Hydra-B: ViT-B / DeiT-B width (768), 12 blocks, 24 Hydra heads (the paper's ImageNet scale)."""
    model_args = dict(patch_size=16, embed_dim=768, depth=12)
    return _create_hydra('hydra_base_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('hydra')
def test_hydra(pretrained: bool = False, **kwargs: Any) -> HydraViT:
    """Tiny Hydra for tests: 4 blocks, dim 32, 4 heads of 16 channels, d_state 8, 64x64 input (16 patches)."""
    model_args = dict(img_size=64, patch_size=16, embed_dim=32, depth=4,
                      mixer_kwargs=dict(d_state=8, headdim=16))
    kwargs = dict(kwargs)
    if 'mixer_kwargs' in kwargs:
        model_args['mixer_kwargs'] = dict(model_args['mixer_kwargs'], **kwargs.pop('mixer_kwargs'))
    return _create_hydra('test_hydra', pretrained=pretrained, **dict(model_args, **kwargs))
