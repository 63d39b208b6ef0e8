#!/usr/bin/env python
"""Numeric parity of vimzoo's Vim against the official hustvl/Vim model code, on CPU.

The official `vim/models_mamba.py` and `mamba-1p1p1/mamba_ssm/modules/mamba_simple.py` are imported from a checkout
the user provides (`--official-repo PATH`); nothing from that repository is copied here. Its CUDA-only imports are
replaced at run time by small pure-PyTorch stand-ins written for this script:

* `mamba_ssm.ops.selective_scan_interface.mamba_inner_fn_no_out_proj` / `mamba_inner_fn`: depthwise causal conv
  (F.conv1d, left padding) + SiLU, x_proj, dt_proj, and a sequential selective scan in fp32 (the math of mamba's
  `selective_scan_ref`: softplus(delta + bias), h_t = exp(delta A) h_{t-1} + delta B u, y = C h + D u, * silu(z));
* `mamba_ssm.ops.triton.layer_norm.RMSNorm / rms_norm_fn`: fused add + RMSNorm in fp32 (`rms_norm_ref` semantics);
* `causal_conv1d`, `mamba_ssm.utils.*`, `selective_state_update`: unused placeholders.

So the official code contributes the architecture (bidirectional v2 mixer with `xz.flip`, `_b` parameters, `/2`,
middle class token, fp32 residual, block wiring); the stand-ins contribute only the kernels' math. Our model (which
never flips tensors: anti-causal conv + reverse scan) loads the same random weights, both run in fp32 eval mode,
and the script reports max |delta| of logits (and, with --grads, of every parameter gradient).

Requirements: the official checkout (`git clone https://github.com/hustvl/Vim`) and `einops` (imported by the
official files; `pip install einops`, or `--extra-path DIR` pointing at a directory that has it).

    python tools/parity_vim.py --official-repo /tmp/Vim --variants test tiny lbvim_test lbvim_tiny --grads --controls

LBVim: the LBMamba repository (cvlab-stonybrook/LBMamba) could not be checked out here, so the LBVim variants run
the official *Vim* code configured as LBMamba's BiVisionMamba is (read in its `classification/models_mamba_bi.py`
and `mamba_ssm/modules/mamba_simple.py`: same Block / init / mixer wiring with `bimamba_type='none'`, no class
token, mean pool), plus the per-layer flip of hidden and residual, with the stand-in kernel running the LB scan.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import types
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------------
# Pure-PyTorch stand-ins for the CUDA / Triton kernels the official code imports
# ----------------------------------------------------------------------------------------------------------------


# LBVim mode: when set, the stand-in kernels run LBMamba's locally bi-directional scan with the official kernel's
# window for the sequence length (4 up to 128 tokens, 8 up to 256, else 16; research notes section 3.2).
LB_MODE = {'on': False}


def _kernel_window(length: int) -> int:
    window = 4 if length <= 128 else 8 if length <= 256 else 16
    return 2 * window if CONTROL['name'] == 'double_window' else window


def _scan_fp32(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, **_):
    """Sequential selective scan. u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l); D, delta_bias: (d,).

    In LB mode every state also gets the local backward term a_t * hb_{t+1}, hb reset at each window end.
    """
    dtype = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(delta.unsqueeze(-1) * A.float()[None, :, None, :])          # (b, d, l, n)
    drive = (delta * u).unsqueeze(-1) * B.float().transpose(1, 2)[:, None]       # (b, d, l, n)
    c = C.float().transpose(1, 2)                                                # (b, l, n)
    length = u.shape[-1]
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    states = []
    for t in range(length):
        h = decay[:, :, t] * h + drive[:, :, t]
        states.append(h)
    if LB_MODE['on']:
        window, hb = _kernel_window(length), torch.zeros_like(h)
        for t in range(length - 1, -1, -1):
            if (t + 1) % window == 0 or t == length - 1:
                hb = torch.zeros_like(h)
            local = decay[:, :, t] * hb
            hb = local + drive[:, :, t]
            states[t] = states[t] + local
    y = torch.stack([torch.einsum('bdn,bn->bd', states[t], c[:, t]) for t in range(length)], dim=-1)
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def _inner_no_out_proj(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B=None, C=None, D=None,
                       delta_bias=None, B_proj_bias=None, C_proj_bias=None, delta_softplus=True, **_):
    assert B is None and C is None, 'only input-dependent B / C are used by Vim'
    length, width = xz.shape[-1], conv1d_weight.shape[-1]
    d_state, rank = A.shape[-1], delta_proj_weight.shape[1]
    x, z = xz.chunk(2, dim=1)
    weight = conv1d_weight if conv1d_weight.dim() == 3 else conv1d_weight[:, None]
    xc = F.silu(F.conv1d(x, weight, conv1d_bias, padding=width - 1, groups=x.shape[1])[..., :length])
    x_dbl = F.linear(xc.transpose(1, 2), x_proj_weight)                          # (b, l, rank + 2 n)
    delta = F.linear(x_dbl[..., :rank], delta_proj_weight).transpose(1, 2)
    b_mat = x_dbl[..., rank:rank + d_state].transpose(1, 2)
    c_mat = x_dbl[..., rank + d_state:].transpose(1, 2)
    return _scan_fp32(xc, delta, A, b_mat, c_mat, D, z, delta_bias, delta_softplus)


def _inner(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias, A,
           B=None, C=None, D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None, delta_softplus=True, **_):
    y = _inner_no_out_proj(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C, D, delta_bias,
                           delta_softplus=delta_softplus)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def _rms_norm_fn(x, weight, bias, residual=None, eps=1e-6, prenorm=False, residual_in_fp32=False, **_):
    summed = x.float() if residual is None else x.float() + residual.float()
    out = summed * torch.rsqrt(summed.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    if bias is not None:
        out = out + bias.float()
    out = out.to(x.dtype)
    residual_out = summed if residual_in_fp32 else summed.to(x.dtype)
    return (out, residual_out) if prenorm else out


class _RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-5, dropout_p=0.0, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter('bias', None)

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return _rms_norm_fn(x, self.weight, None, residual=residual, eps=self.eps, prenorm=prenorm,
                            residual_in_fp32=residual_in_fp32)


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def install_stubs(official_repo: str) -> None:
    """Make `import models_mamba` work on CPU: real mamba_simple.py, stand-in kernels."""
    mamba_pkg = os.path.join(official_repo, 'mamba-1p1p1', 'mamba_ssm')
    vim_dir = os.path.join(official_repo, 'vim')
    for path in (mamba_pkg, vim_dir):
        if not os.path.isdir(path):
            raise SystemExit(f'{path} not found: --official-repo must be a hustvl/Vim checkout')
    not_available = None
    _module('causal_conv1d', causal_conv1d_fn=not_available, causal_conv1d_update=not_available)
    _module('selective_scan_cuda')
    pkg = _module('mamba_ssm', __path__=[mamba_pkg], __version__='1.1.1')
    ops = _module('mamba_ssm.ops', __path__=[])
    ops.selective_scan_interface = _module(
        'mamba_ssm.ops.selective_scan_interface', selective_scan_fn=_scan_fp32, mamba_inner_fn=_inner,
        bimamba_inner_fn=None, mamba_inner_fn_no_out_proj=_inner_no_out_proj)
    triton = _module('mamba_ssm.ops.triton', __path__=[])
    triton.layer_norm = _module('mamba_ssm.ops.triton.layer_norm', RMSNorm=_RMSNorm, rms_norm_fn=_rms_norm_fn,
                                layer_norm_fn=None)
    triton.selective_state_update = _module('mamba_ssm.ops.triton.selective_state_update',
                                            selective_state_update=None)
    utils = _module('mamba_ssm.utils', __path__=[])
    utils.generation = _module('mamba_ssm.utils.generation', GenerationMixin=type('GenerationMixin', (), {}))
    utils.hf = _module('mamba_ssm.utils.hf', load_config_hf=None, load_state_dict_hf=None)
    pkg.ops, pkg.utils = ops, utils
    sys.path.insert(0, vim_dir)


# ----------------------------------------------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------------------------------------------
OFFICIAL_ARGS = dict(rms_norm=True, residual_in_fp32=True, fused_add_norm=True, final_pool_type='mean',
                     if_abs_pos_embed=True, if_rope=False, if_rope_residual=False, bimamba_type='v2',
                     if_cls_token=True, if_divide_out=True, use_middle_cls_token=True)
# LBVim = LBMamba's BiVisionMamba: the Vim skeleton with `bimamba_type='none'` (one Mamba per layer, whose
# `mamba_inner_fn` is the LB kernel), no class token, mean pooling, and `hidden`/`residual` flipped after every layer.
LBVIM_ARGS = dict(OFFICIAL_ARGS, bimamba_type='none', if_cls_token=False)
VARIANTS = {
    # ours, official constructor kwargs (on top of OFFICIAL_ARGS / LBVIM_ARGS), input size
    'test': ('test_vim', dict(img_size=64, patch_size=16, stride=16, embed_dim=32, depth=4, d_state=8), 64),
    'tiny': ('vim_tiny_patch16_224', dict(patch_size=16, stride=16, embed_dim=192, depth=24), 224),
    'tiny_stride8': ('vim_tiny_patch16_stride8_224', dict(patch_size=16, stride=8, embed_dim=192, depth=24), 224),
    'small': ('vim_small_patch16_224', dict(patch_size=16, stride=16, embed_dim=384, depth=24), 224),
    'lbvim_test': ('test_lbvim', dict(img_size=64, patch_size=16, stride=16, embed_dim=32, depth=4, d_state=8), 64),
    'lbvim_tiny': ('lbvim_tiny_patch16_224', dict(patch_size=16, stride=16, embed_dim=192, depth=24), 224),
}


def _flip_after_every_layer(model: nn.Module) -> None:
    """BiVisionMamba's `layerwise_reverse_sq=True` (no class token): reverse hidden and residual after each layer."""
    for layer in model.layers:
        def forward(hidden_states, residual=None, inference_params=None, _inner=layer.forward):
            hidden_states, residual = _inner(hidden_states, residual, inference_params=inference_params)
            return hidden_states.flip([1]), residual.flip([1])
        layer.forward = forward


def _perturb(model: nn.Module, seed: int) -> None:
    """Random weights everywhere (incl. A_log, D, zero-initialised biases), so every parameter matters.

    The dt biases are raised to softplus(dt) ~ 1 and |A| drawn from [0.05, 2] (the init's tiny steps and fast decays
    make every token's contribution to far tokens' states tiny, which would hide scan-direction or window mistakes).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(('dt_proj.bias', 'dt_proj_b.bias')):
                p.copy_(0.5 + 0.5 * torch.randn(p.shape, generator=gen))
                continue
            if name.endswith(('A_log', 'A_b_log')):  # |A| in [0.05, 2]: long memory, so far tokens matter
                p.copy_(torch.log(0.05 + 1.95 * torch.rand(p.shape, generator=gen)))
                continue
            if name.endswith('out_proj.weight'):  # undo the 1/sqrt(depth) init so every mixer moves the logits
                scale = 0.2
            elif name.endswith(('A_log', 'A_b_log', 'D', 'D_b', 'norm.weight', 'norm_f.weight')):
                scale = 0.1
            else:
                scale = 0.02
            p.add_(torch.randn(p.shape, generator=gen) * scale)


CONTROL = {'name': None}  # negative controls: deliberately wrong official-side settings that parity must catch


def compare(variant: str, backends: List[str], grads: bool, batch: int, seed: int) -> Dict[str, object]:
    import timm
    import vimzoo  # noqa: F401  (registers our models)
    models_mamba = importlib.import_module('models_mamba')
    ours_name, official_kwargs, size = VARIANTS[variant]

    torch.manual_seed(seed)
    ours = timm.create_model(ours_name, drop_path_rate=0.0).eval()
    _perturb(ours, seed)
    lbvim = variant.startswith('lbvim')
    LB_MODE['on'] = lbvim
    official_args = dict(LBVIM_ARGS if lbvim else OFFICIAL_ARGS)
    if CONTROL['name'] == 'cls_at_head':
        official_args['use_middle_cls_token'] = False
    official = models_mamba.VisionMamba(**official_kwargs, **official_args, drop_path_rate=0.0).eval()
    if lbvim and CONTROL['name'] != 'no_flip':
        _flip_after_every_layer(official)
    missing = official.load_state_dict(ours.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    assert list(official.state_dict()) == list(ours.state_dict()), 'state_dict key order differs'

    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    result: Dict[str, object] = dict(variant=variant, model=ours_name, input=list(x.shape),
                                     params=sum(p.numel() for p in ours.parameters()))
    start = time.perf_counter()
    x_off = x.clone().requires_grad_(grads)
    ref = official(x_off)
    result['official_s'] = round(time.perf_counter() - start, 2)
    if grads:
        ref.float().pow(2).mean().backward()
        ref_grads = {n: p.grad for n, p in official.named_parameters()}
    result['logit_abs_max'] = ref.abs().max().item()
    for backend in backends:
        for layer in ours.layers:
            layer.mixer.scan_backend = None if backend == 'auto' else backend
        ours.zero_grad(set_to_none=True)
        start = time.perf_counter()
        x_ours = x.clone().requires_grad_(grads)
        out = ours(x_ours)
        entry: Dict[str, object] = dict(seconds=round(time.perf_counter() - start, 2),
                                        logits_max_abs_diff=(out - ref).abs().max().item())
        with torch.no_grad():
            entry['features_max_abs_diff'] = (  # official forward_features: class token / mean-pooled features
                ours.forward_head(ours.forward_features(x), pre_logits=True) - official.forward_features(x)
            ).abs().max().item()
        if grads:
            out.float().pow(2).mean().backward()
            diffs = {n: (p.grad - ref_grads[n]).abs().max().item() for n, p in ours.named_parameters()}
            worst = max(diffs, key=diffs.get)
            entry.update(grad_max_abs_diff=diffs[worst], grad_worst_param=worst,
                         grad_rel_diff=diffs[worst] / max(ref_grads[worst].abs().max().item(), 1e-30),
                         input_grad_max_abs_diff=(x_ours.grad - x_off.grad).abs().max().item())
        result[backend] = entry
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--official-repo', required=True, help='path of a hustvl/Vim checkout')
    parser.add_argument('--variants', nargs='+', default=['test', 'tiny'], choices=sorted(VARIANTS))
    parser.add_argument('--backends', nargs='+', default=['reference', 'auto'],
                        help="vimzoo.ops backends for our model ('reference', 'cpu', 'auto')")
    parser.add_argument('--grads', action='store_true', help='also compare all parameter gradients')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--tol', type=float, default=1e-4, help='max |delta logits| allowed')
    parser.add_argument('--extra-path', action='append', default=[], help='extra sys.path entry (e.g. for einops)')
    parser.add_argument('--threads', type=int, default=0)
    parser.add_argument('--controls', action='store_true',
                        help='also run negative controls (class token at the head; LB window doubled; no per-layer '
                             'flip) and require each to exceed the tolerance')
    args = parser.parse_args(argv)
    for path in args.extra_path:
        sys.path.insert(0, path)
    if args.threads:
        torch.set_num_threads(args.threads)
    install_stubs(os.path.abspath(args.official_repo))
    ok = True
    for variant in args.variants:
        result = compare(variant, args.backends, args.grads, args.batch, args.seed)
        print(json.dumps(result, indent=1))
        for backend in args.backends:
            ok &= result[backend]['logits_max_abs_diff'] < args.tol
    print('PARITY', 'OK' if ok else 'FAILED', f'(tolerance {args.tol:g} on logits)')
    if args.controls:
        caught = True
        for variant in args.variants:
            names = ['double_window', 'no_flip'] if variant.startswith('lbvim') else ['cls_at_head']
            for name in names:
                CONTROL['name'] = name
                diff = compare(variant, ['auto'], False, args.batch, args.seed)['auto']['logits_max_abs_diff']
                CONTROL['name'] = None
                caught &= diff > args.tol
                print(f'control {variant}/{name}: max |delta logits| = {diff:.3g} '
                      f'({"caught" if diff > args.tol else "NOT caught"})')
        print('CONTROLS', 'OK (every deliberate mismatch exceeds the tolerance)' if caught else 'FAILED')
        ok &= caught
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
