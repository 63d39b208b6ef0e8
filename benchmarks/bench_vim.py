#!/usr/bin/env python
"""CPU forward latency of Vim-T and LBVim-T against DeiT-T at growing resolutions, measured in one run.

Batch 1, fp32, eval, `torch.inference_mode()`; per (model, size): warm-up runs, then the median of timed runs.
Vim's cost grows linearly with the number of tokens, DeiT's attention quadratically, so the ratio should fall as the
image grows (the paper reports 2.8x faster than DeiT at 1248x1248 on a GPU). The machine load (1-minute load average)
is recorded next to every row because the benchmark host is shared.

    python benchmarks/bench_vim.py              # 224 / 512 / 1024 at 1 and 2 threads -> benchmarks/results/vim_cpu.csv
    python benchmarks/bench_vim.py --sizes 224 --threads 1 --repeats 3 --out /tmp/x.csv

`vs_deit_tiny` is the median wall time divided by DeiT-T's at the same size and thread count (< 1: faster);
`cpu_vs_deit_tiny` the same for process CPU time, which is less distorted by other jobs on a shared machine.
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


def time_forward(model: torch.nn.Module, x: torch.Tensor, warmup: int,
                 repeats: int) -> Tuple[List[float], List[float]]:
    """Wall-clock and process-CPU seconds per forward. On a busy shared machine the CPU time (summed over threads)
    is the steadier number: it does not count the time the process waited for a core."""
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        wall, cpu = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            model(x)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 512, 1024])
    parser.add_argument('--models', nargs='+', default=list(MODELS))
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2],
                        help='torch intra-op thread counts to measure (each gets its own rows)')
    parser.add_argument('--out', default=str(Path(__file__).resolve().parent / 'results' / 'vim_cpu.csv'))
    args = parser.parse_args()
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
            for name in args.models:
                model = timm.create_model(name, img_size=size).eval() if name.startswith('deit') else models[name]
                x = torch.randn(1, 3, size, size)
                load_before = os.getloadavg()[0]
                times, cpu_times = time_forward(model, x, args.warmup, args.repeats)
                median = statistics.median(times)
                size_rows.append(dict(
                    model=name, size=size, tokens=(size // 16) ** 2, batch=1, threads=threads,
                    median_ms=round(median * 1e3, 1), min_ms=round(min(times) * 1e3, 1),
                    max_ms=round(max(times) * 1e3, 1), cpu_median_ms=round(statistics.median(cpu_times) * 1e3, 1),
                    repeats=args.repeats,
                    load_avg_1m=round((load_before + os.getloadavg()[0]) / 2, 2), scan=scan, vs_deit_tiny=None,
                    cpu_vs_deit_tiny=None))
                print(f'threads {threads} {size:5d} {name:26s} median {median * 1e3:9.1f} ms  '
                      f'(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}, cpu {size_rows[-1]["cpu_median_ms"]}, '
                      f'load {size_rows[-1]["load_avg_1m"]})', flush=True)
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
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
