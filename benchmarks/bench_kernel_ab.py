#!/usr/bin/env python
"""Paired A/B benchmark of the CPU kernel: this checkout's csrc/ against the same kernels built from another git
revision (default: the commit before the CPU kernel was split into csrc/cpu/), interleaved call by call.

Both builds get the same compiler flags and the same inputs; every case times A, B, A, B, ... (`--rounds` pairs after
`--warmup`) in one process, and the reported figure is the median over rounds of time(B) / time(A) per pair, by
process CPU time (load-robust at 1 thread) and by wall time. The 1-min load average is recorded before and after.

    python benchmarks/bench_kernel_ab.py                      # baseline 34755af, 1 thread
    python benchmarks/bench_kernel_ab.py --threads 1,2 --baseline <rev> --out benchmarks/results/kernel_ab
"""
import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from vimzoo.ops import _loader  # noqa: E402
from vimzoo.ops.backends._common import kernel_inputs  # noqa: E402

DEFAULT_BASELINE = '34755af'   # the last commit with the single-file csrc/scan_cpu.cpp


def build_revision(rev: str, workdir: Path):
    """The CPU extension built from `rev`'s kernel sources (the repository's own history), same flags as now."""
    files = subprocess.run(['git', 'ls-tree', '-r', '--name-only', rev, 'csrc'], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        dest = workdir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(subprocess.run(['git', 'show', f'{rev}:{name}'], cwd=ROOT, capture_output=True,
                                        check=True).stdout)
    cpu_dir = workdir / 'csrc' / 'cpu'
    sources = sorted(cpu_dir.glob('*.cpp')) if cpu_dir.is_dir() else [workdir / 'csrc' / 'scan_cpu.cpp']
    flags = _loader.cpu_build_flags()
    return _loader.load_extension(f'CPU scan kernel at {rev}', 'vimzoo_scan_cpu_ab', sources, flags,
                                  [f for f in flags if f == '-fopenmp'], fingerprint_extra=[rev])


def _scan_inputs(b, d, l, n, token_major, seed=0):
    g = torch.Generator().manual_seed(seed)

    def act(scale=1.0):
        t = torch.randn(b, l, d, generator=g) * scale
        return t.transpose(1, 2) if token_major else t.transpose(1, 2).contiguous()
    u, delta, z = act(), act(0.5), act()
    A = -torch.exp(torch.randn(d, n, generator=g) * 0.5)
    B, C = torch.randn(b, n, l, generator=g), torch.randn(b, n, l, generator=g)
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g) * 0.5
    return u, delta, A, B, C, D, z, bias


def _mixer(d, n=16, rank=12, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(d, 1, k, generator=g) * 0.3, torch.randn(d, generator=g) * 0.1,
            torch.randn(rank + 2 * n, d, generator=g) * 0.1, torch.randn(d, rank, generator=g) * 0.3,
            torch.randn(d, generator=g) * 0.1, torch.randn(d, n, generator=g) * 0.3, torch.randn(d, generator=g)]


def _ssd_inputs(b: int, l: int, h: int = 6, p: int = 64, n: int = 64, two_directions: bool = False, seed: int = 0):
    """(dy, x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias, init) as the SSD kernels take them, at Hydra-T's mixer
    shape (6 heads of 64 channels, d_state 64, one group); the second direction's tensors make it Hydra's
    quasiseparable core."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale
    second = (rnd(b, l, h), rnd(b, l, 1, n), rnd(b, l, 1, n)) if two_directions else (None, None, None)
    return (rnd(b, l, h, p), rnd(b, l, h, p), rnd(b, l, h), -torch.rand(h, generator=g) - 0.5, rnd(b, l, 1, n),
            rnd(b, l, 1, n), *second, rnd(h), rnd(h), None)


def cases(b: int, d: int, l: int, n: int):
    """name -> function(ext) running one kernel call (inputs prepared once, outside the timing)."""
    row = kernel_inputs(torch.float32, *_scan_inputs(b, d, l, n, False))
    row_b = kernel_inputs(torch.float32, *_scan_inputs(b, d, l, n, False, seed=1))
    tm = _scan_inputs(b, d, l, n, True)
    tm_p = kernel_inputs(torch.float32, None, None, *tm[2:6], None, tm[7])
    tm_b = _scan_inputs(b, d, l, n, True, seed=1)
    tm_bp = kernel_inputs(torch.float32, None, None, *tm_b[2:6], None, tm_b[7])
    dout = torch.randn(b, d, l)
    dout_tm = torch.randn(b, l, d).transpose(1, 2)
    conv_x, conv_w, conv_b = tm[0], torch.randn(d, 4), torch.randn(d)
    xz = torch.randn(b, l, 2 * d)
    rank = 12   # Vim-T's dt_rank; dt is a strided slice of the x_proj output, as in the fused mixer's backward
    dt, dt_w = torch.randn(b, l, rank + 2 * n)[..., :rank], torch.randn(d, rank) * rank ** -0.5
    wf, wb = _mixer(d), _mixer(d, seed=1)
    lbw = 8
    ssd, qs = _ssd_inputs(b, l), _ssd_inputs(b, l, two_directions=True)
    return {
        'row fwd': lambda e: e.scan_fwd(*row, True, False, 1, True),
        'row fwd LB': lambda e: e.scan_fwd(*row, True, False, lbw, True),
        'row bwd': lambda e: e.scan_bwd(dout, *row, True, False, 1),
        'row bwd LB': lambda e: e.scan_bwd(dout, *row, True, True, lbw),
        'row bidir fwd': lambda e: e.bidir_fwd(*row[:6], row[7], *row_b[:6], row_b[7], row[6], True, True),
        'tm fwd': lambda e: e.scan_fwd_tm(tm[0], tm[1], tm_p[2], tm_p[3], tm_p[4], tm_p[5], tm[6], tm_p[7], True,
                                          False, 1, True),
        'tm fwd LB': lambda e: e.scan_fwd_tm(tm[0], tm[1], tm_p[2], tm_p[3], tm_p[4], tm_p[5], tm[6], tm_p[7], True,
                                             True, lbw, True),
        'tm bidir fwd': lambda e: e.bidir_fwd_tm(tm[0], tm[1], tm_p[2], tm_p[3], tm_p[4], tm_p[5], tm_p[7], tm_b[0],
                                                 tm_b[1], tm_bp[2], tm_bp[3], tm_bp[4], tm_bp[5], tm_bp[7], tm[6],
                                                 True, True),
        'tm bwd': lambda e: e.scan_bwd_tm(dout_tm, tm[0], tm[1], tm_p[2], tm_p[3], tm_p[4], tm_p[5], tm[6], tm_p[7],
                                          True, False, 1, 1.0),
        'tm bwd LB': lambda e: e.scan_bwd_tm(dout_tm, tm[0], tm[1], tm_p[2], tm_p[3], tm_p[4], tm_p[5], tm[6],
                                             tm_p[7], True, True, lbw, 1.0),
        'tm bwd lowrank': lambda e: e.scan_bwd_tm_lowrank(dout_tm, tm[0], dt, dt_w, tm_p[2], tm_p[3], tm_p[4], tm_p[5],
                                                          tm[6], tm_p[7], True, False, 1, 1.0),
        'tm bwd lowrank LB': lambda e: e.scan_bwd_tm_lowrank(dout_tm, tm[0], dt, dt_w, tm_p[2], tm_p[3], tm_p[4],
                                                             tm_p[5], tm[6], tm_p[7], True, True, lbw, 1.0),
        'tm conv+silu': lambda e: e.causal_conv1d_tm(conv_x, conv_w, None, True, False, True),
        'tm conv+silu bwd': lambda e: e.causal_conv1d_bwd_tm(dout_tm, conv_x, conv_w, conv_b, True, False),
        'mamba_inner bidir': lambda e: e.mamba_inner_fwd(xz, wf, wb, False, 1, 0.5, True),
        'mamba_inner LB': lambda e: e.mamba_inner_fwd(xz, wf, [], True, lbw, 1.0, True),
        'ssd fwd': lambda e: e.ssd_fwd(*ssd[1:], True, False, 64, True),
        'ssd bwd': lambda e: e.ssd_bwd(*ssd, True, False, 64),
        'hydra qs bwd': lambda e: e.ssd_bwd(*qs, True, False, 64),
    }


def paired(fn, ext_a, ext_b, warmup: int, rounds: int, flush: Optional[torch.Tensor] = None):
    """Median over rounds of B/A (process CPU time and wall time), and the median A times (ms). `flush`: a buffer
    larger than the caches, written before every timed call (cold caches, as in a training step)."""
    for _ in range(warmup):
        fn(ext_a)
        fn(ext_b)
    cpu_ratio, wall_ratio, a_cpu, a_wall = [], [], [], []
    for i in range(rounds):
        times = {}
        for name, ext in (('a', ext_a), ('b', ext_b)) if i % 2 == 0 else (('b', ext_b), ('a', ext_a)):
            if flush is not None:
                flush.add_(1.0)
            c0, t0 = time.process_time(), time.perf_counter()
            fn(ext)
            times[name] = (time.process_time() - c0, time.perf_counter() - t0)
        cpu_ratio.append(times['b'][0] / max(times['a'][0], 1e-9))
        wall_ratio.append(times['b'][1] / times['a'][1])
        a_cpu.append(times['a'][0])
        a_wall.append(times['a'][1])
    return (statistics.median(cpu_ratio), statistics.median(wall_ratio), statistics.median(a_cpu) * 1e3,
            statistics.median(a_wall) * 1e3)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--baseline', default=DEFAULT_BASELINE, help='git revision A (default %(default)s)')
    ap.add_argument('--threads', default='1')
    ap.add_argument('--shape', default='8,384,197,16', help='b,d,l,n (default: Vim-T d_inner, 224 px, batch 8)')
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--rounds', type=int, default=21)
    ap.add_argument('--cases', default='', help='comma-separated case names (default: all)')
    ap.add_argument('--cold', action='store_true', help='write a 64 MiB buffer before every timed call, so the '
                    'kernels read their inputs from memory as in a training step (default: warm caches)')
    ap.add_argument('--out', default=str(ROOT / 'benchmarks' / 'results' / 'kernel_ab'))
    args = ap.parse_args(argv)
    b, d, l, n = (int(x) for x in args.shape.split(','))
    head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = bool(subprocess.run(['git', 'status', '--porcelain', 'csrc'], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        ext_a = build_revision(args.baseline, Path(tmp))
        ext_b = _loader.cpu_extension(required=True)
        flush = torch.empty(64 * 2 ** 20 // 4) if args.cold else None
        load_before = os.getloadavg()[0]
        rows = []
        for threads in (int(t) for t in args.threads.split(',')):
            torch.set_num_threads(threads)
            wanted = [c.strip() for c in args.cases.split(',') if c.strip()]
            for name, fn in cases(b, d, l, n).items():
                if wanted and name not in wanted:
                    continue
                try:
                    fn(ext_a), fn(ext_b)
                except (AttributeError, RuntimeError) as err:   # a kernel or signature the other build lacks
                    print(f'skipping {name!r}: {str(err).splitlines()[0]}', flush=True)
                    continue
                cpu_r, wall_r, a_cpu, a_wall = paired(fn, ext_a, ext_b, args.warmup, args.rounds, flush)
                rows.append(dict(case=name, threads=threads, ratio_cpu=round(cpu_r, 3), ratio_wall=round(wall_r, 3),
                                 baseline_cpu_ms=round(a_cpu, 3), baseline_wall_ms=round(a_wall, 3)))
                print(rows[-1], flush=True)
        load_after = os.getloadavg()[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix('.csv'), 'w', newline='') as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    protocol = (f'A = {args.baseline}, B = {head.strip()}{" + uncommitted csrc changes" if dirty else ""}; '
                f'b,d,l,n = {b},{d},{l},{n}; fp32; '
                f'{"cold caches (64 MiB written before each call); " if args.cold else ""}'
                f'{args.rounds} interleaved rounds after {args.warmup} warm-up; '
                f'{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; 1-min load average '
                f'{load_before:.2f} before / {load_after:.2f} after; {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}')
    lines = ['# CPU kernel A/B (time B / time A, median of paired rounds; < 1 = B faster)', '', protocol, '',
             '| case | threads | B/A (CPU time) | B/A (wall) | A CPU ms | A wall ms |', '|---|---|---|---|---|---|']
    lines += [f"| {r['case']} | {r['threads']} | {r['ratio_cpu']} | {r['ratio_wall']} | {r['baseline_cpu_ms']} | "
              f"{r['baseline_wall_ms']} |" for r in rows]
    out.with_suffix('.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
