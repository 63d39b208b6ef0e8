"""BiFormer: Vision Transformer with Bi-Level Routing Attention (Zhu et al., CVPR 2023, arXiv 2303.08810).

A 4-stage conv-stem transformer whose token mixer in stages 1-3 is Bi-Level Routing Attention (BRA): the map is cut
into n_win x n_win regions, every region keeps the `topk` regions whose mean key best matches its mean query (the
routing runs on *detached* region means, so it gets no gradient), and each token then attends to the tokens of those
regions only. Stage 4 is plain 8-head self-attention. Both mixers add a depth-wise 5x5 "LePE" conv branch.

Written for vimzoo from the paper and the facts of the official code (rayleizhu/BiFormer, MIT, `models/biformer.py`
+ `ops/bra_legacy.py`). Module names and parameter shapes equal the official state_dict, so the released checkpoints
(weights under 'model') load through `checkpoint_filter_fn`. Numerics follow the legacy BRA the released weights were
trained with, quirks included:

* BRA scales logits (token and routing) by `qk_dim ** -0.5` of the *whole* qk_dim, not the per-head dim;
* BRA's LePE convolves V over the full (padded) map; stage 4's LePE convolves the block input (the norm1 output);
* stage 4 always has 8 heads (the official `AttentionLePE` is built without `num_heads`), qkv without bias;
* auto_pad zero-pads the *normed input* right/bottom before the qkv projection, without masking: padded tokens
  (q = k = v = bias) take part in region means, routing, keys/values and LePE; the output is cropped after `wo`.

Differences in form, not in numbers (see docs/biformer.md):
* the region gather is memory-lean (`region_attention`): keys/values of the routed regions are gathered per region
  chunk with `index_select` inside a custom autograd function that saves only q, kv and the routing indices and
  recomputes the gathered chunk in backward, instead of keeping the topk-times redundant K/V copy alive for the
  backward (official issue #21); `attn_impl='naive'` keeps the official expand + gather formulation;
* auto_pad is on by default (identical output whenever the stage maps divide by n_win, the official classification
  setting), so any input size works; `auto_pad=False` raises a ValueError instead of a bare assert;
* `topk` is clamped to n_win**2 (the official code fails in `torch.topk` for n_win**2 < topk).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, get_device_dtype, register_notrace_function, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs
from timm.models._features import feature_take_indices

from vimzoo.models._helpers import build_zoo_model, load_checkpoint, match_head, released_weights, unwrap_checkpoint
from vimzoo.models._input import check_image_input
from vimzoo.models._layers import check_pooled_head, check_positive_ints, create_pool2d
from vimzoo.zoo import register_zoo_model

__all__ = [
    'BiFormer', 'BiLevelRoutingAttention', 'AttentionLePE', 'region_attention', 'region_attention_naive',
    'checkpoint_filter_fn',
]

# Upper bound on the elements of one gathered K/V chunk (topk * w^2 * (qk_dim + dim) per region). 2**24 fp32 elements
# = 64 MiB; at 224px every stage fits in one chunk for batch <= 8, so chunking only kicks in for large inputs.
DEFAULT_CHUNK_ELEMS = 2 ** 24


# --------------------------------------------------------------------------------------------------------------------
# Region-to-region attention (the token-level half of BRA)
# --------------------------------------------------------------------------------------------------------------------

def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, C) -> (B, heads, L, C/heads): channels split head-major like the official `(m c)` rearrange."""
    return x.reshape(x.shape[0], x.shape[1], num_heads, -1).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, c) -> (B, L, heads*c)."""
    return x.transpose(1, 2).flatten(2)


def _chunks(rows: int, per_row: int, chunk_elems: int) -> List[Tuple[int, int]]:
    step = max(1, chunk_elems // max(per_row, 1))
    return [(a, min(a + step, rows)) for a in range(0, rows, step)]


def _flat_index(r_idx: torch.Tensor) -> torch.Tensor:
    """(N, R, k) region indices per image -> (N*R*k,) row indices into the (N*R, ...) flattened region axis."""
    n, r, _ = r_idx.shape
    offsets = torch.arange(n, device=r_idx.device, dtype=r_idx.dtype).view(n, 1, 1) * r
    return (r_idx + offsets).reshape(-1)


class _RegionAttentionFn(torch.autograd.Function):
    """Routed attention that never keeps topk-fold K/V copies alive between forward and backward.

    Forward gathers the routed regions' K/V for a chunk of query regions, attends, and drops the copy; only q, kv and
    the routing indices are saved. Backward regathers each chunk, recomputes the softmax and scatters dK/dV back with
    `index_add_` (the same reduction the official gather's backward does).
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, kv: torch.Tensor, flat_idx: torch.Tensor, topk: int, num_heads: int,
                scale: float, chunk_elems: int) -> torch.Tensor:
        ctx.save_for_backward(q, kv, flat_idx)
        ctx.cfg = (topk, num_heads, scale, chunk_elems)
        return _region_attention_forward(q, kv, flat_idx, topk, num_heads, scale, chunk_elems)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        q, kv, flat_idx = ctx.saved_tensors
        topk, num_heads, scale, chunk_elems = ctx.cfg
        rows, t, qk_dim = q.shape
        c_kv = kv.shape[-1]
        dtype = torch.promote_types(q.dtype, kv.dtype)
        dq = torch.empty(q.shape, dtype=dtype, device=q.device)
        dkv = torch.zeros(kv.shape, dtype=dtype, device=kv.device)
        grad_out = grad_out.to(dtype)
        for a, b in _chunks(rows, topk * t * c_kv, chunk_elems):
            idx = flat_idx[a * topk:b * topk]
            sel = kv.index_select(0, idx).to(dtype).view(b - a, topk * t, c_kv)
            k, v = _heads(sel[..., :qk_dim], num_heads), _heads(sel[..., qk_dim:], num_heads)
            qs = _heads(q[a:b].to(dtype), num_heads) * scale
            attn = (qs @ k.transpose(-2, -1)).softmax(dim=-1)        # (rows, m, t, topk*t)
            do = _heads(grad_out[a:b], num_heads)                     # (rows, m, t, c_v/m)
            dv = attn.transpose(-2, -1) @ do
            dp = do @ v.transpose(-2, -1)
            ds = attn * (dp - (dp * attn).sum(dim=-1, keepdim=True))  # softmax backward
            dq[a:b] = _merge_heads(ds @ k) * scale
            dk = ds.transpose(-2, -1) @ qs
            dsel = torch.cat([_merge_heads(dk), _merge_heads(dv)], dim=-1).view((b - a) * topk, t, c_kv)
            dkv.index_add_(0, idx, dsel)
        return dq.to(q.dtype), dkv.to(kv.dtype), None, None, None, None, None


def _region_attention_forward(q: torch.Tensor, kv: torch.Tensor, flat_idx: torch.Tensor, topk: int, num_heads: int,
                              scale: float, chunk_elems: int) -> torch.Tensor:
    rows, t, qk_dim = q.shape
    c_kv = kv.shape[-1]
    outs: List[torch.Tensor] = []
    for a, b in _chunks(rows, topk * t * c_kv, chunk_elems):
        sel = kv.index_select(0, flat_idx[a * topk:b * topk]).view(b - a, topk * t, c_kv)
        k, v = _heads(sel[..., :qk_dim], num_heads), _heads(sel[..., qk_dim:], num_heads)
        o = F.scaled_dot_product_attention(_heads(q[a:b], num_heads), k, v, scale=scale)
        outs.append(_merge_heads(o))
    if not outs:   # an empty batch: no rows to attend from
        return q.new_empty((0, t, c_kv - qk_dim))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


@register_notrace_function  # reason: chunking and the autograd-function choice depend on runtime shapes / grad state
def region_attention(q: torch.Tensor, kv: torch.Tensor, r_idx: torch.Tensor, num_heads: int, scale: float,
                     chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> torch.Tensor:
    """Memory-lean routed attention.

    q: (N, R, T, qk_dim) region-partitioned queries; kv: (N, R, T, qk_dim + dim) keys|values; r_idx: (N, R, topk)
    routed region indices per query region. Returns (N, R, T, dim): every query token attends (softmax over the union)
    to the T * topk tokens of its routed regions; heads split the channels head-major.
    Under TorchScript (no custom autograd functions) plain autograd runs the same forward.
    """
    n, r, t, qk_dim = q.shape
    topk = r_idx.shape[-1]
    q2, kv2, flat_idx = q.reshape(n * r, t, qk_dim), kv.reshape(n * r, t, kv.shape[-1]), _flat_index(r_idx)
    if not torch.jit.is_scripting():
        if torch.is_grad_enabled() and (q.requires_grad or kv.requires_grad):
            out = _RegionAttentionFn.apply(q2, kv2, flat_idx, topk, num_heads, scale, chunk_elems)
            return out.view(n, r, t, kv.shape[-1] - qk_dim)
    out = _region_attention_forward(q2, kv2, flat_idx, topk, num_heads, scale, chunk_elems)
    return out.view(n, r, t, kv.shape[-1] - qk_dim)


def region_attention_naive(q: torch.Tensor, kv: torch.Tensor, r_idx: torch.Tensor, num_heads: int,
                           scale: float) -> torch.Tensor:
    """The official formulation (expand + `torch.gather` of a (N, R, topk, T, C) K/V copy, plain autograd).

    Kept as the reference for tests and benchmarks: autograd saves the gathered topk-fold copy for backward.
    """
    n, r, t, qk_dim = q.shape
    topk, c_kv = r_idx.shape[-1], kv.shape[-1]
    sel = torch.gather(kv.unsqueeze(1).expand(-1, r, -1, -1, -1), dim=2,
                       index=r_idx.view(n, r, topk, 1, 1).expand(-1, -1, -1, t, c_kv))
    sel = sel.reshape(n * r, topk * t, c_kv)
    k, v = _heads(sel[..., :qk_dim], num_heads), _heads(sel[..., qk_dim:], num_heads)
    attn = ((_heads(q.reshape(n * r, t, qk_dim), num_heads) * scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return _merge_heads(attn @ v).view(n, r, t, -1)


# --------------------------------------------------------------------------------------------------------------------
# Token mixers
# --------------------------------------------------------------------------------------------------------------------

@register_notrace_function  # reason: the padding amount (and the auto_pad error) depend on the input size
def pad_to_regions(x: torch.Tensor, n_win: int, auto_pad: bool) -> torch.Tensor:
    """Zero-pad an NHWC map right/bottom to multiples of n_win (legacy BRA: the normed input, unmasked)."""
    h, w = x.shape[1], x.shape[2]
    pad_r, pad_b = (n_win - w % n_win) % n_win, (n_win - h % n_win) % n_win
    if pad_r == 0 and pad_b == 0:
        return x
    if not auto_pad:
        raise ValueError(f'BiLevelRoutingAttention: feature map {h}x{w} is not divisible by n_win={n_win}; build '
                         f'the model with auto_pad=True or change the input size / n_win.')
    return F.pad(x, [0, 0, 0, pad_r, 0, pad_b])


@register_notrace_function  # reason: crops only when the input was padded
def crop_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop an NHWC map back to (height, width) after `pad_to_regions`."""
    if x.shape[1] == height and x.shape[2] == width:
        return x
    return x[:, :height, :width].contiguous()


class QKVLinear(nn.Module):
    """One Linear producing [q (qk_dim) | k (qk_dim) | v (dim)]; a wrapper so the key is `attn.qkv.qkv` as released."""

    def __init__(self, dim: int, qk_dim: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.dim, self.qk_dim = dim, qk_dim
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim, bias=bias, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.qkv(x)


class BiLevelRoutingAttention(nn.Module):
    """Bi-Level Routing Attention (legacy-compatible), NHWC in and out.

    Region-level routing: region means of q and k (detached) -> `(q_r * scale) @ k_r^T` -> topk regions per region.
    Token-level attention: each token attends to all tokens of its routed regions. Plus LePE (dw conv on V).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            n_win: int = 7,
            qk_dim: Optional[int] = None,
            qk_scale: Optional[float] = None,
            topk: int = 4,
            side_dwconv: int = 5,
            auto_pad: bool = True,
            attn_impl: str = 'lean',
            chunk_elems: int = DEFAULT_CHUNK_ELEMS,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_positive_ints('BiLevelRoutingAttention', dim=dim, num_heads=num_heads, n_win=n_win)
        self.dim = dim
        self.qk_dim = qk_dim or dim
        if self.qk_dim % num_heads or dim % num_heads:
            raise ValueError(f'qk_dim ({self.qk_dim}) and dim ({dim}) must be divisible by num_heads ({num_heads}).')
        if topk <= 0:
            raise ValueError(f'BiLevelRoutingAttention needs topk >= 1, got {topk}.')
        self.num_heads = num_heads
        self.n_win = n_win
        self.topk = topk
        # NOTE: full qk_dim, not the head dim -- what the released weights were trained with
        self.scale = qk_scale or self.qk_dim ** -0.5
        self.auto_pad = auto_pad
        self.attn_impl = attn_impl
        self.chunk_elems = chunk_elems
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim, **dd)
        self.qkv = QKVLinear(dim, self.qk_dim, **dd)
        self.wo = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h_in, w_in, c = x.shape
        nw = self.n_win
        x = pad_to_regions(x, nw, self.auto_pad)  # zeros on the normed input, before qkv (legacy semantics)
        h, w = x.shape[1] // nw, x.shape[2] // nw
        qk = self.qk_dim

        # (N, H, W, C) -> (N, R = nw*nw, T = h*w, C), regions row-major
        x = x.view(n, nw, h, nw, w, c).permute(0, 1, 3, 2, 4, 5).reshape(n, nw * nw, h * w, c)
        qkv = self.qkv(x)
        q, kv = qkv[..., :qk], qkv[..., qk:]

        # region-level routing on detached region means (the routing gets no gradient)
        with torch.no_grad():
            q_win, k_win = q.detach().mean(dim=2), kv[..., :qk].detach().mean(dim=2)
            logits = (q_win * self.scale) @ k_win.transpose(-2, -1)
            r_idx = torch.topk(logits, k=min(self.topk, nw * nw), dim=-1)[1]

        # LePE: depth-wise conv on V over the whole (padded) map
        v_map = kv[..., qk:].reshape(n, nw, nw, h, w, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, nw * h, nw * w)
        lepe = self.lepe(v_map)

        if self.attn_impl == 'naive':
            out = region_attention_naive(q, kv, r_idx, self.num_heads, self.scale)
        else:
            out = region_attention(q, kv, r_idx, self.num_heads, self.scale, self.chunk_elems)
        out = out.view(n, nw, nw, h, w, c).permute(0, 1, 3, 2, 4, 5).reshape(n, nw * h, nw * w, c)
        out = self.wo(out + lepe.permute(0, 2, 3, 1))
        return crop_to(out, h_in, w_in)


class AttentionLePE(nn.Module):
    """Global multi-head self-attention + LePE on the block input (official stage-4 mixer), NHWC in and out."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, side_dwconv: int = 5,
                 device=None, dtype=None) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads}).')
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        qkv = self.qkv(x).reshape(n, h * w, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = _merge_heads(F.scaled_dot_product_attention(q, k, v, scale=self.scale)).view(n, h, w, c)
        return self.proj(out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


# --------------------------------------------------------------------------------------------------------------------
# Blocks, model
# --------------------------------------------------------------------------------------------------------------------

class BiFormerBlock(nn.Module):
    """NCHW in/out: x + dw3x3(x), then pre-norm attention and MLP residuals in NHWC (LayerNorm eps 1e-6)."""

    def __init__(
            self,
            dim: int,
            drop_path: float = 0.,
            num_heads: int = 8,
            n_win: int = 7,
            qk_dim: Optional[int] = None,
            qk_scale: Optional[float] = None,
            topk: int = 4,
            mlp_ratio: float = 3.,
            side_dwconv: int = 5,
            before_attn_dwconv: int = 3,
            auto_pad: bool = True,
            attn_impl: str = 'lean',
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        # padding is hard-coded to 1 in the official block (before_attn_dwconv is 3 in every released model)
        self.pos_embed = nn.Conv2d(dim, dim, before_attn_dwconv, padding=1, groups=dim, **dd)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **dd)
        if topk > 0:
            self.attn = BiLevelRoutingAttention(dim, num_heads=num_heads, n_win=n_win, qk_dim=qk_dim,
                                                qk_scale=qk_scale, topk=topk, side_dwconv=side_dwconv,
                                                auto_pad=auto_pad, attn_impl=attn_impl, **dd)
        elif topk == -2:
            # the official Block builds AttentionLePE(dim, side_dwconv) -> always its default 8 heads
            self.attn = AttentionLePE(dim, num_heads=8, side_dwconv=side_dwconv, **dd)
        else:
            raise ValueError(f'topk must be >= 1 (routing attention) or -2 (global attention + LePE), got {topk}.')
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **dd)
        hidden = int(mlp_ratio * dim)
        # indices 0 and 3 like the official Sequential(Linear, DWConv|Identity, GELU, Linear)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden, **dd), nn.Identity(), nn.GELU(), nn.Linear(hidden, dim, **dd))
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x.permute(0, 2, 3, 1)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.permute(0, 3, 1, 2)


class BiFormer(nn.Module):
    """BiFormer backbone + classifier.

    Official layout: `downsample_layers[0]` = conv-BN-GELU-conv-BN stem (stride 4), `downsample_layers[1..3]` =
    conv3x3/s2 + BN; `stages[i]` = Sequential of blocks; `norm` = BatchNorm2d; `head` = Linear on the mean token.
    Stage outputs (NCHW, strides 4/8/16/32) are the features; the final BatchNorm belongs to the classifier path.
    """

    def __init__(
            self,
            depths: Sequence[int] = (2, 2, 8, 2),
            embed_dims: Sequence[int] = (64, 128, 256, 512),
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            head_dim: int = 32,
            qk_dims: Optional[Sequence[Optional[int]]] = None,
            qk_scale: Optional[float] = None,
            n_win: int = 7,
            topks: Sequence[int] = (1, 4, 16, -2),
            mlp_ratios: Sequence[float] = (3, 3, 3, 3),
            side_dwconv: int = 5,
            before_attn_dwconv: int = 3,
            auto_pad: bool = True,
            attn_impl: str = 'lean',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        num_stages = len(depths)
        qk_dims = tuple(qk_dims) if qk_dims is not None else tuple(embed_dims)
        if not (len(embed_dims) == len(topks) == len(mlp_ratios) == len(qk_dims) == num_stages == 4):
            raise ValueError('BiFormer needs 4 stages: depths, embed_dims, topks, mlp_ratios, qk_dims of length 4.')
        if attn_impl not in ('lean', 'naive'):
            raise ValueError(f"attn_impl must be 'lean' or 'naive', got {attn_impl!r}.")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.embed_dims = tuple(embed_dims)
        self.num_stages = num_stages
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        c0 = embed_dims[0]
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(in_chans, c0 // 2, 3, stride=2, padding=1, **dd),
            nn.BatchNorm2d(c0 // 2, **dd),
            nn.GELU(),
            nn.Conv2d(c0 // 2, c0, 3, stride=2, padding=1, **dd),
            nn.BatchNorm2d(c0, **dd),
        )])
        for i in range(1, num_stages):
            self.downsample_layers.append(nn.Sequential(
                nn.Conv2d(embed_dims[i - 1], embed_dims[i], 3, stride=2, padding=1, **dd),
                nn.BatchNorm2d(embed_dims[i], **dd),
            ))

        total = sum(depths)
        # python-side linspace (no .item(), so the model builds on the meta device)
        dpr = [drop_path_rate * i / (total - 1) if total > 1 else 0. for i in range(total)]
        self.stages = nn.ModuleList()
        self.feature_info: List[Dict[str, Any]] = []
        cur = 0
        for i in range(num_stages):
            qk_dim = qk_dims[i] or embed_dims[i]
            self.stages.append(nn.Sequential(*[
                BiFormerBlock(
                    embed_dims[i], drop_path=dpr[cur + j], num_heads=max(qk_dim // head_dim, 1), n_win=n_win,
                    qk_dim=qk_dim, qk_scale=qk_scale, topk=topks[i], mlp_ratio=mlp_ratios[i],
                    side_dwconv=side_dwconv, before_attn_dwconv=before_attn_dwconv, auto_pad=auto_pad,
                    attn_impl=attn_impl, **dd)
                for j in range(depths[i])]))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=2 ** (i + 2), module=f'stages.{i}'))
            cur += depths[i]

        self.norm = nn.BatchNorm2d(embed_dims[-1], **dd)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.global_pool = create_pool2d(global_pool)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # official scheme: trunc-normal(.02) Linear weights with zero bias, LayerNorm 1/0, convs/BN PyTorch default
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ---------------------------------------------------------------- timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^downsample_layers\.0\.',
            blocks=r'^(?:downsample_layers|stages)\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.(\d+)', None),
                (r'^downsample_layers\.(\d+)', (0,)),
                (r'^norm\.', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New classifier; global_pool='' (with num_classes=0) returns the unpooled NCHW map, as timm's CNNs do."""
        self.num_classes = num_classes
        pool_type = self.global_pool.pool_type if global_pool is None else global_pool
        self.global_pool = create_pool2d(pool_type)
        dd = get_device_dtype(self)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.global_pool.train(self.training)
        self.head.train(self.training)

    def set_n_win(self, n_win: int) -> None:
        """Change the routing grid (7 for classification, 16 detection, 8 segmentation); n_win has no parameters."""
        for m in self.modules():
            if isinstance(m, BiLevelRoutingAttention):
                m.n_win = n_win

    def set_attn_impl(self, attn_impl: str) -> None:
        """'lean' (memory-lean gather, default) or 'naive' (official expand + gather); same numbers."""
        if attn_impl not in ('lean', 'naive'):
            raise ValueError(f"attn_impl must be 'lean' or 'naive', got {attn_impl!r}.")
        for m in self.modules():
            if isinstance(m, BiLevelRoutingAttention):
                m.attn_impl = attn_impl

    # ---------------------------------------------------------------- forward
    def _run_stage(self, downsample: nn.Module, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(stage, x)
        return stage(x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (contiguous NCHW, strides 4/8/16/32) as the official dense wrappers take them.

        `norm=True` passes the last stage's output through the final BatchNorm (`norm`) when it is requested.
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"BiFormer intermediates support output_fmt 'NCHW' or 'NHWC', got {output_fmt!r}.")
        x = check_image_input(x, self.in_chans, (32, 32), 'BiFormer')
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        intermediates = []
        last = max_index if (stop_early or intermediates_only) else self.num_stages - 1
        for i in range(last + 1):
            x = self._run_stage(self.downsample_layers[i], self.stages[i], x)
            if i in take_indices:
                feat = self.norm(x) if (norm and i == self.num_stages - 1) else x
                feat = feat.permute(0, 2, 3, 1) if output_fmt == 'NHWC' else feat
                intermediates.append(feat.contiguous())
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last one needed (and the final norm / head), e.g. for a features-only net."""
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        for i in range(max_index + 1, self.num_stages):
            self.downsample_layers[i] = nn.Identity()
            self.stages[i] = nn.Identity()
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_input(x, self.in_chans, (32, 32), 'BiFormer')
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = downsample(x)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        check_pooled_head(self.global_pool.pool_type, not isinstance(self.head, nn.Identity))
        x = self.global_pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def load_pretrained(self, checkpoint_path: str, use_ema: bool = False, strict: bool = True) -> None:
        """Load an official BiFormer or vimzoo checkpoint file: the main weights ('model', what the official
        evaluation loads) unless `use_ema`. timm calls this for `pretrained=True` URL weights and files."""
        load_checkpoint(self, checkpoint_path, checkpoint_filter_fn, use_ema=use_ema, strict=strict)


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints, cfgs, entrypoints
# --------------------------------------------------------------------------------------------------------------------

def checkpoint_filter_fn(state_dict: Dict[str, Any], model: BiFormer, use_ema: bool = False
                         ) -> Dict[str, torch.Tensor]:
    """Official BiFormer checkpoints -> vimzoo BiFormer (same keys).

    Unwraps the official container (weights under 'model', what the official evaluation loads; 'state_dict' also
    accepted; the EMA copy with `use_ema`), takes the official dense checkpoints too ('backbone.' prefix; their
    `extra_norms.*` belong to the mm adapter and are dropped), and keeps the model's own head when the checkpoint has
    none or one of another size.
    """
    out: Dict[str, torch.Tensor] = {}
    for k, v in unwrap_checkpoint(state_dict, use_ema=use_ema, main_keys=('model', 'state_dict')).items():
        k = k[len('backbone.'):] if k.startswith('backbone.') else k
        if k.startswith('extra_norms.'):
            continue
        out[k] = v

    model_sd = model.state_dict()
    for i in range(model.num_stages):
        key = f'downsample_layers.{i}.0.weight' if i else 'downsample_layers.0.3.weight'
        if key in out and key in model_sd and out[key].shape[0] != model_sd[key].shape[0]:
            raise ValueError(f'Checkpoint stage {i} has width {out[key].shape[0]} but the model has '
                             f'{model_sd[key].shape[0]} (embed_dims={list(model.embed_dims)}): wrong variant?')
    out = match_head(out, model, family='BiFormer')
    if not isinstance(model.norm, nn.BatchNorm2d):  # pruned for features
        out = {k: v for k, v in out.items() if not k.startswith('norm.')}
    return out


def _create_biformer(variant: str, pretrained: bool = False, **kwargs: Any) -> BiFormer:
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    # 'getter' (forward_intermediates): the official layout keeps all downsample layers in one ModuleList before the
    # stages, so module-order feature extraction (FeatureListNet / flatten_sequential) would run them out of order.
    return build_zoo_model(
        BiFormer,
        variant,
        pretrained,
        filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    # the official eval pipeline: Resize(256/224) bicubic -> CenterCrop -> ImageNet-default mean/std
    return {
        'url': '',
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'min_input_size': (3, 32, 32),
        'crop_pct': 0.875,
        'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'downsample_layers.0.0',
        'classifier': 'head',
        'license': 'mit',
        'paper_ids': 'arXiv:2303.08810',
        'origin_url': 'https://github.com/rayleizhu/BiFormer',
        **kwargs,
    }


# official OneDrive links (README / models/biformer.py), cached under the official code's file names
# (`{model_key}.pth`); reported dead since 2026-03 (issue #53): use a local file via
# pretrained_cfg_overlay=dict(file=...) -- no hash, weights under 'model'
_ONEDRIVE = 'https://api.onedrive.com/v1.0/shares/s!{}/root/content'


def _onedrive_cfg(share_id: str, file_name: str) -> Dict[str, Any]:
    return _cfg(**released_weights(_ONEDRIVE.format(share_id), file_name))


default_cfgs = generate_default_cfgs({
    'biformer_tiny.in1k': _onedrive_cfg('AkBbczdRlZvChHEOoGkgwgQzEDlM', 'biformer_tiny_in1k.pth'),
    'biformer_small.in1k': _onedrive_cfg('AkBbczdRlZvChHDyM-x9KWRBZ832', 'biformer_small_in1k.pth'),
    'biformer_base.in1k': _onedrive_cfg('AkBbczdRlZvChHI_XPhoadjaNxtO', 'biformer_base_in1k.pth'),
    'test_biformer.untrained': _cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
})

_RELEASED = dict(n_win=7, topks=(1, 4, 16, -2), mlp_ratios=(3, 3, 3, 3), head_dim=32, side_dwconv=5,
                 before_attn_dwconv=3)


@register_zoo_model('biformer')
def biformer_tiny(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    model_args = dict(_RELEASED, depths=(2, 2, 8, 2), embed_dims=(64, 128, 256, 512))
    return _create_biformer('biformer_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('biformer')
def biformer_small(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    model_args = dict(_RELEASED, depths=(4, 4, 18, 4), embed_dims=(64, 128, 256, 512))
    return _create_biformer('biformer_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('biformer')
def biformer_base(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    model_args = dict(_RELEASED, depths=(4, 4, 18, 4), embed_dims=(96, 192, 384, 768))
    return _create_biformer('biformer_base', pretrained=pretrained, **dict(model_args, **kwargs))


@register_zoo_model('biformer')
def test_biformer(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    # 64px input -> stage maps 16/8/4/2; n_win=4 gives 16 regions of 16/4/1 tokens in stages 1-3
    model_args = dict(depths=(1, 1, 2, 1), embed_dims=(16, 32, 48, 64), head_dim=16, n_win=4, topks=(1, 2, 4, -2),
                      mlp_ratios=(2, 2, 2, 2))
    return _create_biformer('test_biformer', pretrained=pretrained, **dict(model_args, **kwargs))
