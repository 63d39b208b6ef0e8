#!/usr/bin/env python
"""vimzoo's forward selective scan against a floor: the simplest register-resident C++ scan of the same math
(benchmarks/floor_scan/floor_scan.cpp, built here, not shipped), on Vim-T's mixer shape, interleaved call by call.

Both take fp32 token-major (b, d, l) views (what the Vim mixer passes), d_state 16, softplus(δ + bias), D and the
silu(z) gate. 'ops' is the public vimzoo.ops.selective_scan (validation, dispatch and the kernel's NaN/inf check
included); 'kernel' calls the extension's entry point directly; 'kernel_bwd' is the training kernel's backward
(scan_bwd_tm: state recompute + reverse recurrence + every gradient), in units of the floor *forward*, and so are
the two floor backwards of floor_scan.cpp (the simplest register-resident backward of the same math: forward states
kept in a buffer, the decay either kept too ('floor_bwd_store') or recomputed in the reverse pass
('floor_bwd_recompute'); checked equal to the kernel's gradients). Reported: median over rounds of time / floor
time (process CPU time, load-robust at 1 thread; and wall), the load average before and after.

    python benchmarks/bench_scan_floor.py [--threads 1,2] [--shape 8,384,197,16] [--rounds 31]
"""
import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import vimzoo.ops as ops  # noqa: E402
from vimzoo.ops import _loader  # noqa: E402
from vimzoo.ops.backends._common import kernel_inputs  # noqa: E402


def load_floor_extension():
    """The floor scan (benchmarks/floor_scan/floor_scan.cpp), JIT-built once like vimzoo's own CPU kernel."""
    return _loader.load_extension('scan floor (benchmark only)', 'vimzoo_scan_floor',
                                  [ROOT / 'benchmarks' / 'floor_scan' / 'floor_scan.cpp'], _loader.cpu_build_flags(),
                                  ['-fopenmp'], fingerprint_extra=[(ROOT / 'csrc' / 'cpu' / 'vec_math.h').read_text()])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--threads', default='1')
    ap.add_argument('--shape', default='8,384,197,16')
    ap.add_argument('--rounds', type=int, default=31)
    ap.add_argument('--out', default=str(ROOT / 'benchmarks' / 'results' / 'scan_floor.csv'))
    args = ap.parse_args(argv)
    b, d, l, n = (int(v) for v in args.shape.split(','))
    floor = load_floor_extension()
    ext = _loader.cpu_extension()
    g = torch.Generator().manual_seed(0)

    def tok(scale=1.0):
        return (torch.randn(b, l, d, generator=g) * scale).transpose(1, 2)
    u, delta, z, dout = tok(), tok(0.5), tok(), tok()
    A = -torch.exp(torch.randn(d, n, generator=g) * 0.5)
    B, C = torch.randn(b, n, l, generator=g), torch.randn(b, n, l, generator=g)
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g) * 0.5
    _, _, a, bt, ct, dk, _, bk = kernel_inputs(torch.float32, None, None, A, B, C, D, None, bias)
    calls = {
        'floor': lambda: floor.floor_scan(u, delta, a, bt, ct, dk, z, bk),
        'kernel': lambda: ext.scan_fwd_tm(u, delta, a, bt, ct, dk, z, bk, True, False, 1, True),
        'ops': lambda: ops.selective_scan(u, delta, A, B, C, D, z, bias, True, backend='cpu'),
        'kernel_bwd': lambda: ext.scan_bwd_tm(dout, u, delta, a, bt, ct, dk, z, bk, True, False, 1, 1.0),
        'floor_bwd_store': lambda: floor.floor_scan_bwd(dout, u, delta, a, bt, ct, dk, z, bk),
        'floor_bwd_recompute': lambda: floor.floor_scan_bwd_recompute(dout, u, delta, a, bt, ct, dk, z, bk),
    }
    ref = calls['floor']()
    for name in ('kernel', 'ops'):   # kernel_bwd is checked against the reference by tests/test_ops.py
        err = ((calls[name]() - ref).abs().max() / ref.abs().max()).item()
        assert err < 1e-5, f'{name} differs from the floor: {err}'
    ref_bwd = calls['kernel_bwd']()
    for name in ('floor_bwd_store', 'floor_bwd_recompute'):
        for i, (got, exp) in enumerate(zip(calls[name](), ref_bwd)):
            err = ((got - exp).abs().max() / exp.abs().max()).item()
            assert err < 1e-5, f'{name} gradient #{i} differs from the kernel: {err}'
    load_before = os.getloadavg()[0]
    rows = []
    with torch.no_grad():
        for threads in (int(t) for t in args.threads.split(',')):
            torch.set_num_threads(threads)
            for fn in calls.values():
                fn(), fn()
            times = {k: [] for k in calls}
            for r in range(args.rounds):
                for k in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
                    c0, t0 = time.process_time(), time.perf_counter()
                    calls[k]()
                    times[k].append((time.process_time() - c0, time.perf_counter() - t0))
            for k in ('kernel', 'ops', 'kernel_bwd', 'floor_bwd_store', 'floor_bwd_recompute'):
                cpu = statistics.median(x[0] / f[0] for x, f in zip(times[k], times['floor']))
                wall = statistics.median(x[1] / f[1] for x, f in zip(times[k], times['floor']))
                rows.append(dict(what=k, threads=threads, vs_floor_cpu=round(cpu, 3), vs_floor_wall=round(wall, 3),
                                 floor_cpu_ms=round(statistics.median(f[0] for f in times['floor']) * 1e3, 3),
                                 cpu_ms=round(statistics.median(x[0] for x in times[k]) * 1e3, 3)))
                print(rows[-1], flush=True)
    load_after = os.getloadavg()[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, 'w', newline='') as fh:
        fh.write(f'# b,d,l,n={args.shape}; {args.rounds} interleaved rounds; torch {torch.__version__}; '
                 f'load {load_before:.2f}/{load_after:.2f}; {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}\n')
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == '__main__':
    main()
