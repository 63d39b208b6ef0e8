#!/usr/bin/env python
"""CPU forward latency: vimzoo VAN vs the official VAN-Classification code, measured in the same process.

    python benchmarks/bench_van.py --official-repo /tmp/VAN-Classification [--variants van_b0 van_b1 van_b2] \
        [--batch-size 8] [--threads 1] [--out benchmarks/results/van_cpu_fwd.csv]

Both models get identical weights (official state_dict -> checkpoint_filter_fn -> ours) and run in eval mode under
`torch.inference_mode()`; timings alternate ours/official per repeat so machine noise hits both alike. The median
and minimum wall time of `--repeats` timed runs (after `--warmup`) are reported, plus the median CPU time of the
calling thread (with `--threads 1` all intra-op work runs there, so on a shared, oversubscribed machine this is the
statistic least disturbed by other processes); ratio = ours / official (< 1: ours faster).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.parity_van import VARIANTS, load_official  # noqa: E402  (official code is imported from the user path)


def _time(model: torch.nn.Module, x: torch.Tensor) -> Tuple[float, float]:
    """(wall ms, CPU ms of this thread). With one intra-op thread all work runs on the calling thread, so its CPU time
    is what the forward costs, largely independent of other processes competing for the cores."""
    t0, c0 = time.perf_counter(), time.thread_time()
    model(x)
    return (time.perf_counter() - t0) * 1e3, (time.thread_time() - c0) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--official-repo', type=Path, required=True)
    parser.add_argument('--variants', nargs='+', default=['van_b0', 'van_b1', 'van_b2'], choices=VARIANTS)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results' / 'van_cpu_fwd.csv')
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    import timm
    import vimzoo  # noqa: F401
    from vimzoo.models.van import checkpoint_filter_fn
    official = load_official(args.official_repo)

    rows = []
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    for name in args.variants:
        ref = getattr(official, name)().eval()
        ours = timm.create_model(name).eval()
        ours.load_state_dict(checkpoint_filter_fn({'state_dict': ref.state_dict()}, ours), strict=True)
        times = {'vimzoo': [], 'official': []}
        cpu = {'vimzoo': [], 'official': []}
        with torch.inference_mode():
            max_diff = (ours(x) - ref(x)).abs().max().item()
            for _ in range(args.warmup):
                ours(x), ref(x)
            for i in range(args.repeats):
                order = (('vimzoo', ours), ('official', ref)) if i % 2 == 0 else (('official', ref), ('vimzoo', ours))
                for impl, model in order:
                    wall, cpu_ms = _time(model, x)
                    times[impl].append(wall)
                    cpu[impl].append(cpu_ms)
        med = {k: statistics.median(v) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        ratio = med['vimzoo'] / med['official']
        ratio_min = best['vimzoo'] / best['official']
        ratio_cpu = med_cpu['vimzoo'] / med_cpu['official']
        print(f'{name}: wall median vimzoo {med["vimzoo"]:.1f} / official {med["official"]:.1f} ms '
              f'(ratio {ratio:.3f}), '
              f'wall min {best["vimzoo"]:.1f} / {best["official"]:.1f} ms (ratio {ratio_min:.3f}), '
              f'thread-CPU median {med_cpu["vimzoo"]:.1f} / {med_cpu["official"]:.1f} ms (ratio {ratio_cpu:.3f}); '
              f'batch {args.batch_size}, {args.img_size}px, {args.threads} threads, max|diff| {max_diff:.2e}',
              flush=True)
        for impl in ('vimzoo', 'official'):
            rows.append(dict(
                variant=name, impl=impl, device='cpu', threads=args.threads, batch_size=args.batch_size,
                img_size=args.img_size, median_ms=round(med[impl], 2), min_ms=round(best[impl], 2),
                median_thread_cpu_ms=round(med_cpu[impl], 2), repeats=args.repeats, ratio_median=round(ratio, 4),
                ratio_min=round(ratio_min, 4), ratio_thread_cpu=round(ratio_cpu, 4), max_abs_diff=f'{max_diff:.2e}',
                torch=torch.__version__, timm=timm.__version__, cpu=platform.processor() or platform.machine(),
                load_avg_1m=round(os.getloadavg()[0], 2), date=datetime.date.today().isoformat()))
        del ref, ours

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
