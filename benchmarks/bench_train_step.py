#!/usr/bin/env python
"""CPU training step (forward + cross-entropy + backward + SGD) of zoo models against DeiT-T, in one run.

Two parts, written to `benchmarks/results/train_step.{csv,md}`:

* **time** — every model in one process, interleaved round by round (A B C ..., A B C ...), so a change of the shared
  host's speed hits all alike; per model the median over rounds of (its step time / DeiT-T's in the same round), for
  wall time and for process CPU time, at each thread count.
* **memory** — each model in a fresh process (1 thread): the bytes saved for backward (unique storages that autograd
  keeps, found with `torch.autograd.graph.saved_tensors_hooks`; parameters excluded) and the peak RSS growth of one
  training step after a warm-up step (VmHWM reset, see vimzoo.benchmark).

The official BiFormer code runs the same step when a checkout is given (fetched and run locally, never committed):

    git clone https://github.com/rayleizhu/BiFormer /tmp/BiFormer && pip install --target /tmp/biformer_deps einops
    python benchmarks/bench_train_step.py --official-biformer /tmp/BiFormer --extra-path /tmp/biformer_deps
    python benchmarks/bench_train_step.py --models vim_tiny_patch16_224 deit_tiny_patch16_224 --rounds 3 --threads 1
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import timm  # noqa: E402
import vimzoo  # noqa: E402,F401  (registers the zoo models)
from vimzoo.benchmark import _peak_rss_mb, _reset_peak_rss, _rss_mb  # noqa: E402

BASELINE = 'deit_tiny_patch16_224'
MODELS = ('vim_tiny_patch16_224', 'lbvim_tiny_patch16_224', BASELINE, 'biformer_tiny', 'van_b0',
          'dependencyvit_tiny_patch16_224')
OFFICIAL_PREFIX = 'official:'


def build(name: str, args: argparse.Namespace) -> torch.nn.Module:
    """A zoo / timm model, or `official:biformer_tiny` from the official checkout, in train mode."""
    torch.manual_seed(0)
    if name.startswith(OFFICIAL_PREFIX):
        if args.official_biformer is None:
            raise SystemExit(f'{name} needs --official-biformer DIR (a rayleizhu/BiFormer checkout)')
        sys.path.insert(0, str(ROOT / 'tools'))
        from parity_biformer import load_official
        official = load_official(args.official_biformer, args.extra_path)
        model = getattr(official, name[len(OFFICIAL_PREFIX):])()
    else:
        model = timm.create_model(name)
    return model.train()


def make_step(model: torch.nn.Module, batch: int, size: int) -> Callable[[], float]:
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return float(loss)
    return step


def time_models(names: List[str], args: argparse.Namespace, threads: int) -> List[Dict]:
    torch.set_num_threads(threads)
    steps = {n: make_step(build(n, args), args.batch, args.size) for n in names}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    wall: Dict[str, List[float]] = {n: [] for n in names}
    cpu: Dict[str, List[float]] = {n: [] for n in names}
    loads = []
    for r in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for name, step in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        print(f'  threads {threads} round {r + 1}/{args.rounds}: '
              + ', '.join(f'{n.split("_patch")[0]} {wall[n][-1]:.2f}s' for n in names), flush=True)
    rows = []
    for name in names:
        row = dict(part='time', model=name, threads=threads, batch=args.batch, size=args.size,
                   wall_ms=1e3 * statistics.median(wall[name]), cpu_ms=1e3 * statistics.median(cpu[name]),
                   load_min=min(loads), load_max=max(loads))
        if BASELINE in names:
            row['wall_vs_deit'] = statistics.median(a / b for a, b in zip(wall[name], wall[BASELINE]))
            row['cpu_vs_deit'] = statistics.median(a / b for a, b in zip(cpu[name], cpu[BASELINE]))
        rows.append(row)
    return rows


def measure_memory(name: str, args: argparse.Namespace) -> Dict:
    """In this (fresh) process: bytes autograd saves for one step, and the step's peak RSS growth."""
    torch.set_num_threads(1)
    model = build(name, args)
    step = make_step(model, args.batch, args.size)
    step()   # warm-up: optimizer state, allocator pools, a JIT kernel load
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != 'meta' and t.numel():
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                saved[storage.data_ptr()] = storage.nbytes()
        return t

    rss_before, method = _reset_peak_rss()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return dict(part='memory', model=name, threads=1, batch=args.batch, size=args.size,
                saved_mib=sum(saved.values()) / 2 ** 20, saved_tensors=len(saved),
                peak_rss_growth_mib=_peak_rss_mb() - rss_before, rss_mib=_rss_mb(), peak_method=method,
                load_min=os.getloadavg()[0], load_max=os.getloadavg()[0])


def memory_in_fresh_processes(names: List[str], args: argparse.Namespace) -> List[Dict]:
    rows = []
    for name in names:
        cmd = [sys.executable, __file__, '--child', name, '--batch', str(args.batch), '--size', str(args.size)]
        if args.official_biformer is not None:
            cmd += ['--official-biformer', str(args.official_biformer), '--extra-path', *map(str, args.extra_path)]
        env = dict(os.environ, OMP_NUM_THREADS='1')
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f'memory child for {name} failed:\n{proc.stderr[-3000:]}')
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f'  memory {name}: saved {rows[-1]["saved_mib"]:.0f} MiB, '
              f'peak RSS +{rows[-1]["peak_rss_growth_mib"]:.0f} MiB', flush=True)
    base = next((r for r in rows if r['model'] == BASELINE), None)
    for r in rows:
        if base is not None:
            r['saved_vs_deit'] = r['saved_mib'] / base['saved_mib']
            r['peak_vs_deit'] = r['peak_rss_growth_mib'] / base['peak_rss_growth_mib']
    return rows


def write(rows: List[Dict], out: Path, protocol: Dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in ('part', 'model', 'threads'), k))
    with open(out.with_suffix('.csv'), 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: f'{v:.2f}' if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f'# Training step, batch {protocol["batch"]} @ {protocol["size"]}, fp32, CPU', '',
             f'`{protocol["command"]}` on {protocol["date"]}; {protocol["cpu"]}; torch {protocol["torch"]}.', '',
             '| model | threads | wall ms | CPU ms | wall / DeiT-T | CPU / DeiT-T | load avg |', '|---|---|---|---|---|---|---|']
    for r in (r for r in rows if r['part'] == 'time'):
        lines.append(f'| `{r["model"]}` | {r["threads"]} | {r["wall_ms"]:.0f} | {r["cpu_ms"]:.0f} | '
                     f'{fmt(r.get("wall_vs_deit", ""))} | {fmt(r.get("cpu_vs_deit", ""))} | '
                     f'{r["load_min"]:.1f}–{r["load_max"]:.1f} |')
    mem = [r for r in rows if r['part'] == 'memory']
    if mem:
        lines += ['', '| model (fresh process, 1 thread) | saved for backward MiB | / DeiT-T | peak RSS growth MiB '
                  '| / DeiT-T |', '|---|---|---|---|---|']
        for r in mem:
            lines.append(f'| `{r["model"]}` | {r["saved_mib"]:.0f} | {fmt(r.get("saved_vs_deit", ""))} | '
                         f'{r["peak_rss_growth_mib"]:.0f} | {fmt(r.get("peak_vs_deit", ""))} |')
    out.with_suffix('.md').write_text('\n'.join(lines) + '\n')


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', nargs='+', default=list(MODELS))
    p.add_argument('--official-biformer', type=Path, default=None, help='rayleizhu/BiFormer checkout: adds '
                   f'{OFFICIAL_PREFIX}biformer_tiny')
    p.add_argument('--extra-path', type=Path, nargs='*', default=[], help='sys.path entries for its deps (einops)')
    p.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--no-memory', action='store_true', help='skip the fresh-process memory part')
    p.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results' / 'train_step')
    p.add_argument('--child', default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure_memory(args.child, args)))
        return 0
    names = list(args.models)
    if args.official_biformer is not None and f'{OFFICIAL_PREFIX}biformer_tiny' not in names:
        names.append(f'{OFFICIAL_PREFIX}biformer_tiny')
    rows: List[Dict] = []
    for threads in args.threads:
        rows += time_models(names, args, threads)
    if not args.no_memory:
        rows += memory_in_fresh_processes(names, args)
    protocol = dict(command='python benchmarks/bench_train_step.py ' + ' '.join(argv or sys.argv[1:]),
                    date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), cpu=platform.processor() or 'cpu',
                    torch=torch.__version__, batch=args.batch, size=args.size)
    try:
        protocol['cpu'] = next(line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo')
                               if line.startswith('model name')) + f', {os.cpu_count()} cores'
    except (OSError, StopIteration):
        pass
    write(rows, args.out, protocol)
    print(args.out.with_suffix('.md').read_text())
    return 0


if __name__ == '__main__':
    sys.exit(main())
