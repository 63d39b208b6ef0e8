#!/usr/bin/env python
"""CPU forward latency of Vim-T and LBVim-T against DeiT-T at growing resolutions, measured in one run.

Batch 1, fp32, eval, `torch.inference_mode()`; per (size, threads): warm-up runs of every model, then timed rounds
that run each model once in turn (interleaved, so a shared host's speed changes hit all models alike).
Vim's cost grows linearly with the number of tokens, DeiT's attention quadratically, so the ratio should fall as the
image grows (the paper reports 2.8x faster than DeiT at 1248x1248 on a GPU). The machine load (1-minute load average)
is recorded next to every row because the benchmark host is shared.

    python benchmarks/bench_vim.py              # 224 / 512 / 1024 at 1 and 2 threads -> benchmarks/results/vim_cpu.csv
    python benchmarks/bench_vim.py --sizes 224 --threads 1 --repeats 3 --out /tmp/x.csv

`vs_deit_tiny` is the median wall time divided by DeiT-T's at the same size and thread count (< 1: faster);
`cpu_vs_deit_tiny` the same for process CPU time, which is less distorted by other jobs on a shared machine;
`paired_vs_deit_tiny` the median over rounds of (this model's time / DeiT-T's time in the same round).
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vimzoo  # noqa: E402,F401  (registers the zoo models)
from vimzoo.ops import get_backend, kernel_status  # noqa: E402

MODELS = ('vim_tiny_patch16_224', 'lbvim_tiny_patch16_224', 'deit_tiny_patch16_224')


def time_rounds(models: Dict[str, torch.nn.Module], x: torch.Tensor, warmup: int,
                repeats: int) -> Dict[str, Tuple[List[float], List[float]]]:
    """Wall-clock and process-CPU seconds per forward, models interleaved round by round (A B C, A B C, ...) so that
    a change of machine speed during the run (shared host) hits every model alike; CPU time (summed over threads)
    does not count time spent waiting for a core."""
    times: Dict[str, Tuple[List[float], List[float]]] = {name: ([], []) for name in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                model(x)
        for _ in range(repeats):
            for name, model in models.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                model(x)
                times[name][0].append(time.perf_counter() - start)
                times[name][1].append(time.process_time() - start_cpu)
    return times


def plot(rows: List[Dict[str, object]], path: Path) -> None:
    """Paired time ratio vs DeiT-T against the token count, one line per (model, threads)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    keys = sorted({(r['model'], int(r['threads'])) for r in rows if not str(r['model']).startswith('deit')})
    colors = {m: f'C{i}' for i, m in enumerate(sorted({k[0] for k in keys}))}
    for model, threads in keys:
        pts = sorted((int(r['tokens']), float(r['paired_vs_deit_tiny'])) for r in rows
                     if r['model'] == model and int(r['threads']) == threads and r['paired_vs_deit_tiny'] not in
                     (None, ''))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker='o', linestyle='-' if threads == 1 else '--',
                color=colors[model],
                label=f'{str(model).split("_patch")[0]}, {threads} thread{"s" if threads > 1 else ""}')
    ax.axhline(1.0, color='gray', linewidth=1)
    ax.axhline(2.0, color='tab:red', linewidth=1, linestyle=':', label='target at 224: <= 2x')
    ax.set_xscale('log')
    ticks = sorted({int(r['tokens']) for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel('tokens (image side / 16)^2')
    ax.set_ylabel('time / DeiT-T time (same run, per round)')
    ax.set_title('CPU forward, batch 1, fp32')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 512, 1024])
    parser.add_argument('--models', nargs='+', default=list(MODELS))
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2],
                        help='torch intra-op thread counts to measure (each gets its own rows)')
    parser.add_argument('--out', default=str(Path(__file__).resolve().parent / 'results' / 'vim_cpu.csv'))
    parser.add_argument('--plot-from', default=None, help='only redraw the PNG from an existing CSV')
    args = parser.parse_args()
    if args.plot_from:
        with open(args.plot_from) as f:
            plot(list(csv.DictReader(f)), Path(args.plot_from).with_suffix('.png'))
        return 0
    backend = get_backend()
    kernels = kernel_status()
    scan = 'cpu kernel' if kernels['cpu'] and backend in ('auto', 'cpu') else 'reference'
    print(f'torch {torch.__version__}, timm {timm.__version__}, {platform.processor() or platform.machine()}, '
          f'{os.cpu_count()} logical CPUs, scan backend: {scan}')

    models = {name: timm.create_model(name).eval() for name in args.models if not name.startswith('deit')}
    rows: List[Dict[str, object]] = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for size in args.sizes:
            size_rows = []
            size_models = {name: timm.create_model(name, img_size=size).eval() if name.startswith('deit')
                           else models[name] for name in args.models}
            load_before = os.getloadavg()[0]
            timed = time_rounds(size_models, torch.randn(1, 3, size, size), args.warmup, args.repeats)
            load = round((load_before + os.getloadavg()[0]) / 2, 2)
            deit_name = next((n for n in args.models if n.startswith('deit')), None)
            for name in args.models:
                times, cpu_times = timed[name]
                median = statistics.median(times)
                paired = (statistics.median(t / d for t, d in zip(times, timed[deit_name][0]))
                          if deit_name else None)   # per-round ratio: robust to drift between rounds
                size_rows.append(dict(
                    model=name, size=size, tokens=(size // 16) ** 2, batch=1, threads=threads,
                    median_ms=round(median * 1e3, 1), min_ms=round(min(times) * 1e3, 1),
                    max_ms=round(max(times) * 1e3, 1), cpu_median_ms=round(statistics.median(cpu_times) * 1e3, 1),
                    repeats=args.repeats, load_avg_1m=load, scan=scan, vs_deit_tiny=None, cpu_vs_deit_tiny=None,
                    paired_vs_deit_tiny=None if paired is None else round(paired, 2)))
                print(f'threads {threads} {size:5d} {name:26s} median {median * 1e3:9.1f} ms  '
                      f'(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}, cpu {size_rows[-1]["cpu_median_ms"]}, '
                      f'paired ratio {size_rows[-1]["paired_vs_deit_tiny"]}, load {load})', flush=True)
            deit = [r for r in size_rows if r['model'].startswith('deit')]
            for row in size_rows:
                row['vs_deit_tiny'] = round(row['median_ms'] / deit[0]['median_ms'], 2) if deit else None
                row['cpu_vs_deit_tiny'] = round(row['cpu_median_ms'] / deit[0]['cpu_median_ms'], 2) if deit else None
            rows.extend(size_rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out.with_suffix('.png'))
    print(f'wrote {out} and {out.with_suffix(".png")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
