#!/usr/bin/env python
"""CPU forward latency: vimzoo VAN vs the official VAN-Classification code, measured in the same process.

    python benchmarks/bench_van.py --official-repo /tmp/VAN-Classification [--variants van_b0 van_b2] \
        [--batch-size 8] [--threads 2] [--out benchmarks/results/van_cpu_fwd.csv]

Both models get identical weights (official state_dict -> checkpoint_filter_fn -> ours) and run in eval mode under
`torch.inference_mode()`; timings alternate ours/official per repeat so machine noise hits both alike. The median
and the minimum of `--repeats` timed runs (after `--warmup`) are reported; ratio = ours / official (< 1: ours
faster). On a shared machine the minimum is the less noisy statistic (other processes only ever add time).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.parity_van import VARIANTS, load_official  # noqa: E402  (official code is imported from the user path)


def _time(model: torch.nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(x)
    return (time.perf_counter() - t0) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--official-repo', type=Path, required=True)
    parser.add_argument('--variants', nargs='+', default=['van_b0', 'van_b2'], choices=VARIANTS)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--threads', type=int, default=2)
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
        with torch.inference_mode():
            max_diff = (ours(x) - ref(x)).abs().max().item()
            for _ in range(args.warmup):
                ours(x), ref(x)
            for i in range(args.repeats):
                order = (('vimzoo', ours), ('official', ref)) if i % 2 == 0 else (('official', ref), ('vimzoo', ours))
                for impl, model in order:
                    times[impl].append(_time(model, x))
        med = {k: statistics.median(v) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        ratio = med['vimzoo'] / med['official']
        ratio_min = best['vimzoo'] / best['official']
        print(f'{name}: median vimzoo {med["vimzoo"]:.1f} ms, official {med["official"]:.1f} ms, ratio {ratio:.3f}; '
              f'min {best["vimzoo"]:.1f} / {best["official"]:.1f} ms, ratio {ratio_min:.3f} '
              f'(batch {args.batch_size}, {args.img_size}px, {args.threads} threads, max|diff| {max_diff:.2e})',
              flush=True)
        for impl in ('vimzoo', 'official'):
            rows.append(dict(
                variant=name, impl=impl, device='cpu', threads=args.threads, batch_size=args.batch_size,
                img_size=args.img_size, median_ms=round(med[impl], 2), min_ms=round(min(times[impl]), 2),
                repeats=args.repeats, ratio_median=round(ratio, 4), ratio_min=round(ratio_min, 4),
                max_abs_diff=f'{max_diff:.2e}',
                torch=torch.__version__, timm=timm.__version__, cpu=platform.processor() or platform.machine(),
                date=datetime.date.today().isoformat()))
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
