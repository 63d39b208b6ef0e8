#!/usr/bin/env python
"""Numerical parity (and CPU speed) of vimzoo's BiFormer against the official rayleizhu/BiFormer code.

The official code is imported at run time from a checkout the user supplies; nothing of it lives in this repo:

    git clone https://github.com/rayleizhu/BiFormer /tmp/BiFormer
    pip install --target /tmp/biformer_deps einops          # the official code needs einops; keep it out of your venv
    python tools/parity_biformer.py --official-repo /tmp/BiFormer --extra-path /tmp/biformer_deps \
        [--variants biformer_tiny biformer_small biformer_base] [--bench] [--bench-out CSV]

`fairscale` (imported by the official file only for `checkpoint_wrapper`, unused by the released configs) is
replaced by an in-memory stub when it is not installed; the official `@register_model` is neutralised so it cannot
overwrite vimzoo's timm entries of the same name.

For each variant the official model is built and every parameter and float buffer (BN running stats included) is
overwritten with seeded random values. Its state_dict, wrapped like the released files (`{'model': ...}`), goes
through `vimzoo.models.biformer.checkpoint_filter_fn` and is loaded *strictly* into the vimzoo model (so the key sets
and shapes are identical). Compared on the same random input:
  * eval logits at --img-size (official n_win=7, no padding needed),
  * eval logits at --odd-size with auto_pad=True on both sides (the official det/seg setting; exercises padding),
  * eval logits with n_win=8 / 16 overrides (the official seg / det settings) at 256px and auto_pad,
  * (first variant) train-mode logits and the gradients of every parameter (memory-lean backward vs autograd
    through the official gather).
Exit status 1 if any max |diff| exceeds --tol. With --bench, eval-mode CPU forward latency of both models (same
weights, alternating order, median of --repeats) is printed and written to --bench-out.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import importlib.util
import platform
import statistics
import sys
import time
import types
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = ('biformer_tiny', 'biformer_small', 'biformer_base')


def load_official(repo: Path, extra_paths=()) -> ModuleType:
    """Import `<repo>/models/biformer.py` (+ `ops/bra_legacy.py`) as package `_biformer_official`."""
    path = repo / 'models' / 'biformer.py'
    if not path.is_file() or not (repo / 'ops' / 'bra_legacy.py').is_file():
        raise SystemExit(f'{path} / ops/bra_legacy.py not found: pass the root of a BiFormer checkout.')
    for p in [str(repo), *map(str, extra_paths)]:
        if p not in sys.path:
            sys.path.append(p)
    try:
        importlib.import_module('einops')
    except ImportError:
        raise SystemExit('the official code needs einops: pip install --target DIR einops and pass --extra-path DIR')
    try:
        importlib.import_module('fairscale.nn.checkpoint')
    except ImportError:  # only checkpoint_wrapper is imported; released configs never call it
        fairscale = types.ModuleType('fairscale')
        nn_mod = types.ModuleType('fairscale.nn')
        ckpt = types.ModuleType('fairscale.nn.checkpoint')
        ckpt.checkpoint_wrapper = lambda m, *a, **k: m
        fairscale.nn, nn_mod.checkpoint = nn_mod, ckpt
        sys.modules.update({'fairscale': fairscale, 'fairscale.nn': nn_mod, 'fairscale.nn.checkpoint': ckpt})

    import timm.models
    import timm.models._registry as registry
    saved = timm.models.register_model, registry.register_model
    timm.models.register_model = registry.register_model = lambda fn: fn
    try:
        package = types.ModuleType('_biformer_official')
        package.__path__ = [str(repo / 'models')]
        sys.modules['_biformer_official'] = package
        return importlib.import_module('_biformer_official.biformer')
    finally:
        timm.models.register_model, registry.register_model = saved


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
        elif name.endswith('weight') and t.ndim == 1:  # norm scales
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif t.ndim == 1:  # biases
            t.copy_(torch.randn(t.shape, generator=g) * 0.05)
        else:
            fan_in = t[0].numel()
            t.copy_(torch.randn(t.shape, generator=g) * (0.5 / fan_in ** 0.5))


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float('inf')  # a NaN must never read as a pass
    return (a - b).abs().max().item()


def _pair(official: ModuleType, name: str, seed: int, **kwargs):
    import timm
    from vimzoo.models.biformer import checkpoint_filter_fn
    official_kwargs = {k: v for k, v in kwargs.items() if k != 'n_win'}
    ref = getattr(official, name)(**official_kwargs).eval()
    if 'n_win' in kwargs:  # the official entrypoints hard-code n_win=7; it is a forward-time attribute of BRA
        for m in ref.modules():
            if hasattr(m, 'n_win'):
                m.n_win = kwargs['n_win']
    randomize_(ref, seed)
    ours = timm.create_model(name, **kwargs).eval()
    ours.load_state_dict(checkpoint_filter_fn({'model': ref.state_dict()}, ours), strict=True)
    return ref, ours


def _bench(ref, ours, x, warmup: int, repeats: int):
    times = {'vimzoo': [], 'official': []}
    with torch.inference_mode():
        for _ in range(warmup):
            ours(x), ref(x)
        for i in range(repeats):
            order = (('vimzoo', ours), ('official', ref)) if i % 2 == 0 else (('official', ref), ('vimzoo', ours))
            for impl, model in order:
                t0 = time.perf_counter()
                model(x)
                times[impl].append((time.perf_counter() - t0) * 1e3)
    return times


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--official-repo', type=Path, required=True, help='rayleizhu/BiFormer checkout root')
    parser.add_argument('--extra-path', type=Path, nargs='*', default=[], help='extra sys.path dirs (einops)')
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--odd-size', type=int, nargs=2, default=(230, 197), metavar=('H', 'W'))
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--tol', type=float, default=1e-4)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: leave default)')
    parser.add_argument('--bench', action='store_true', help='also time the CPU forward of both models')
    parser.add_argument('--bench-batch-size', type=int, default=8)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=6)
    parser.add_argument('--bench-out', type=Path, default=ROOT / 'benchmarks' / 'results' / 'biformer_vs_official.csv')
    return parser


def _train_diffs(official, name: str, seed: int, x: torch.Tensor) -> Tuple[float, float]:
    """Train mode (BN batch statistics): max |output diff| and the max |grad difference| over all parameters,
    relative to the largest official gradient entry. (Per-tensor relative errors are meaningless for the conv biases
    right before a train-mode BatchNorm: their true gradient is exactly 0 and both sides only hold ~1e-9 rounding
    noise.)"""
    ref, ours = _pair(official, name, seed)
    ref.train(), ours.train()
    out_ref, out_ours = ref(x), ours(x)
    out_diff = _maxdiff(out_ref.detach(), out_ours.detach())
    out_ref.square().mean().backward()
    out_ours.square().mean().backward()
    ref_grads = dict(ref.named_parameters())
    scale = max(p.grad.abs().max().item() for p in ref.parameters())
    return out_diff, max(_maxdiff(ref_grads[k].grad, p.grad) for k, p in ours.named_parameters()) / scale


def _compare_variant(official, name: str, seed: int, inputs: Dict[str, torch.Tensor], with_grads: bool):
    """(parameter count, max |diff| per check, max |official logit|) for one variant."""
    ref, ours = _pair(official, name, seed)
    n_params = sum(p.numel() for p in ours.parameters())
    n_ref = sum(p.numel() for p in ref.parameters())
    assert n_params == n_ref, (n_params, n_ref)
    with torch.no_grad():
        ref_logits = ref(inputs['x'])
        d = {'logits': _maxdiff(ref_logits, ours(inputs['x']))}
    del ref, ours
    for key, xin, kw in (('odd+pad', inputs['odd'], dict(auto_pad=True)),
                         ('n_win8', inputs['256'], dict(auto_pad=True, n_win=8)),
                         ('n_win16', inputs['256'], dict(auto_pad=True, n_win=16))):
        ref, ours = _pair(official, name, seed, **kw)
        with torch.no_grad():
            d[key] = _maxdiff(ref(xin), ours(xin))
        del ref, ours
    d['train'], d['grads(rel)'] = _train_diffs(official, name, seed, inputs['x']) if with_grads else (
        float('nan'), float('nan'))
    return n_params, d, ref_logits.abs().max().item()


def _bench_rows(official, name: str, seed: int, args: argparse.Namespace) -> List[Dict[str, object]]:
    """Time both models' CPU forward; one CSV row per implementation."""
    import timm
    ref, ours = _pair(official, name, seed)
    xb = torch.randn(args.bench_batch_size, 3, args.img_size, args.img_size)
    times = _bench(ref, ours, xb, args.warmup, args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med['vimzoo'] / med['official']
    print(f'  bench {name}: vimzoo {med["vimzoo"]:.1f} ms, official {med["official"]:.1f} ms, '
          f'ratio {ratio:.3f} (batch {args.bench_batch_size}, {args.img_size}px)', flush=True)
    return [dict(variant=name, impl=impl, device='cpu', threads=torch.get_num_threads(),
                 batch_size=args.bench_batch_size, img_size=args.img_size, median_ms=round(med[impl], 1),
                 min_ms=round(min(times[impl]), 1), repeats=args.repeats,
                 ratio_vimzoo_over_official=round(ratio, 4), torch=torch.__version__, timm=timm.__version__,
                 cpu=platform.processor() or platform.machine(),
                 date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%MZ'))
            for impl in ('vimzoo', 'official')]


def main() -> int:
    args = _parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import timm
    import vimzoo  # noqa: F401  (registers the vimzoo models)
    official = load_official(args.official_repo.resolve(), args.extra_path)

    inputs = {'x': torch.randn(args.batch_size, 3, args.img_size, args.img_size),
              'odd': torch.randn(args.batch_size, 3, *args.odd_size), '256': torch.randn(1, 3, 256, 256)}
    worst, rows = 0., []
    print(f'torch {torch.__version__}, timm {timm.__version__}, threads {torch.get_num_threads()}, '
          f'input {tuple(inputs["x"].shape)}, odd {tuple(inputs["odd"].shape)}, tol {args.tol:g}')
    print(f'{"variant":15} {"params":>10} {"logits":>9} {"odd+pad":>9} {"n_win8":>9} {"n_win16":>9} {"train":>9} '
          f'{"grads(rel)":>10} {"|logit|":>8} {"s":>5}')
    for n, name in enumerate(args.variants):
        t0 = time.perf_counter()
        n_params, d, max_logit = _compare_variant(official, name, args.seed + n, inputs, with_grads=n == 0)
        worst = max(worst, *(v for v in d.values() if v == v))
        print(f'{name:15} {n_params:10d} ' + ' '.join(f'{d[k]:9.2e}' for k in ('logits', 'odd+pad', 'n_win8',
              'n_win16', 'train')) + f' {d["grads(rel)"]:10.2e} {max_logit:8.2e} '
              f'{time.perf_counter() - t0:5.1f}', flush=True)
        if args.bench:
            rows += _bench_rows(official, name, args.seed + n, args)
    if rows:
        args.bench_out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.bench_out, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f'wrote {args.bench_out}')
    ok = worst < args.tol
    print(f'worst max|diff| = {worst:.3e} -> {"PASS" if ok else "FAIL"} (tol {args.tol:g})')
    return 0 if ok else 1

if __name__ == '__main__':
    sys.exit(main())
