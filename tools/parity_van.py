#!/usr/bin/env python
"""Numerical parity of vimzoo's VAN against the official VAN-Classification code.

The official code is imported at run time from a checkout the user supplies (nothing of it lives in this repo):

    git clone https://github.com/Visual-Attention-Network/VAN-Classification /tmp/VAN-Classification
    python tools/parity_van.py --official-repo /tmp/VAN-Classification [--variants van_b0 van_b1 ...]

For each variant the official model is built and *every* parameter and buffer is overwritten with random values
(including BN running stats and the layer scales, which are 1e-2 at init and would otherwise hide errors in the
branches). Its state_dict is wrapped as the official checkpoints are (`{'state_dict': ...}`), passed through
`vimzoo.models.van.checkpoint_filter_fn` and loaded strictly into the vimzoo model. Logits (eval mode), pre-logit
features and, for the first variant, train-mode logits (BN batch statistics) are compared on the same random input.
Exit status 1 if any max |diff| exceeds --tol.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = ('van_b0', 'van_b1', 'van_b2', 'van_b3', 'van_b4', 'van_b5', 'van_b6')


def load_official(repo: Path) -> ModuleType:
    """Import `<repo>/models/van.py` without letting its `@register_model` overwrite vimzoo's timm entries."""
    path = repo / 'models' / 'van.py'
    if not path.is_file():
        raise SystemExit(f'{path} not found: pass the root of a VAN-Classification checkout as --official-repo.')
    import timm.models.registry as timm_registry
    original = timm_registry.register_model
    timm_registry.register_model = lambda fn: fn  # the official file registers van_b0.. under the same names
    try:
        spec = importlib.util.spec_from_file_location('van_official', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        timm_registry.register_model = original
    return module


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not t.is_floating_point():
            continue
        if name.endswith('running_var'):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif name.endswith('running_mean'):
            t.copy_(torch.randn(t.shape, generator=g) * 0.1)
        elif 'layer_scale' in name:
            # well away from the 1e-2 init (so branch errors show) yet small enough that 90-block stages stay finite
            t.copy_(torch.rand(t.shape, generator=g) * 0.08 + 0.02)
        elif name.endswith('weight') and t.ndim == 1:  # norm affine scales
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        else:
            fan_in = t[0].numel() if t.ndim > 1 else 1
            t.copy_(torch.randn(t.shape, generator=g) * (0.5 / fan_in ** 0.5 if t.ndim > 1 else 0.05))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--official-repo', type=Path, required=True, help='VAN-Classification checkout root')
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--tol', type=float, default=1e-4)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    import timm
    import vimzoo  # noqa: F401  (registers the vimzoo models)
    from vimzoo.models.van import checkpoint_filter_fn
    official = load_official(args.official_repo)

    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    worst = 0.
    print(f'torch {torch.__version__}, timm {timm.__version__}, input {tuple(x.shape)}, tol {args.tol:g}')
    print(f'{"variant":8} {"params":>12} {"logits max|d|":>14} {"feats max|d|":>13} {"train max|d|":>13} '
          f'{"logit scale":>11} {"s":>6}')
    for n, name in enumerate(args.variants):
        t0 = time.perf_counter()
        ref = getattr(official, name)().eval()
        randomize_(ref, args.seed + n)
        ours = timm.create_model(name).eval()
        ours.load_state_dict(checkpoint_filter_fn({'state_dict': ref.state_dict()}, ours), strict=True)
        with torch.no_grad():
            ref_logits, our_logits = ref(x), ours(x)
            ref_feats = ref.forward_features(x)
            our_feats = ours.forward_head(ours.forward_features(x), pre_logits=True)
            d_logits = (ref_logits - our_logits).abs().max().item()
            d_feats = (ref_feats - our_feats).abs().max().item()
            d_train = float('nan')
            if n == 0:  # BN batch statistics path (does not touch the compared eval numbers above)
                ref.train(), ours.train()
                d_train = (ref(x) - ours(x)).abs().max().item()
        finite = bool(torch.isfinite(ref_logits).all() and torch.isfinite(our_logits).all())
        if not finite or d_logits != d_logits or d_feats != d_feats:  # a NaN must never read as a pass
            d_logits = float('inf')
        worst = max(worst, d_logits, d_feats, 0. if d_train != d_train else d_train)
        n_params = sum(p.numel() for p in ours.parameters())
        print(f'{name:8} {n_params:12d} {d_logits:14.3e} {d_feats:13.3e} {d_train:13.3e} '
              f'{ref_logits.abs().max().item():11.3e} {time.perf_counter() - t0:6.1f}', flush=True)
        del ref, ours
    ok = worst < args.tol
    print(f'worst max|diff| = {worst:.3e} -> {"PASS" if ok else "FAIL"} (tol {args.tol:g})')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
