#!/usr/bin/env python
"""Compare vimzoo.ops backends on a GPU: correctness against the PyTorch reference (on the same device), then speed.

    python tools/gpu_check.py --out gpu_check_out [--backends triton,mamba_ssm,cuda] [--quick] [--skip-speed]

1. Environment: device, torch / triton / mamba_ssm / causal_conv1d versions, what each backend can run.
2. Correctness, every backend vs 'reference': forward outputs and all gradients of selective_scan (plain, reverse,
   LB windows; l up to 2049; n in {1, 4, 16, 40}; with and without D/z/delta_bias), bidirectional_selective_scan,
   causal_conv1d (widths 2..4, SiLU, reverse) and add_rms_norm; fp32 (rel. tol 1e-4, TF32 off) and bf16 (2e-2).
   A case a backend cannot run is recorded with its reason, an exception with its message; the run goes on.
3. Vim-T (`vim_tiny_patch16_224`, random init): eval logits and one AdamW training step per backend vs reference.
4. Speed (unless --skip-speed): CUDA-event times of the scan (Vim-T mixer shape d=384, n=16; l = 197 at b = 8 and
   64, l = 4096 at b = 8; plain, LB, bidirectional; forward and forward + backward), the conv, add + RMSNorm, and the
   Vim-T forward (bf16 autocast) and training step. Backends are interleaved round by round (A, B, C, A, B, C...);
   each figure is the median over rounds, with the ratio to the first backend listed.
Writes <out>/gpu_check.json, gpu_check_speed.csv and gpu_check.md (a summary table for docs/kernels.md).
Exit 0 = all correct, 1 = a mismatch or error, 2 = no device. `--device cpu --quick` runs the same plumbing on CPU
(with the 'cpu' backend) as a smoke test.
"""
import argparse
import csv
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import vimzoo  # noqa: E402,F401  (registers the models)
import vimzoo.ops as ops  # noqa: E402
from vimzoo.ops.backends import REGISTRY  # noqa: E402

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
SCAN_SHAPES = [(1, 1, 1, 1), (2, 3, 7, 4), (2, 5, 197, 16), (1, 4, 300, 1), (1, 3, 2049, 16), (1, 2, 64, 40)]
QUICK_SHAPES = [(1, 1, 1, 1), (2, 3, 19, 4)]


# ----------------------------------------------------------------------------------------------- inputs, errors
def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()


def scan_inputs(b, d, l, n, dtype, device, seed=0, opt=True):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)
    u, delta = r(b, d, l).to(dtype), r(b, d, l, scale=0.5).to(dtype)
    A = -torch.exp(r(d, n, scale=0.5))
    B, C = r(b, n, l).to(dtype), r(b, n, l).to(dtype)
    D, z, bias = r(d), r(b, d, l).to(dtype), r(d, scale=0.5)
    return [u, delta, A, B, C] + ([D, z, bias] if opt else [None, None, None])


def outputs_and_grads(fn, inputs):
    """fn(*leaves) and the gradients of every non-None input for a fixed output gradient."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*leaves)
    gy = torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y).to(y.dtype)
    used = [t for t in leaves if t is not None]
    return [y.detach()] + [g.detach() for g in torch.autograd.grad(y, used, gy)]


def compare(fn, inputs, backends, tol):
    """{backend: max rel. error over outputs and grads, or 'error: ...'} against the reference backend."""
    exp = outputs_and_grads(lambda *t: fn(*t, backend='reference'), inputs)
    result = {}
    for be in backends:
        try:
            got = outputs_and_grads(lambda *t: fn(*t, backend=be), inputs)
            result[be] = max(rel(g, e) for g, e in zip(got, exp))
        except Exception as exc:  # noqa: BLE001 - recorded, the check goes on
            result[be] = f'error: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}'
    return result


def reason(be, op, device, tensors=(), **info):
    return REGISTRY[be].can_run(op, device, tensors, **info)


# ----------------------------------------------------------------------------------------------- correctness
def check_scans(backends, device, quick):
    rows = []
    for shape in QUICK_SHAPES if quick else SCAN_SHAPES:
        for window in (None, 3, 8, shape[2]):
            for reverse in (False, True):
                for dtype, opt in ((torch.float32, True), (torch.float32, False), (torch.bfloat16, True)):
                    inputs = scan_inputs(*shape, dtype, device, opt=opt)
                    u, delta, A, B, C, D, z, bias = inputs
                    w = window or 1
                    runnable = [be for be in backends if reason(be, 'selective_scan_bwd', device,
                                                                (u, A, delta, B, C, D, z, bias), d_state=shape[3],
                                                                window=w) is None]

                    def fn(u, delta, A, B, C, D, z, bias, backend):
                        return ops.selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=opt, reverse=reverse,
                                                  local_window=window, backend=backend)
                    errs = compare(fn, inputs, runnable, TOL[dtype])
                    rows.append(dict(op='selective_scan', shape=shape, window=w, reverse=reverse, opt=opt,
                                     dtype=str(dtype).replace('torch.', ''), tol=TOL[dtype], errors=errs,
                                     skipped=sorted(set(backends) - set(runnable))))
    return rows


def check_bidir(backends, device, quick):
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        shape = (2, 3, 19, 4) if quick else (2, 8, 197, 16)
        f, r = scan_inputs(*shape, dtype, device, seed=1), scan_inputs(*shape, dtype, device, seed=2)
        inputs = f[:6] + [f[7]] + r[:6] + [r[7], f[6]]

        def fn(*t, backend):
            return ops.bidirectional_selective_scan(*t[:14], z=t[14], backend=backend)
        runnable = [be for be in backends if reason(be, 'bidirectional_selective_scan', device, inputs) is None]
        rows.append(dict(op='bidirectional_selective_scan', shape=shape, dtype=str(dtype).replace('torch.', ''),
                         tol=TOL[dtype], errors=compare(fn, inputs, runnable, TOL[dtype]),
                         skipped=sorted(set(backends) - set(runnable))))
    return rows


def check_conv_and_norm(backends, device, quick):
    rows = []
    g = torch.Generator().manual_seed(0)
    b, d, l = (2, 5, 13) if quick else (4, 384, 197)
    for width in (2, 4) if quick else (2, 3, 4):
        for silu, reverse, dtype in ((True, False, torch.float32), (False, True, torch.float32),
                                     (True, True, torch.bfloat16)):
            inputs = [(torch.randn(b, d, l, generator=g)).to(device, dtype), torch.randn(d, width, generator=g)
                      .to(device, dtype), torch.randn(d, generator=g).to(device, dtype)]

            def fn(x, w, bias, backend):
                return ops.causal_conv1d(x, w, bias, activation='silu' if silu else None, reverse=reverse,
                                         backend=backend)
            runnable = [be for be in backends if reason(be, 'causal_conv1d_bwd', device, inputs) is None]
            rows.append(dict(op='causal_conv1d', width=width, silu=silu, reverse=reverse,
                             dtype=str(dtype).replace('torch.', ''), tol=TOL[dtype],
                             errors=compare(fn, inputs, runnable, TOL[dtype]),
                             skipped=sorted(set(backends) - set(runnable))))
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(4, 197, 192, generator=g).to(device, dtype)
        inputs = [x, torch.randn(x.shape, generator=g).to(device, dtype), torch.randn(192, generator=g).to(device)]

        def norm(x, residual, w, backend):
            normed, summed = ops.add_rms_norm(x, residual, w, backend=backend)
            return normed.float() + summed
        runnable = [be for be in backends if reason(be, 'add_rms_norm_fwd', device, inputs) is None]
        rows.append(dict(op='add_rms_norm', dtype=str(dtype).replace('torch.', ''), tol=TOL[dtype],
                         errors=compare(norm, inputs, runnable, TOL[dtype]),
                         skipped=sorted(set(backends) - set(runnable))))
    return rows


def vim_model(device, quick):
    import timm
    kwargs = dict(img_size=32, depth=2, embed_dim=32) if quick else {}   # quick: 5 tokens, d_inner 64
    return timm.create_model('vim_tiny_patch16_224', **kwargs).to(device)


def check_model(backends, device, quick):
    """Vim-T eval logits, and one training step's loss and parameter gradients, per backend vs reference (fp32)."""
    torch.manual_seed(0)
    size = 32 if quick else 224
    images = torch.randn(2, 3, size, size, device=device)
    labels = torch.tensor([1, 7], device=device)
    results = {}
    for be in ['reference'] + list(backends):
        try:
            torch.manual_seed(0)
            model = vim_model(device, quick)
            with ops.use_backend(be):
                model.eval()
                with torch.no_grad():
                    logits = model(images)
                model.train()
                opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
                loss = torch.nn.functional.cross_entropy(model(images), labels)
                loss.backward()
                grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
                opt.step()
            results[be] = (logits, loss.detach(), grads)
        except Exception as exc:  # noqa: BLE001
            results[be] = f'error: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}'
    ref = results.pop('reference')
    errors = {}
    for be, res in results.items():
        errors[be] = res if isinstance(res, str) else max(rel(a, b) for a, b in zip(res, ref))
    return [dict(op='vim_tiny_patch16_224 eval logits + train step', tol=1e-3, errors=errors, skipped=[])]


# ----------------------------------------------------------------------------------------------- speed
def timer(device):
    if device.type == 'cuda':
        def run(fn):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            return s.elapsed_time(e)
    else:
        def run(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    return run


def interleaved(fns, device, rounds, warmup=2):
    """{name: median ms}: every name timed once per round, in turn (A, B, C, A, B, C, ...)."""
    run = timer(device)
    times = {name: [] for name in fns}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(run(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def scan_cases(device, quick):
    shapes = [(2, 16, 19, 4)] if quick else [(8, 384, 197, 16), (64, 384, 197, 16), (8, 384, 4096, 16)]
    for b, d, l, n in shapes:
        for kind in ('plain', 'lb', 'bidirectional'):
            yield dict(op=f'scan {kind}', b=b, d=d, l=l, n=n), kind


def speed_ops(backends, device, quick, rounds):
    rows = []
    for info, kind in scan_cases(device, quick):
        f = [t.requires_grad_() if t is not None else t for t in scan_inputs(info['b'], info['d'], info['l'],
                                                                             info['n'], torch.float32, device)]
        r = [t.requires_grad_() if t is not None else t for t in scan_inputs(info['b'], info['d'], info['l'],
                                                                             info['n'], torch.float32, device, 1)]
        window = ops.lb_window(info['l']) if kind == 'lb' else None

        def call(be):
            if kind == 'bidirectional':
                return ops.bidirectional_selective_scan(*f[:6], f[7], *r[:6], r[7], z=f[6], backend=be)
            return ops.selective_scan(*f[:5], D=f[5], z=f[6], delta_bias=f[7], delta_softplus=True,
                                      local_window=window, backend=be)
        op = 'bidirectional_selective_scan' if kind == 'bidirectional' else 'selective_scan_bwd'
        runnable = [be for be in backends if reason(be, op, device, [f[0], f[2]], d_state=info['n'],
                                                     window=window or 1) is None]
        rows += time_pair(info, runnable, call, [t for t in f + r if t is not None], device, rounds)
    b, d, l = (2, 16, 19) if quick else (8, 384, 197)
    x = torch.randn(b, l, d, device=device).transpose(1, 2).requires_grad_()
    w, wb = torch.randn(d, 4, device=device, requires_grad=True), torch.randn(d, device=device, requires_grad=True)
    runnable = [be for be in backends if reason(be, 'causal_conv1d_bwd', device, [x, w, wb]) is None]
    rows += time_pair(dict(op='causal_conv1d silu', b=b, d=d, l=l, n=0), runnable,
                      lambda be: ops.causal_conv1d(x, w, wb, activation='silu', backend=be), [x, w, wb], device, rounds)
    xs = torch.randn(b, l + 1, d // 2, device=device, requires_grad=True)
    res, nw = torch.randn_like(xs, requires_grad=True), torch.ones(d // 2, device=device, requires_grad=True)
    runnable = [be for be in backends if reason(be, 'add_rms_norm_fwd', device, [xs, res, nw]) is None]
    rows += time_pair(dict(op='add_rms_norm', b=b, d=d // 2, l=l + 1, n=0), runnable,
                      lambda be: ops.add_rms_norm(xs, res, nw, backend=be)[0], [xs, res, nw], device, rounds)
    return rows


def time_pair(info, backends, call, leaves, device, rounds):
    """Forward (no grad) and forward + backward of call(backend), interleaved over backends."""
    if not backends:
        return []

    def fwd(be):
        def fn():
            with torch.no_grad():
                call(be)
        return fn

    def fwd_bwd(be):
        def fn():
            y = call(be)
            torch.autograd.grad(y, leaves, torch.ones_like(y), allow_unused=True)
        return fn
    rows = []
    for mode, make in (('fwd', fwd), ('fwd+bwd', fwd_bwd)):
        try:
            ms = interleaved({be: make(be) for be in backends}, device, rounds)
        except Exception as exc:  # noqa: BLE001
            rows.append(dict(info, mode=mode, error=f'{type(exc).__name__}: {str(exc).splitlines()[0][:200]}'))
            continue
        base = ms[backends[0]]
        rows += [dict(info, mode=mode, backend=be, ms=round(t, 4), ratio_to_first=round(t / base, 3))
                 for be, t in ms.items()]
    return rows


def speed_model(backends, device, quick, rounds):
    """Vim-T forward (bf16 autocast, no grad, batch 64) and training step (bf16 autocast, AdamW, batch 32)."""
    model = vim_model(device, quick)
    size = 32 if quick else 224
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == 'cuda')
    batches = {'forward': torch.randn(4 if quick else 64, 3, size, size, device=device),
               'train step': torch.randn(4 if quick else 32, 3, size, size, device=device)}
    labels = torch.zeros(batches['train step'].shape[0], dtype=torch.long, device=device)

    def forward(be):
        def fn():
            with ops.use_backend(be), torch.no_grad(), torch.autocast(**amp):
                model.eval()(batches['forward'])
        return fn

    def train(be):
        def fn():
            with ops.use_backend(be), torch.autocast(**amp):
                loss = torch.nn.functional.cross_entropy(model.train()(batches['train step']), labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return fn
    rows = []
    for mode, make in (('forward', forward), ('train step', train)):
        try:
            ms = interleaved({be: make(be) for be in backends}, device, rounds)
        except Exception as exc:  # noqa: BLE001
            rows.append(dict(op='vim_tiny_patch16_224', mode=mode, error=f'{type(exc).__name__}: {exc}'[:300]))
            continue
        n = batches['forward' if mode == 'forward' else 'train step'].shape[0]
        base = ms[backends[0]]
        rows += [dict(op='vim_tiny_patch16_224', b=n, mode=mode, backend=be, ms=round(t, 3),
                      img_per_s=round(n / t * 1e3, 1), ratio_to_first=round(t / base, 3)) for be, t in ms.items()]
    return rows


# ----------------------------------------------------------------------------------------------- report
def environment(device, backends):
    info = dict(python=platform.python_version(), torch=torch.__version__, device=str(device))
    if device.type == 'cuda':
        info.update(name=torch.cuda.get_device_name(device), capability=torch.cuda.get_device_capability(device))
    for pkg in ('triton', 'mamba_ssm', 'causal_conv1d'):
        try:
            info[pkg] = getattr(__import__(pkg), '__version__', 'unknown')
        except Exception as exc:  # noqa: BLE001
            info[pkg] = f'not importable ({type(exc).__name__}: {str(exc)[:120]})'
    probe = scan_inputs(1, 2, 5, 4, torch.float32, device)
    info['can_run selective_scan'] = {be: reason(be, 'selective_scan', device, probe[:2], d_state=4) or 'yes'
                                      for be in backends}
    return info


def failures(rows):
    bad = []
    for row in rows:
        for be, err in row['errors'].items():
            if isinstance(err, str) or not err < row['tol']:
                bad.append((row, be, err))
    return bad


def summary_md(report):
    lines = [f"GPU check: {report['env'].get('name', report['env']['device'])}, torch {report['env']['torch']}, "
             f"triton {report['env']['triton']}", '',
             '| op | backend | cases | max rel. error (tol) | skipped / failed |', '|---|---|---|---|---|']
    by = {}
    for row in report['correctness']:
        for be, err in row['errors'].items():
            entry = by.setdefault((row['op'], be, row.get('dtype', 'fp32')), [0, 0.0, row['tol'], 0])
            entry[0] += 1
            if isinstance(err, str) or not err < row['tol']:
                entry[3] += 1
            if not isinstance(err, str):
                entry[1] = max(entry[1], err)
    for (op, be, dtype), (n, worst, tol, failed) in sorted(by.items()):
        lines.append(f'| {op} ({dtype}) | {be} | {n} | {worst:.1e} ({tol:.0e}) | {failed} failed |')
    if report.get('speed'):
        lines += ['', '| case | mode | backend | ms (median) | ratio to first |', '|---|---|---|---|---|']
        for r in report['speed']:
            if 'error' in r:
                lines.append(f"| {r['op']} | {r['mode']} | - | error: {r['error'][:80]} | |")
                continue
            shape = f"b={r['b']}" + (f" d={r['d']} l={r['l']}" if 'd' in r else '')
            lines.append(f"| {r['op']} {shape} | {r['mode']} | {r['backend']} | {r['ms']} | {r['ratio_to_first']} |")
    return '\n'.join(lines) + '\n'


def default_backends(device):
    if device.type == 'cuda':
        return ['mamba_ssm', 'triton', 'cuda']
    return ['cpu'] + (['triton'] if REGISTRY['triton'].interpreted() else [])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default='gpu_check_out')
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--backends', default=None, help='comma-separated (default: mamba_ssm,triton,cuda on CUDA)')
    ap.add_argument('--quick', action='store_true', help='tiny shapes and model (a smoke test of this script)')
    ap.add_argument('--skip-speed', action='store_true')
    ap.add_argument('--rounds', type=int, default=None, help='timed rounds per case (default 20, quick 3)')
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        print('gpu_check: no CUDA device visible', file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    backends = args.backends.split(',') if args.backends else default_backends(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    report = dict(env=environment(device, backends), backends=backends, correctness=[], speed=[])
    print(json.dumps(report['env'], indent=1, default=str), flush=True)
    for name, check in (('scans', check_scans), ('bidirectional', check_bidir), ('conv + norm', check_conv_and_norm),
                        ('Vim-T', check_model)):
        try:
            rows = check(backends, device, args.quick)
        except Exception:  # noqa: BLE001 - a crash in one part must not lose the others
            rows = [dict(op=name, tol=0, errors={'(all)': 'error: ' + traceback.format_exc(limit=3)}, skipped=[])]
        report['correctness'] += rows
        print(f'[{time.time() - t0:6.1f}s] {name}: {len(rows)} cases, {len(failures(rows))} failing', flush=True)
    for row, be, err in failures(report['correctness']):
        print(f'MISMATCH {be}: {dict((k, v) for k, v in row.items() if k not in ("errors", "skipped"))}: {err}')
    if not args.skip_speed:
        rounds = args.rounds or (3 if args.quick else 20)
        report['speed'] = speed_ops(backends, device, args.quick, rounds)
        print(f'[{time.time() - t0:6.1f}s] op speed done', flush=True)
        report['speed'] += speed_model(backends, device, args.quick, max(3, rounds // 4))
        print(f'[{time.time() - t0:6.1f}s] model speed done', flush=True)
    report['seconds'] = round(time.time() - t0, 1)
    (out / 'gpu_check.json').write_text(json.dumps(report, indent=1, default=str))
    if report['speed']:
        keys = sorted({k for r in report['speed'] for k in r})
        with open(out / 'gpu_check_speed.csv', 'w', newline='') as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(report['speed'])
    (out / 'gpu_check.md').write_text(summary_md(report))
    print(summary_md(report))
    ok = not failures(report['correctness'])
    print(f'gpu_check: correctness {"OK" if ok else "FAILED"} ({report["seconds"]} s)')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
