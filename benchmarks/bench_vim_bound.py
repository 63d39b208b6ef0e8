#!/usr/bin/env python
"""A lower bound for Vim-T and LBVim-T time on this CPU, against DeiT-T and the real models, in one interleaved run.

Whatever the implementation, Vim's math does at least two things:
1. its projections: the GEMMs of every `nn.Linear` of the model (in_proj, x_proj, dt_proj, out_proj per block and
   direction, the head) at the shapes the model runs them, plus the patch-embedding convolution; in a training step
   also each GEMM's input-gradient and weight-gradient GEMM (the patch embedding: weight gradient only);
2. per block and scan direction one selective scan over (batch, d_inner, tokens, d_state).
The bound times (1) with torch's own GEMM (the one DeiT-T runs on) at exactly those shapes, and (2) with the
benchmark's floor scan (`benchmarks/floor_scan/floor_scan.cpp`, see `bench_scan_floor.py`), counting a training
step's backward scan as one more floor forward (its reverse recurrence updates as many states, each with an exp and
a multiply-add; the real backward also recomputes or reloads the forward states, and computes four gradients).
LBVim's local backward scan inside windows, the causal conv, the norms, gating, elementwise work and Python are
counted as free, so the real models must take longer than the bound. When bound / DeiT-T is above a target ratio,
that target cannot be met on this machine without a GEMM faster than the one DeiT-T uses.

Training rows also give a second, practical bound: the same GEMMs and floor forward, with the backward scan timed as
the fastest direct backward at hand instead of one more floor forward — the faster of the benchmark's floor
backward (floor_scan.cpp: the simplest register-resident backward of the plain scan, two variants) and vimzoo's own
backward kernel for the model's scan (plain, or LB with its windows). It is not a proof — a cleverer backward could
beat it — but it is what a backward costs here today.

Rows: inference (batch 1, `inference_mode`) at 224 / 512 / 1024 px and the training step (batch 8 at 224,
forward + cross-entropy + backward + SGD with momentum), at each thread count. Every ratio is the median over rounds
of (time / DeiT-T time in the same round); rounds alternate the order of the timed items.

    python benchmarks/bench_vim_bound.py                 # -> benchmarks/results/vim_bound.{csv,md}
    python benchmarks/bench_vim_bound.py --threads 1 --sizes 224 --rounds 3 --no-train --out /tmp/b.csv
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import timm
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'benchmarks'))
import vimzoo  # noqa: E402,F401  (registers the zoo models)
from bench_scan_floor import load_floor_extension  # noqa: E402
from vimzoo.ops._loader import cpu_extension  # noqa: E402
from vimzoo.ops.backends._common import kernel_inputs  # noqa: E402
from vimzoo.ops.reference import lb_window  # noqa: E402

BASELINE = 'deit_tiny_patch16_224'
MODELS = {'vim': 'vim_tiny_patch16_224', 'lbvim': 'lbvim_tiny_patch16_224'}
# The targets of the CPU performance work (time / DeiT-T time), by (mode, size): Vim-T, LBVim-T.
TARGETS = {('inference', 224): (1.0, 0.9), ('inference', 512): (0.6, None), ('inference', 1024): (0.3, None),
           ('train', 224): (1.5, 1.2)}
Call = Callable[[], object]


def tokens_of(model: torch.nn.Module, size: int) -> int:
    """Tokens of a zoo Vim/LBVim built for this size: the patch grid, plus the middle class token if any."""
    grid = model.patch_embed.grid_size
    assert model.patch_embed.img_size == (size, size), 'build the shape model at the benchmarked size'
    return grid[0] * grid[1] + (1 if getattr(model, 'cls_token', None) is not None else 0)


def gemm_calls(model: torch.nn.Module, batch: int, size: int, train: bool) -> List[Call]:
    """Every projection GEMM of one forward (and, for training, its two gradient GEMMs) on random operands."""
    g = torch.Generator().manual_seed(0)
    rows = batch * tokens_of(model, size)
    calls: List[Call] = []
    for name, lin in model.named_modules():
        if not isinstance(lin, torch.nn.Linear):
            continue
        m = batch if name.startswith('head') else rows
        x = torch.randn(m, lin.in_features, generator=g)
        w, b = lin.weight.detach().clone(), None if lin.bias is None else lin.bias.detach().clone()
        calls.append(lambda x=x, w=w, b=b: F.linear(x, w, b))
        if train:
            dy = torch.randn(m, lin.out_features, generator=g)
            calls.append(lambda dy=dy, w=w: dy @ w)          # input gradient (m, out) x (out, in)
            calls.append(lambda dy=dy, x=x: dy.t() @ x)      # weight gradient (out, m) x (m, in)
    conv = model.patch_embed.proj
    image = torch.randn(batch, 3, size, size, generator=g)
    w = conv.weight.detach().clone()
    calls.append(lambda: F.conv2d(image, w, None, conv.stride, conv.padding))
    if train:
        out = F.conv2d(image, w, None, conv.stride, conv.padding)
        dout = torch.randn_like(out)
        calls.append(lambda: torch.ops.aten.convolution_backward(
            dout, image, w, None, conv.stride, conv.padding, conv.dilation, False, [0, 0], 1, [False, True, False]))
    return calls


def scan_calls(model: torch.nn.Module, batch: int, size: int, train: bool, floor,
               floor_backward: bool = False) -> Tuple[List[Call], str]:
    """One floor scan per block and direction (two per block and direction in a training step); with
    `floor_backward`, a training step's second one is the fastest backward at hand instead (see the module doc).
    Returns the calls and the name of the backward picked ('' without `floor_backward`)."""
    mixer = model.layers[0].mixer
    d, n, l = mixer.d_inner, mixer.d_state, tokens_of(model, size)
    directions = 2 if getattr(mixer, 'x_proj_b', None) is not None else 1
    g = torch.Generator().manual_seed(1)

    def tok(scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(batch, l, d, generator=g) * scale).transpose(1, 2)
    u, delta, z = tok(), tok(0.5), tok()
    A = -torch.exp(torch.randn(d, n, generator=g) * 0.5)
    B, C = torch.randn(batch, n, l, generator=g), torch.randn(batch, n, l, generator=g)
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g) * 0.5
    _, _, a, bt, ct, dk, _, bk = kernel_inputs(torch.float32, None, None, A, B, C, D, None, bias)
    count = len(model.layers) * directions * (2 if train else 1)
    forward = lambda: floor.floor_scan(u, delta, a, bt, ct, dk, z, bk)   # noqa: E731
    if not floor_backward:
        return [forward] * count, ''
    dout = tok()
    variants = {name: lambda fn=fn: fn(dout, u, delta, a, bt, ct, dk, z, bk)
                for name, fn in (('floor', floor.floor_scan_bwd), ('floor, recompute', floor.floor_scan_bwd_recompute))}
    window = lb_window(l) if mixer.auto_window else mixer.window
    kernel = cpu_extension()
    variants['vimzoo' + (f' LB W={window}' if window > 1 else '')] = lambda: kernel.scan_bwd_tm(
        dout, u, delta, a, bt, ct, dk, z, bk, True, False, window, 1.0)
    name = min(variants, key=lambda key: _best_of(variants[key], 5))
    return [forward, variants[name]] * (count // 2), name


def _best_of(call: Call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def create(name: str, size: int) -> torch.nn.Module:
    return timm.create_model(name, pretrained=False, **({} if size == 224 else dict(img_size=size)))


def model_call(model: torch.nn.Module, batch: int, size: int, train: bool) -> Call:
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2))
    if not train:
        model.eval()
        return lambda: model(x)
    y = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(3))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def build_items(size: int, train: bool, floor) -> Tuple[Dict[str, List[Call]], Dict[str, str]]:
    """What is timed: the three real models, and the bound's two parts for each zoo model; and, for training, the
    backward the practical bound picked per zoo model."""
    batch = 8 if train else 1
    items = {'deit': [model_call(create(BASELINE, size), batch, size, train)]}
    fastest: Dict[str, str] = {}
    for short, name in MODELS.items():
        model = create(name, size)
        items[f'{short}_gemm'] = gemm_calls(model, batch, size, train)
        items[f'{short}_scan'], _ = scan_calls(model, batch, size, train, floor)
        if train:
            items[f'{short}_scan_fbwd'], fastest[short] = scan_calls(model, batch, size, train, floor,
                                                                      floor_backward=True)
        items[short] = [model_call(model, batch, size, train)]
    return items, fastest


def time_items(items: Dict[str, List[Call]], rounds: int, warmup: int, train: bool) -> Dict[str, List[float]]:
    """Wall seconds per item and round; rounds alternate the item order."""
    grad = torch.enable_grad() if train else torch.inference_mode()
    times: Dict[str, List[float]] = {k: [] for k in items}
    with grad:
        for calls in items.values():
            for _ in range(warmup):
                for call in calls:
                    call()
        for r in range(rounds):
            for key in (list(items) if r % 2 == 0 else list(items)[::-1]):
                start = time.perf_counter()
                for call in items[key]:
                    call()
                times[key].append(time.perf_counter() - start)
    return times


def summarise(times: Dict[str, List[float]], mode: str, size: int, threads: int, loads: Tuple[float, float],
              fastest: Dict[str, str]) -> List[Dict]:
    deit = times['deit']

    def ratio(values: List[float]) -> float:
        return statistics.median(v / b for v, b in zip(values, deit))
    rows = []
    for i, short in enumerate(MODELS):
        bound = [g + s for g, s in zip(times[f'{short}_gemm'], times[f'{short}_scan'])]
        target = TARGETS.get((mode, size), (None, None))[i]
        practical = ''
        if f'{short}_scan_fbwd' in times:
            practical = ratio([g + s for g, s in zip(times[f'{short}_gemm'], times[f'{short}_scan_fbwd'])])
        row = dict(mode=mode, size=size, threads=threads, model=MODELS[short], deit_ms=1e3 * statistics.median(deit),
                   actual_vs_deit=ratio(times[short]), bound_vs_deit=ratio(bound),
                   gemm_vs_deit=ratio(times[f'{short}_gemm']), scan_floor_vs_deit=ratio(times[f'{short}_scan']),
                   bound_fastest_bwd_vs_deit=practical,
                   fastest_backward=fastest.get(short, ''),
                   target=target if target is not None else '',
                   target_reachable='' if target is None else ('no' if ratio(bound) > target else 'not excluded'),
                   reachable_with_fastest_bwd='' if target is None or practical == '' else
                   ('no' if practical > target else 'not excluded'),
                   load_before=loads[0], load_after=loads[1])
        rows.append(row)
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return rows


def write(rows: List[Dict], out: Path, rounds: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
    with open(out, 'w', newline='') as fh:
        fh.write(f'# {rounds} interleaved rounds; torch {torch.__version__}; {stamp}; benchmarks/bench_vim_bound.py\n')
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    lines = [f'Lower bound vs measured, time / DeiT-T time ({stamp}, torch {torch.__version__}, {rounds} rounds; '
             '`python benchmarks/bench_vim_bound.py`)', '',
             '| mode | px | threads | model | measured | bound (GEMMs + floor scan) | GEMMs | floor scan | target | '
             'target reachable | bound with the fastest backward | (which) | reachable with it | load |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        practical = r['bound_fastest_bwd_vs_deit']
        lines.append(f"| {r['mode']} | {r['size']} | {r['threads']} | {r['model'].split('_patch')[0]} | "
                     f"{r['actual_vs_deit']:.2f} | {r['bound_vs_deit']:.2f} | {r['gemm_vs_deit']:.2f} | "
                     f"{r['scan_floor_vs_deit']:.2f} | {r['target']} | {r['target_reachable']} | "
                     f"{'' if practical == '' else f'{practical:.2f}'} | {r['fastest_backward']} | "
                     f"{r['reachable_with_fastest_bwd']} | "
                     f"{r['load_before']:.1f}–{r['load_after']:.1f} |")
    out.with_suffix('.md').write_text('\n'.join(lines) + '\n')


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--threads', default='1,2')
    ap.add_argument('--sizes', default='224,512,1024', help='inference image sizes')
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--warmup', type=int, default=1)
    ap.add_argument('--no-train', action='store_true', help='skip the training-step rows')
    ap.add_argument('--out', default=str(ROOT / 'benchmarks' / 'results' / 'vim_bound.csv'))
    args = ap.parse_args(argv)
    floor = load_floor_extension()
    modes = [('inference', int(s)) for s in args.sizes.split(',')] + ([] if args.no_train else [('train', 224)])
    rows = []
    for threads in (int(t) for t in args.threads.split(',')):
        torch.set_num_threads(threads)
        for mode, size in modes:
            items, fastest = build_items(size, mode == 'train', floor)
            before = os.getloadavg()[0]
            times = time_items(items, args.rounds, args.warmup, mode == 'train')
            rows += summarise(times, mode, size, threads, (before, os.getloadavg()[0]), fastest)
    write(rows, Path(args.out), args.rounds)
    return 0


if __name__ == '__main__':
    sys.exit(main())
