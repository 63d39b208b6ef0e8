#!/usr/bin/env python
"""CPU benchmark of Hydra-T against Vim-T and DeiT-T, and of the SSD C++ kernel against the sequential reference.

One run, everything paired and interleaved in this process (A, B, C, A, B, C, ...), so a change of machine speed
on a shared host hits every case of a round alike; the statistic is the median over rounds of the per-round ratio
to the baseline, for wall time and for this thread's CPU time (one intra-op thread by default, so thread CPU time
is the work done and does not count waiting for a core). The 1-minute load average is recorded at the start and
end of every section; absolute times are context only.

Sections:
* inference: batch 1, fp32, eval, inference_mode, at 224 / 512 / 1024 px; DeiT-T is built with img_size=<res>
  (position embedding resampled), Vim-T runs any size, Hydra-T with dynamic_img_size=True. Baseline DeiT-T.
* train step: batch `--train-batch` at 224: forward, cross-entropy, backward, AdamW step. Baseline DeiT-T.
* SSD kernel: Hydra-T's mixer core at 224 (b 1, l 196, 6 heads x 64, d_state 64) and at 1024 (l 4096), forward and
  forward + backward, of `ssd_scan` (one direction) and `quasiseparable_scan` (both + shift + diagonal): the 'cpu'
  backend (chunked C++) against the sequential reference (`ssd_scan_recurrence`: one PyTorch step per token,
  backward by autograd) and against the chunked PyTorch reference (the 'reference' backend). Baseline: the kernel.

    python benchmarks/bench_hydra.py                          # -> benchmarks/results/hydra_cpu.csv (+ .md)
    python benchmarks/bench_hydra.py --sizes 224 --rounds 3 --sections inference --out /tmp/x
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
from typing import Callable, Dict, List

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vimzoo  # noqa: E402,F401  (registers the zoo models)
import vimzoo.ops as ops  # noqa: E402
from vimzoo.ops.reference_ssd import ssd_scan_recurrence  # noqa: E402

MODELS = ('deit_tiny_patch16_224', 'vim_tiny_patch16_224', 'hydra_tiny_patch16_224')


def load() -> float:
    return os.getloadavg()[0]


def paired_rounds(cases: Dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> Dict[str, Dict]:
    """Run every case once per round, in a rotated order; return per case its wall and thread-CPU seconds."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    out = {name: {'wall': [], 'cpu': []} for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start, start_cpu = time.perf_counter(), time.thread_time()
            cases[name]()
            out[name]['wall'].append(time.perf_counter() - start)
            out[name]['cpu'].append(time.thread_time() - start_cpu)
    return out


def summarise(section: str, size: str, times: Dict[str, Dict], baseline: str, load_start: float,
              load_end: float) -> List[Dict]:
    rows = []
    base = times[baseline]
    for name, t in times.items():
        wall_ratio = statistics.median(a / b for a, b in zip(t['wall'], base['wall']))
        cpu_ratio = statistics.median(a / b for a, b in zip(t['cpu'], base['cpu']))
        rows.append(dict(section=section, size=size, case=name, baseline=baseline, rounds=len(t['wall']),
                         wall_ms_median=round(1e3 * statistics.median(t['wall']), 2),
                         cpu_ms_median=round(1e3 * statistics.median(t['cpu']), 2),
                         wall_ratio=round(wall_ratio, 3), cpu_ratio=round(cpu_ratio, 3),
                         load_start=round(load_start, 2), load_end=round(load_end, 2)))
    return rows


def _model(name: str, res: int, **kwargs) -> torch.nn.Module:
    if name.startswith('deit'):
        kwargs['img_size'] = res
    elif name.startswith('hydra'):
        kwargs['dynamic_img_size'] = True
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs)


def bench_inference(sizes: List[int], rounds: int) -> List[Dict]:
    rows = []
    for res in sizes:
        models = {name: _model(name, res).eval() for name in MODELS}
        x = torch.randn(1, 3, res, res)

        def run(m=None):
            with torch.inference_mode():
                m(x)
        cases = {name: (lambda m=m: run(m)) for name, m in models.items()}
        start = load()
        times = paired_rounds(cases, rounds)
        rows += summarise('inference', str(res), times, MODELS[0], start, load())
        print_rows(rows[-len(MODELS):])
    return rows


def bench_train_step(batch: int, rounds: int) -> List[Dict]:
    models = {name: _model(name, 224, num_classes=100).train() for name in MODELS}
    optims = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    x = torch.randn(batch, 3, 224, 224)
    y = torch.randint(0, 100, (batch,))

    def step(name):
        optims[name].zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(models[name](x), y).backward()
        optims[name].step()
    cases = {name: (lambda n=name: step(n)) for name in MODELS}
    start = load()
    rows = summarise('train_step', f'224 b{batch}', paired_rounds(cases, rounds), MODELS[0], start, load())
    print_rows(rows)
    return rows


def _ssd_inputs(length: int, grad: bool) -> Dict[str, torch.Tensor]:
    """Hydra-T's mixer core shapes: 6 heads x 64 channels, one group of d_state 64, post-SiLU-like magnitudes."""
    g = torch.Generator().manual_seed(0)
    b, h, p, n = 1, 6, 64, 64
    t = dict(x=torch.randn(b, length, h, p, generator=g), dt=torch.randn(b, length, h, generator=g) - 2,
             A=-torch.ones(h), B=torch.randn(b, length, 1, n, generator=g), C=torch.randn(b, length, 1, n, generator=g),
             dt_b=torch.randn(b, length, h, generator=g) - 2, B_b=torch.randn(b, length, 1, n, generator=g),
             C_b=torch.randn(b, length, 1, n, generator=g), D=torch.randn(b, length, h, generator=g),
             dt_bias=torch.zeros(h))
    return {k: v.requires_grad_(grad) for k, v in t.items()}


def bench_ssd(lengths: List[int], rounds: int, sequential_max_len: int) -> List[Dict]:
    rows = []
    for length in lengths:
        for grad in (False, True):
            t = _ssd_inputs(length, grad)
            plain = dict(x=t['x'], dt=t['dt'], A=t['A'], B=t['B'], C=t['C'], dt_bias=t['dt_bias'], dt_softplus=True)
            qs = dict(plain, dt_b=t['dt_b'], B_b=t['B_b'], C_b=t['C_b'], D=t['D'])
            leaves = [v for v in t.values() if v.requires_grad]

            def run(fn):
                with torch.set_grad_enabled(grad):
                    out = fn()
                    if grad:
                        torch.autograd.grad(out.sum(), [v for v in leaves if v.requires_grad], allow_unused=True)
            cases = {
                'ssd_scan cpu kernel': lambda: run(lambda: ops.ssd_scan(**plain, backend='cpu')),
                'ssd_scan chunked reference': lambda: run(lambda: ops.ssd_scan(**plain, backend='reference')),
                'quasiseparable_scan cpu kernel': lambda: run(lambda: ops.quasiseparable_scan(**qs, backend='cpu')),
                'quasiseparable_scan chunked reference':
                    lambda: run(lambda: ops.quasiseparable_scan(**qs, backend='reference')),
            }
            if length <= sequential_max_len:
                cases['ssd_scan sequential reference'] = lambda: run(lambda: ssd_scan_recurrence(
                    t['x'], t['dt'], t['A'], t['B'], t['C'], t['dt_bias'], True))
            start = load()
            times = paired_rounds(cases, rounds)
            section = 'ssd fwd+bwd' if grad else 'ssd fwd'
            for base in ('ssd_scan cpu kernel', 'quasiseparable_scan cpu kernel'):
                op = base.split()[0]
                sub = {k: v for k, v in times.items() if k.startswith(op)}
                rows += summarise(section, f'l{length}', sub, base, start, load())
            print_rows(rows[-len(times):])
    return rows


def print_rows(rows: List[Dict]) -> None:
    for r in rows:
        print(f"{r['section']:>12} {r['size']:>9} {r['case']:<40} wall {r['wall_ms_median']:>10.2f} ms "
              f"cpu {r['cpu_ms_median']:>10.2f} ms  x{r['wall_ratio']:<7} (cpu x{r['cpu_ratio']}) vs "
              f"{r['baseline']}  load {r['load_start']}->{r['load_end']}", flush=True)


def write_markdown(rows: List[Dict], header: str, path: Path) -> None:
    lines = [f'# Hydra CPU benchmark\n', header + '\n', '| section | size | case | wall ms (median) | cpu ms (median) |'
             ' ratio wall | ratio cpu | baseline | load start -> end |', '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['section']} | {r['size']} | {r['case']} | {r['wall_ms_median']} | {r['cpu_ms_median']} | "
                     f"{r['wall_ratio']} | {r['cpu_ratio']} | {r['baseline']} | {r['load_start']} -> {r['load_end']} |")
    path.write_text('\n'.join(lines) + '\n')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--sizes', type=int, nargs='+', default=[224, 512, 1024])
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--train-batch', type=int, default=8)
    ap.add_argument('--ssd-lengths', type=int, nargs='+', default=[196, 4096])
    ap.add_argument('--sequential-max-len', type=int, default=4096,
                    help='longest sequence the token-by-token reference is timed at')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--sections', nargs='+', default=['inference', 'train', 'ssd'],
                    choices=['inference', 'train', 'ssd'])
    ap.add_argument('--out', default='benchmarks/results/hydra_cpu', help='output prefix (.csv and .md)')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not ops.kernel_status()['cpu']:
        print('the C++ CPU kernel is unavailable; the kernel rows would time the reference', file=sys.stderr)
        return 1
    header = (f'{platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, '
              f'timm {timm.__version__}, '
              f'{args.threads} intra-op thread(s), {args.rounds} paired rounds (median of per-round ratios), '
              f'{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC')
    print(header)
    rows = []
    if 'inference' in args.sections:
        rows += bench_inference(args.sizes, args.rounds)
    if 'train' in args.sections:
        rows += bench_train_step(args.train_batch, args.rounds)
    if 'ssd' in args.sections:
        rows += bench_ssd(args.ssd_lengths, args.rounds, args.sequential_max_len)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix('.csv'), 'w', newline='') as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_markdown(rows, header, out.with_suffix('.md'))
    print(f'wrote {out.with_suffix(".csv")} and {out.with_suffix(".md")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
