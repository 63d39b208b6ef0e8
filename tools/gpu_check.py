#!/usr/bin/env python
"""Run the vimzoo CUDA scan kernels on a GPU: correctness vs the PyTorch reference, then speed.

Builds the extension for the visible device (JIT), compares forward outputs and all gradients of the 'cuda'
backend against the 'reference' backend (run on the same GPU) over plain / reverse / LB / bidirectional scans,
fp32 (rel. tol 1e-4) and bf16 (2e-2), then times forward and forward+backward at the Vim-T shape.
Writes <out>/gpu_check.json and <out>/gpu_check_speed.csv. Exit 0 = all correct, 1 = mismatch, 2 = no GPU.
"""
import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import vimzoo.ops as ops  # noqa: E402


def make(b, d, l, n, dtype, device, seed=0, opt=True):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)
    u, delta = r(b, d, l).to(dtype), r(b, d, l, scale=0.5).to(dtype)
    A = -torch.exp(r(d, n, scale=0.5))
    B, C = r(b, n, l).to(dtype), r(b, n, l).to(dtype)
    D = r(d) if opt else None
    z = r(b, d, l).to(dtype) if opt else None
    bias = r(d, scale=0.5) if opt else None
    return [u, delta, A, B, C, D, z, bias]


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()


def check_scan(shape, window, reverse, opt, dtype, device):
    ts = [None if t is None else t.requires_grad_() for t in make(*shape, dtype, device, opt=opt)]
    used = [t for t in ts if t is not None]
    res = {}
    for be in ('reference', 'cuda'):
        y = ops.selective_scan(*ts[:5], D=ts[5], z=ts[6], delta_bias=ts[7], delta_softplus=opt, reverse=reverse,
                               local_window=window, backend=be)
        gy = torch.linspace(-1, 1, y.numel(), device=device).view_as(y).to(y.dtype)
        res[be] = (y,) + torch.autograd.grad(y, used, gy)
    return max(rel(a, b) for a, b in zip(res['cuda'], res['reference']))


def check_bidir(dtype, device):
    f = [None if t is None else t.requires_grad_() for t in make(2, 8, 197, 16, dtype, device, seed=1)]
    r = [None if t is None else t.requires_grad_() for t in make(2, 8, 197, 16, dtype, device, seed=2)]
    inputs = f[:6] + [f[7]] + r[:6] + [r[7], f[6]]
    res = {}
    for be in ('reference', 'cuda'):
        y = ops.bidirectional_selective_scan(*inputs[:14], z=inputs[14], backend=be)
        res[be] = (y,) + torch.autograd.grad(y, inputs, torch.ones_like(y))
    return max(rel(a, b) for a, b in zip(res['cuda'], res['reference']))


def cuda_time(fn, warmup=5, repeats=30):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--out', default='gpu_check_out')
    ap.add_argument('--skip-speed', action='store_true')
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print('gpu_check: no CUDA device visible', file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device('cuda')
    t0 = time.time()
    from vimzoo.ops._loader import cuda_extension
    cuda_extension(required=True)
    report = {'device': torch.cuda.get_device_name(), 'build_s': round(time.time() - t0, 1), 'cases': []}
    ok = True
    shapes = [(1, 1, 1, 1), (2, 3, 7, 4), (2, 5, 197, 16), (1, 4, 300, 1), (1, 3, 2049, 16), (1, 2, 64, 40)]
    for shape in shapes:
        for window in (None, 3, 8, shape[2]):
            for reverse in (False, True):
                for opt in (True, False):
                    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
                        err = check_scan(shape, window, reverse, opt, dtype, device)
                        passed = err < tol
                        ok &= passed
                        report['cases'].append(dict(op='selective_scan', shape=shape, window=window, reverse=reverse,
                                                    opt=opt, dtype=str(dtype), rel_err=err, ok=passed))
                        if not passed:
                            print(f'MISMATCH {shape} W={window} rev={reverse} opt={opt} {dtype}: {err:.2e}')
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        err = check_bidir(dtype, device)
        ok &= err < tol
        report['cases'].append(dict(op='bidirectional', dtype=str(dtype), rel_err=err, ok=err < tol))
    print(f'gpu_check: correctness {"OK" if ok else "FAILED"} over {len(report["cases"])} cases '
          f'(max rel err {max(c["rel_err"] for c in report["cases"]):.2e})')

    if not args.skip_speed:
        rows = []
        for b, l in ((8, 197), (64, 197), (8, 4096)):
            ts = [t.requires_grad_() for t in make(b, 384, l, 16, torch.float32, device)]
            for be in ('cuda', 'reference') if l < 1000 else ('cuda',):
                for window in (None, ops.lb_window(l)):
                    def fwd():
                        with torch.no_grad():
                            ops.selective_scan(*ts[:5], D=ts[5], z=ts[6], delta_bias=ts[7], delta_softplus=True,
                                               local_window=window, backend=be)

                    def fwdbwd():
                        y = ops.selective_scan(*ts[:5], D=ts[5], z=ts[6], delta_bias=ts[7], delta_softplus=True,
                                               local_window=window, backend=be)
                        torch.autograd.grad(y, ts, torch.ones_like(y))
                    reps = 30 if be == 'cuda' else 3
                    rows.append(dict(backend=be, b=b, d=384, l=l, n=16, window=window or 1,
                                     fwd_ms=cuda_time(fwd, 2, reps), fwd_bwd_ms=cuda_time(fwdbwd, 2, reps)))
                    print(rows[-1], flush=True)
        with open(out / 'gpu_check_speed.csv', 'w', newline='') as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        report['speed'] = rows
    (out / 'gpu_check.json').write_text(json.dumps(report, indent=1, default=str))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
