#!/usr/bin/env python
"""CPU benchmark of the vimzoo selective-scan kernels vs the sequential PyTorch reference (same run).

Protocol: fp32, inputs as in Vim (Δ through softplus with delta_bias, D, z gate), A = -exp(N(0, .5²)).
For each case: the kernel is built first (not timed); `--warmup` untimed calls, then `--repeats` timed calls
(`--ref-repeats` for the slow reference); the MEDIAN wall time (time.perf_counter) is reported.
fwd = forward under no_grad; fwd+bwd = forward with grad + backward of a fixed cotangent w.r.t. all inputs.
Threads: torch.set_num_threads(--threads) for both backends. The 1-min load average is recorded before and
after, because other processes may share the cores.

    python benchmarks/bench_scan.py                     # writes benchmarks/results/scan_cpu.{csv,md}
    python benchmarks/bench_scan.py --quick             # smaller repeat counts
"""
import argparse
import csv
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import List

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import vimzoo.ops as ops  # noqa: E402


def make(b, d, l, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, l, generator=g)
    delta = torch.randn(b, d, l, generator=g) * 0.5
    A = -torch.exp(torch.randn(d, n, generator=g) * 0.5)
    B = torch.randn(b, n, l, generator=g)
    C = torch.randn(b, n, l, generator=g)
    D = torch.randn(d, generator=g)
    z = torch.randn(b, d, l, generator=g)
    bias = torch.randn(d, generator=g) * 0.5
    return [u, delta, A, B, C, D, z, bias]


def median_time(fn, warmup, repeats):
    """(median wall, min wall, median process CPU) seconds over `repeats` timed calls after `warmup` untimed ones.

    Process CPU time (all threads) does not count time the process was descheduled, so with 1 thread it is a
    load-robust measure of the work done; with more threads it also counts OpenMP spin-waiting."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), min(wall), statistics.median(cpu)


def run_case(kind, b, d, l, n, backend, warmup, repeats):
    ts = make(b, d, l, n)
    window = ops.lb_window(l) if kind == 'lb' else None
    ts2 = make(b, d, l, n, seed=1) if kind == 'bidir' else None

    def call(args, args2):
        if kind == 'bidir':
            return ops.bidirectional_selective_scan(*args[:6], args[7], *args2[:6], args2[7], z=args[6],
                                                    backend=backend)
        return ops.selective_scan(*args[:5], D=args[5], z=args[6], delta_bias=args[7], delta_softplus=True,
                                  local_window=window, backend=backend)

    def fwd():
        with torch.no_grad():
            call(ts, ts2)

    leaves = [t.clone().requires_grad_() for t in ts]
    leaves2 = [t.clone().requires_grad_() for t in ts2] if ts2 else None
    all_leaves = leaves + ([t for i, t in enumerate(leaves2) if i != 6] if leaves2 else [])  # bidir: z is shared
    gy = torch.randn(b, d, l)

    def fwd_bwd():
        y = call(leaves, leaves2)
        torch.autograd.grad(y, all_leaves, gy)

    (f_med, f_min, f_cpu), (fb_med, fb_min, fb_cpu) = median_time(fwd, warmup, repeats), median_time(fwd_bwd, warmup,
                                                                                                       repeats)
    return tuple(x * 1e3 for x in (f_med, fb_med, f_min, fb_min, f_cpu, fb_cpu))


CASES = [('plain', 1, 384, 197, 16), ('plain', 8, 384, 197, 16), ('lb', 1, 384, 197, 16), ('lb', 8, 384, 197, 16),
         ('bidir', 8, 384, 197, 16), ('plain', 1, 384, 4096, 16), ('lb', 1, 384, 4096, 16)]
FIELDS = ['scan', 'b', 'd', 'l', 'n', 'window', 'threads', 'cpu_fwd_ms', 'cpu_fwd_bwd_ms', 'cpu_fwd_min_ms',
          'cpu_fwd_bwd_min_ms', 'cpu_fwd_cputime_ms', 'cpu_fwd_bwd_cputime_ms', 'ref_fwd_ms', 'ref_fwd_bwd_ms',
          'ref_fwd_cputime_ms', 'ref_fwd_bwd_cputime_ms', 'speedup_fwd', 'speedup_fwd_bwd', 'speedup_fwd_cputime',
          'speedup_fwd_bwd_cputime', 'cpu_fwd_vs_plain', 'cpu_fwd_bwd_vs_plain', 'cpu_fwd_vs_plain_cputime',
          'cpu_fwd_bwd_vs_plain_cputime']


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--threads', default='2', help='comma-separated thread counts, e.g. "1,2"')
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--repeats', type=int, default=15)
    ap.add_argument('--ref-repeats', type=int, default=3)
    ap.add_argument('--quick', action='store_true', help='repeats 5 / ref-repeats 1')
    ap.add_argument('--no-long-ref', action='store_true', help='skip the (slow) reference at l=4096')
    ap.add_argument('--ref-threads', default='1', help='thread counts at which the reference is also timed '
                    '(default 1: with 2 threads on a loaded machine its many small parallel ops stall)')
    ap.add_argument('--out', default=str(ROOT / 'benchmarks' / 'results' / 'scan_cpu'))
    return ap


def _measure(kind: str, b: int, d: int, l: int, n: int, threads: int, args: argparse.Namespace) -> dict:
    """One CSV row: the kernel (and, where asked, the reference) at one shape and thread count."""
    res = {}
    for backend in ('cpu', 'reference'):
        if backend == 'reference' and ((l > 1000 and args.no_long_ref) or
                                       str(threads) not in args.ref_threads.split(',')):
            continue
        reps = args.repeats if backend == 'cpu' else args.ref_repeats
        warm = args.warmup if backend == 'cpu' else min(args.warmup, 1)
        res[backend] = run_case(kind, b, d, l, n, backend, warm, reps)
    c = res['cpu']
    row = dict(scan=kind, b=b, d=d, l=l, n=n, window=ops.lb_window(l) if kind == 'lb' else 1,
               threads=threads, cpu_fwd_ms=round(c[0], 3), cpu_fwd_bwd_ms=round(c[1], 3),
               cpu_fwd_min_ms=round(c[2], 3), cpu_fwd_bwd_min_ms=round(c[3], 3),
               cpu_fwd_cputime_ms=round(c[4], 3), cpu_fwd_bwd_cputime_ms=round(c[5], 3))
    if 'reference' in res:
        r = res['reference']
        row.update(ref_fwd_ms=round(r[0], 2), ref_fwd_bwd_ms=round(r[1], 2),
                   ref_fwd_cputime_ms=round(r[4], 2), ref_fwd_bwd_cputime_ms=round(r[5], 2),
                   speedup_fwd=round(r[0] / c[0], 1), speedup_fwd_bwd=round(r[1] / c[1], 1),
                   speedup_fwd_cputime=round(r[4] / c[4], 1), speedup_fwd_bwd_cputime=round(r[5] / c[5], 1))
    return row


def _add_vs_plain(rows: list) -> None:
    """LB / bidirectional cost relative to the one-direction scan at the same shape and threads (kernel, medians)."""
    plain = {(r['b'], r['l'], r['threads']): r for r in rows if r['scan'] == 'plain'}
    for r in rows:
        p = plain.get((r['b'], r['l'], r['threads']))
        if p is not None and r['scan'] in ('lb', 'bidir'):
            r['cpu_fwd_vs_plain'] = round(r['cpu_fwd_ms'] / p['cpu_fwd_ms'], 2)
            r['cpu_fwd_bwd_vs_plain'] = round(r['cpu_fwd_bwd_ms'] / p['cpu_fwd_bwd_ms'], 2)
            r['cpu_fwd_vs_plain_cputime'] = round(r['cpu_fwd_cputime_ms'] / p['cpu_fwd_cputime_ms'], 2)
            r['cpu_fwd_bwd_vs_plain_cputime'] = round(r['cpu_fwd_bwd_cputime_ms'] / p['cpu_fwd_bwd_cputime_ms'], 2)


def _markdown(rows: list, env: str) -> List[str]:
    lines = ['# CPU selective-scan benchmark (fp32)', '', env, '',
             '| threads | scan | b | l | W | kernel fwd ms | kernel fwd+bwd ms | ref fwd ms | ref fwd+bwd ms | '
             'speedup fwd (wall / cpu) | speedup fwd+bwd (wall / cpu) | kernel vs plain fwd (wall / cpu) | '
             'kernel vs plain fwd+bwd (wall / cpu) |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        vs = (f"{r['cpu_fwd_vs_plain']} / {r['cpu_fwd_vs_plain_cputime']}" if 'cpu_fwd_vs_plain' in r else '')
        vsb = (f"{r['cpu_fwd_bwd_vs_plain']} / {r['cpu_fwd_bwd_vs_plain_cputime']}" if 'cpu_fwd_vs_plain' in r
               else '')
        sp = (f"{r['speedup_fwd']} / {r['speedup_fwd_cputime']}" if 'speedup_fwd' in r else '')
        spb = (f"{r['speedup_fwd_bwd']} / {r['speedup_fwd_bwd_cputime']}" if 'speedup_fwd' in r else '')
        lines.append(f"| {r['threads']} | {r['scan']} | {r['b']} | {r['l']} | {r['window']} | {r['cpu_fwd_ms']} | "
                     f"{r['cpu_fwd_bwd_ms']} | {r.get('ref_fwd_ms', '')} | {r.get('ref_fwd_bwd_ms', '')} | "
                     f"{sp} | {spb} | {vs} | {vsb} |")
    return lines + ['', 'd=384, n=16 (Vim-T d_inner, d_state). bidir = fused forward + reverse scan (two parameter '
                    'sets); ref = sequential PyTorch reference backend (Python loop over tokens, explicit backward '
                    'formulas). Times are wall-clock medians; "cpu" ratios use the median process CPU time '
                    '(load-robust with 1 thread). The CSV also has the kernel minima.']


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.quick:
        args.repeats, args.ref_repeats, args.warmup = 5, 1, 1
    from vimzoo.ops._loader import cpu_extension
    t0 = time.time()
    cpu_extension(required=True)
    build_s = time.time() - t0
    load_before = os.getloadavg()[0]
    rows = []
    for threads in [int(t) for t in str(args.threads).split(',')]:
        torch.set_num_threads(threads)
        for case in CASES:
            rows.append(_measure(*case, threads, args))
            print(rows[-1], flush=True)
    _add_vs_plain(rows)
    load_after = os.getloadavg()[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix('.csv'), 'w', newline='') as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, '') for k in FIELDS})
    env = (f'{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, '
           f'threads={args.threads}, 1-min loadavg before/after: {load_before:.2f}/{load_after:.2f}, '
           f'kernel build/load {build_s:.1f}s (not timed), warmup {args.warmup}, median of {args.repeats} '
           f'(kernel) / {args.ref_repeats} (reference) runs, {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}')
    lines = _markdown(rows, env)
    out.with_suffix('.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))

if __name__ == '__main__':
    main()
