"""Benchmark zoo models: params, GMACs, inference latency/throughput and peak memory, always against a timm
baseline (deit_tiny_patch16_224) measured in the same run, so every number is also reported as a ratio -- absolute
numbers from a shared machine mean little, ratios measured side by side mean more.

Protocol (printed, saved as <out>.protocol.json and in the PNG's metadata; per-row columns repeat the essentials):
- every (model, resolution) is measured in a fresh subprocess, so peak memory and allocator state are its alone;
- a model whose default input size differs from the resolution runs as-is if a trial forward works, else it is
  re-created with img_size=<res> (timm convention); what was done is in `created_with`, failures in `error`;
- `--warmup` untimed forwards, then `--iters` timed forwards (eval, torch.inference_mode); latency is the median
  (and IQR) per batch, throughput = batch / median latency;
- memory over the timed loop: CPU = peak RSS (VmHWM, reset after the warm-up) minus RSS before the loop
  (activations + workspace); CUDA = torch.cuda.max_memory_allocated minus memory_allocated before the loop;
- MACs = FLOPs / 2 from torch.utils.flop_counter.FlopCounterMode at batch 1 (vimzoo's scan ops register FLOP
  formulas); custom ops and matmul-like aten ops that ran without a formula are listed in `uncounted_ops`.

    vimzoo-benchmark --models vim_tiny_patch16_224 van_b0 --resolutions 224 512   # or python -m vimzoo.benchmark
    vimzoo-benchmark --device cuda --batch-size 64 --amp bf16 --out benchmarks/results/zoo_cuda
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

BASELINE = 'deit_tiny_patch16_224'
# the smallest ImageNet variant of each family; a family whose preferred name is not registered (yet) falls back to
# its first listed model, and a family with no models is skipped (families land independently)
PREFERRED = {
    'vim': 'vim_tiny_patch16_224', 'lbvim': 'lbvim_tiny_patch16_224', 'biformer': 'biformer_tiny',
    'davit': 'davit_tiny', 'van': 'van_b0', 'convit': 'convit_tiny', 'halonet': 'halonet_h0',
    'dependencyvit': 'dependencyvit_tiny_patch16_224',
}


def default_models() -> List[str]:
    import vimzoo

    chosen = []
    for family in vimzoo.list_families():
        names = vimzoo.list_models(family)
        if names:
            chosen.append(PREFERRED[family] if PREFERRED.get(family) in names else names[0])
    return chosen
COLUMNS = [
    'model', 'family', 'resolution', 'batch_size', 'device', 'amp', 'threads', 'status', 'params_m', 'gmacs',
    'latency_ms_median', 'latency_ms_iqr', 'cpu_time_ms_median', 'throughput_img_s', 'peak_mem_mb',
    'throughput_ratio_vs_baseline', 'latency_ratio_vs_baseline', 'cpu_time_ratio_vs_baseline',
    'memory_ratio_vs_baseline', 'gmacs_ratio_vs_baseline', 'uncounted_ops', 'created_with', 'error',
    'peak_mem_total_mb', 'mem_method', 'load_avg_1m', 'rounds', 'latency_ms_rounds', 'cpu_time_ms_rounds', 'warmup',
    'iters', 'torch', 'cpu',
]


def _cpu_name() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def _proc_status_mb(field: str) -> float:
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float('nan')


_PEAK_SOURCE = 'VmHWM'


def _rss_mb() -> float:
    rss = _proc_status_mb('VmRSS')
    if rss == rss:  # not NaN
        return rss
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2 ** 20
    except ImportError:
        return float('nan')


def _peak_rss_mb() -> float:
    if _PEAK_SOURCE == 'VmHWM':
        return _proc_status_mb('VmHWM')
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak_rss() -> Tuple[float, str]:
    """Return freed heap to the OS and reset the kernel's peak-RSS mark (VmHWM, `echo 5 > /proc/self/clear_refs`),
    so the next peak is this measurement's alone. Returns the RSS at that point (MB) and the method used; without a
    resettable mark the peak is getrusage's lifetime maximum (an upper bound: it may include model creation)."""
    import ctypes
    import gc

    global _PEAK_SOURCE
    gc.collect()
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path('/proc/self/clear_refs').write_text('5')
        _PEAK_SOURCE = 'VmHWM'
        method = 'VmHWM - VmRSS, over the timed loop (VmHWM reset after warm-up)'
    except OSError:
        _PEAK_SOURCE = 'getrusage'
        method = 'getrusage ru_maxrss - RSS before the timed loop (upper bound: peak not resettable)'
    return _rss_mb(), method


def _first_line(e: BaseException) -> str:
    return f'{type(e).__name__}: {(str(e).strip().splitlines() or [""])[0][:300]}'


def _create(name: str, resolution: int, device: str):
    """A model (eval, on `device`) able to run at `resolution`, and how it was made: as-is when its cfg input size
    matches or a batch-1 trial forward at `resolution` works (any-size convnets, dynamic-size models), else
    re-created with img_size=resolution (timm convention for fixed-size ViT-likes). Raises with both errors."""
    import timm
    import torch

    model = timm.create_model(name).eval().to(device)
    if tuple(model.pretrained_cfg.get('input_size', (3, 0, 0))[1:]) == (resolution, resolution):
        return model, 'default'
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, resolution, resolution, device=device))
        return model, 'default (trial forward ok)'
    except Exception as e:  # fixed-size model, or the resolution is impossible for it
        first = _first_line(e)
    del model
    how = f'img_size={resolution}'
    try:
        model = timm.create_model(name, img_size=resolution).eval().to(device)
        with torch.inference_mode():
            model(torch.zeros(1, 3, resolution, resolution, device=device))
    except Exception as e:
        raise RuntimeError(f'default model failed at {resolution}px ({first}); {how} failed too ({_first_line(e)})')
    return model, f'{how} (default failed: {first})'


# aten ops whose names contain these are matmul-like: one without a FLOP formula makes a MAC count wrong.
# (Element-wise ops - add, softmax, GELU, norms - are never counted by FlopCounterMode, by convention, as in fvcore.)
HEAVY_OP_KEYWORDS = ('attention', 'conv', 'mm', 'matmul', 'einsum', 'linear', 'scan')


def count_macs(model, x) -> Tuple[float, List[str]]:
    """GMACs (= FlopCounterMode FLOPs / 2) of one forward of `x`, plus the ops FlopCounterMode executed without a
    formula that matter: every non-aten (custom) op, and matmul-like aten ops. Those are reported, not guessed."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import vimzoo.flops  # noqa: F401  (FLOP formula for CPU SDPA, which torch lacks)
    counter = FlopCounterMode(display=False)
    leaves = set()
    if hasattr(counter, '_count_flops'):  # torch >= 2.5: called for every op that was run without decomposing
        count_leaf = counter._count_flops

        def _spy(func_packet, out, args, kwargs):
            leaves.add(func_packet)
            return count_leaf(func_packet, out, args, kwargs)
        counter._count_flops = _spy
    with torch.inference_mode(), counter:
        model(x)

    def _matters(packet) -> bool:
        name = str(packet)
        return name.split('.')[0] not in ('aten', 'prim', 'prims') or any(k in name for k in HEAVY_OP_KEYWORDS)

    uncounted = sorted(str(p) for p in leaves if p not in counter.flop_registry and _matters(p))
    if not hasattr(counter, '_count_flops'):
        uncounted = ['(uncounted-op detection unavailable in this torch)']
    return counter.get_total_flops() / 2 / 1e9, uncounted


def _amp_dtype(amp: Optional[str]):
    import torch
    return {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(amp or 'bf16', torch.bfloat16)


def measure(name: str, resolution: int, batch_size: int, device: str, warmup: int, iters: int, amp: Optional[str],
            threads: int, memory: bool) -> Dict:
    """One (model, resolution) measurement; runs inside the worker subprocess."""
    import torch
    import vimzoo  # noqa: F401  (registers the zoo)

    torch.set_num_threads(threads)
    row = dict(model=name, resolution=resolution, batch_size=batch_size, device=device, amp=amp or 'fp32',
               threads=threads, warmup=warmup, iters=iters, torch=torch.__version__, cpu=_cpu_name())
    try:
        row['family'] = vimzoo.family_of(name)
    except KeyError:
        row['family'] = 'timm'
    try:
        model, row['created_with'] = _create(name, resolution, device)
        row['params_m'] = sum(p.numel() for p in model.parameters()) / 1e6
        x = torch.randn(batch_size, 3, resolution, resolution, device=device)
        autocast = torch.autocast(device_type=device, dtype=_amp_dtype(amp), enabled=amp is not None)
        sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
        times = []
        with torch.inference_mode(), autocast:
            for _ in range(warmup):  # also takes one-time costs (kernel JIT/loading, allocator growth) off the peak
                model(x)
            sync()
            # peak memory is that of the timed loop: reset the peak marks only now
            if device == 'cuda':
                torch.cuda.reset_peak_memory_stats()
                cuda_before = torch.cuda.memory_allocated()
            elif memory:
                rss_before, row['mem_method'] = _reset_peak_rss()
            cpu_times = []
            row['load_avg_1m'] = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None  # machine busy-ness
            for _ in range(iters):
                sync()
                start, cpu_start = time.perf_counter(), time.process_time()
                model(x)
                sync()
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
        median = statistics.median(times)
        q = statistics.quantiles(times, n=4) if len(times) >= 2 else [median, median, median]
        row.update(latency_ms_median=median * 1e3, latency_ms_iqr=(q[2] - q[0]) * 1e3,
                   throughput_img_s=batch_size / median, status='ok',
                   cpu_time_ms_median=statistics.median(cpu_times) * 1e3)
        if memory and device == 'cuda':
            row['peak_mem_total_mb'] = torch.cuda.max_memory_allocated() / 2 ** 20
            row['peak_mem_mb'] = (torch.cuda.max_memory_allocated() - cuda_before) / 2 ** 20
            row['mem_method'] = 'cuda max_memory_allocated - memory_allocated, over the timed loop'
        elif memory:
            peak = _peak_rss_mb()
            row['peak_mem_total_mb'] = peak
            row['peak_mem_mb'] = max(0.0, peak - rss_before)
        row['gmacs'], uncounted = count_macs(model, x[:1])  # after timing: its tracing must not warm the peak
        row['uncounted_ops'] = ' '.join(uncounted)
    except Exception as e:  # recorded in the row: one model failing at one size must not sink the run
        row.update(status='error', error=_first_line(e))
    return row


def _run_worker(args: argparse.Namespace, name: str, resolution: int) -> Dict:
    spec = dict(name=name, resolution=resolution, batch_size=args.batch_size, device=args.device,
                warmup=args.warmup, iters=args.iters, amp=args.amp, threads=args.threads, memory=not args.no_memory)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    package_root = str(Path(__file__).resolve().parent.parent)   # the worker imports this same vimzoo
    env['PYTHONPATH'] = os.pathsep.join(p for p in (package_root, env.get('PYTHONPATH')) if p)
    failed = dict(model=name, resolution=resolution, batch_size=args.batch_size, device=args.device,
                  amp=args.amp or 'fp32', threads=args.threads, status='error')
    try:
        proc = subprocess.run([sys.executable, '-m', 'vimzoo.benchmark', '--worker', json.dumps(spec)],
                              capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return dict(failed, error=f'worker timed out after {args.timeout}s')
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith('{'):
            return json.loads(line)
    err = (proc.stderr.strip().splitlines() or ['no output'])[-1]  # e.g. killed by the OOM killer: rc -9
    return dict(failed, error=f'worker exit {proc.returncode}: {err}')


def merge_rounds(rounds: List[Dict]) -> Dict:
    """One row from the rounds of one (model, resolution): the round with the median latency (all its fields stay
    consistent), plus every round's median latency and CPU time so the spread is visible."""
    ok = [r for r in rounds if r.get('status') == 'ok']
    if not ok:
        return dict(rounds[0], rounds=len(rounds))
    ok.sort(key=lambda r: r['latency_ms_median'])
    row = dict(ok[(len(ok) - 1) // 2])  # lower median for an even count
    row['rounds'] = len(rounds)
    row['latency_ms_rounds'] = ' '.join(f"{r['latency_ms_median']:.4g}" for r in rounds if r.get('status') == 'ok')
    row['cpu_time_ms_rounds'] = ' '.join(f"{r['cpu_time_ms_median']:.4g}" for r in rounds if r.get('status') == 'ok')
    if len(ok) < len(rounds):
        row['error'] = f'{len(rounds) - len(ok)} of {len(rounds)} rounds failed: ' + next(
            r.get('error', '') for r in rounds if r.get('status') != 'ok')
    return row


def add_ratios(rows: List[Dict], baseline: str) -> None:
    """Ratios vs the baseline at the same resolution (>1 throughput ratio = faster than the baseline)."""
    base = {r['resolution']: r for r in rows if r['model'] == baseline and r.get('status') == 'ok'}
    for r in rows:
        b = base.get(r['resolution'])
        if r.get('status') != 'ok' or b is None:
            continue
        r['throughput_ratio_vs_baseline'] = r['throughput_img_s'] / b['throughput_img_s']
        r['latency_ratio_vs_baseline'] = r['latency_ms_median'] / b['latency_ms_median']
        if r.get('cpu_time_ms_median') and b.get('cpu_time_ms_median'):
            r['cpu_time_ratio_vs_baseline'] = r['cpu_time_ms_median'] / b['cpu_time_ms_median']
        r['gmacs_ratio_vs_baseline'] = r['gmacs'] / b['gmacs'] if b['gmacs'] else None
        if r.get('peak_mem_mb') is not None and b.get('peak_mem_mb'):
            r['memory_ratio_vs_baseline'] = r['peak_mem_mb'] / b['peak_mem_mb']


def plot(rows: List[Dict], path: Path, baseline: str, protocol: Optional[Dict] = None) -> None:
    """Throughput and peak memory per model: bars (labelled with the ratio vs the baseline) at one resolution,
    log-log lines vs resolution otherwise. The protocol goes into the title and the PNG's Description field."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get('status') == 'ok']
    models = list(dict.fromkeys(r['model'] for r in ok))
    resolutions = sorted({r['resolution'] for r in ok})
    fig, axes = plt.subplots(1, 2, figsize=(13, max(4.5, 0.4 * len(models) + 1.5)))
    metrics = [('throughput_img_s', 'throughput (img/s)', 'throughput_ratio_vs_baseline'),
               ('peak_mem_mb', 'peak memory (MB, activations + workspace)', 'memory_ratio_vs_baseline')]
    for ax, (key, label, ratio_key) in zip(axes, metrics):
        if not ok:
            ax.text(0.5, 0.5, 'no successful measurement', ha='center', transform=ax.transAxes)
        elif len(resolutions) == 1:  # failed models stay visible, marked 'error'
            rows_1 = [r for r in rows if r['resolution'] == resolutions[0]]
            values = [(r.get(key) or 0) if r.get('status') == 'ok' else 0 for r in rows_1]
            colors = ['tab:gray' if r['model'] == baseline else 'tab:blue' for r in rows_1]
            bars = ax.barh([r['model'] for r in rows_1], values, color=colors)
            ax.invert_yaxis()
            for bar, r in zip(bars, rows_1):
                text = f' x{r[ratio_key]:.2f}' if isinstance(r.get(ratio_key), (int, float)) else ''
                if r.get('status') != 'ok':
                    text = ' error (see CSV)'
                ax.annotate(text, (bar.get_width(), bar.get_y() + bar.get_height() / 2), va='center', fontsize=7)
            positive = [v for v in values if v > 0]
            if positive and max(positive) / min(positive) > 20:
                ax.set_xscale('log')
            ax.set_xlabel(f'{label} @ {resolutions[0]}px')
            ax.tick_params(axis='y', labelsize=7)
        else:
            for m in models:
                pts = sorted((r['resolution'], r.get(key)) for r in ok if r['model'] == m and r.get(key))
                if pts:
                    ax.plot(*zip(*pts), marker='o', label=m, linestyle='--' if m == baseline else '-',
                            color='black' if m == baseline else None)
            ax.set_xscale('log')
            ax.set_yscale('log')
            ax.set_xticks(resolutions, [str(r) for r in resolutions])
            ax.set_xlabel('resolution (px)')
            ax.set_ylabel(label)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        ax.set_title(label, fontsize=9)
    if protocol:
        fig.suptitle(f"baseline {baseline} (grey bars / black dashed; x = ratio vs baseline). "
                     f"{protocol.get('device')} {protocol.get('amp')}, batch {protocol.get('batch_size')}, "
                     f"{protocol.get('threads')} threads, warm-up {protocol.get('warmup')}, "
                     f"median of {protocol.get('iters')}, {protocol.get('rounds', 1)} round(s); "
                     f"torch {protocol.get('torch')}; {protocol.get('cpu')}",
                     fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={'Description': json.dumps(protocol or {})})
    plt.close(fig)


def read_csv(path: Path) -> List[Dict]:
    """Rows of a CSV written by this tool, numbers as numbers, empty cells dropped (for --replot)."""
    def convert(value: str):
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
        return value
    with open(path, newline='') as f:
        return [{k: convert(v) for k, v in row.items() if v != ''} for row in csv.DictReader(f)]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=None,
                        help='timm/zoo model names (default: the smallest variant of every zoo family present)')
    parser.add_argument('--resolutions', nargs='+', type=int, default=[224])
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--amp', choices=['bf16', 'fp16', 'bfloat16', 'float16'], default=None,
                        help='torch.autocast dtype (default: fp32, no autocast)')
    parser.add_argument('--timeout', type=float, default=3600, help='seconds per (model, resolution) worker')
    parser.add_argument('--rounds', type=int, default=1,
                        help='measure the whole plan this many times, round-robin (fresh worker each time), and keep '
                             'the median round per (model, resolution): robust to load changes on a shared machine')
    parser.add_argument('--baseline', default=BASELINE)
    parser.add_argument('--no-memory', action='store_true', help='skip peak-memory measurement')
    parser.add_argument('--out', default='benchmarks/results/zoo_cpu', help='output prefix for .csv/.png/.json')
    parser.add_argument('--dry-run', action='store_true', help='print the plan and exit')
    parser.add_argument('--replot', action='store_true', help='redraw <out>.png from <out>.csv, measure nothing')
    parser.add_argument('--no-progress', action='store_true')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    return parser


def _out_prefix(out: str) -> Path:
    return Path(out[:-4] if out.endswith('.csv') else out)


def _protocol(args: argparse.Namespace) -> Dict[str, object]:
    """Everything a reader needs to rerun and interpret the measurement (written next to the CSV)."""
    import timm
    import torch
    import vimzoo
    return dict(
        baseline=args.baseline, batch_size=args.batch_size, device=args.device, amp=args.amp or 'fp32',
        threads=args.threads, warmup=args.warmup, iters=args.iters, rounds=args.rounds,
        mode='eval, torch.inference_mode, forward only',
        statistic=('median latency per batch over the timed iterations (after the warm-up ones), IQR = q3 - q1; '
                   'throughput = batch / median; cpu_time = median process CPU time per batch (all threads; '
                   'robust to other processes preempting this one, unlike wall time); with --rounds > 1 the row of '
                   'the round with the median latency'),
        memory=('fresh subprocess per (model, resolution); CPU: peak RSS during the timed loop minus RSS '
                'before it (VmHWM reset via /proc/self/clear_refs, else getrusage upper bound); CUDA: '
                'max_memory_allocated minus allocated before it (weights excluded; total in peak_mem_total_mb)'),
        macs='FlopCounterMode FLOPs / 2 at batch 1, fp32; element-wise ops not counted; see uncounted_ops',
        gpu=torch.cuda.get_device_name(0) if args.device == 'cuda' else None,
        torch=torch.__version__, timm=timm.__version__,
        vimzoo=vimzoo.__version__, cpu=_cpu_name(), cpu_count=os.cpu_count(), python=platform.python_version(),
        date=time.strftime('%Y-%m-%d %H:%M:%S'),
    )


def _write_results(rows: List[Dict], out: Path, protocol: Dict[str, object], baseline: str) -> List[Path]:
    paths = {ext: out.parent / f'{out.name}{ext}' for ext in ('.csv', '.png', '.protocol.json')}
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(paths['.csv'], 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction='ignore')
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f'{v:.4g}' if isinstance(v, float) else v) for k, v in row.items()})
    paths['.protocol.json'].write_text(json.dumps(protocol, indent=2) + '\n')
    plot(rows, paths['.png'], baseline, protocol)
    return list(paths.values())


def _print_table(rows: List[Dict]) -> None:
    print(f'{"model":40s} {"res":>5s} {"params(M)":>9s} {"GMACs":>7s} {"ms":>9s} {"img/s":>8s} {"x base":>7s} '
          f'{"mem MB":>8s}  status')
    for r in rows:
        def fmt(key, spec):
            return format(r[key], spec) if isinstance(r.get(key), (int, float)) else '-'
        print(f'{r["model"]:40s} {r["resolution"]:5d} {fmt("params_m", "9.2f")} {fmt("gmacs", "7.3g")} '
              f'{fmt("latency_ms_median", "9.1f")} {fmt("throughput_img_s", "8.1f")} '
              f'{fmt("throughput_ratio_vs_baseline", "7.2f")} {fmt("peak_mem_mb", "8.1f")}  '
              f'{r.get("status")} {r.get("error", "")}')


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(**json.loads(args.worker))))
        return 0
    args.amp = {'bfloat16': 'bf16', 'float16': 'fp16'}.get(args.amp, args.amp)
    if args.replot:
        out = _out_prefix(args.out)
        proto = out.parent / f'{out.name}.protocol.json'
        plot(read_csv(out.parent / f'{out.name}.csv'), out.parent / f'{out.name}.png', args.baseline,
             json.loads(proto.read_text()) if proto.exists() else None)
        print(f'wrote {out.parent / f"{out.name}.png"}')
        return 0
    if args.batch_size < 1 or args.iters < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error('--batch-size, --iters and --rounds must be >= 1, --warmup >= 0')
    if args.device == 'cuda':
        import torch
        if not torch.cuda.is_available():
            parser.error('--device cuda requested but torch.cuda.is_available() is False')

    import vimzoo
    models = [args.baseline] + [m for m in (args.models or default_models()) if m != args.baseline]
    for m in models:
        vimzoo.check_model_name(m)  # fail fast with suggestions, before any subprocess
    plan = [(m, r) for r in args.resolutions for m in models]
    protocol = _protocol(args)
    print('protocol:\n' + '\n'.join(f'  {k}: {v}' for k, v in protocol.items()))
    if args.dry_run:
        for m, r in plan:
            print(f'would measure {m} @ {r}px')
        return 0

    from tqdm import tqdm
    runs: Dict[tuple, List[Dict]] = {key: [] for key in plan}
    order = [key for _ in range(args.rounds) for key in plan]  # round-robin: load drifts hit every model alike
    for m, r in tqdm(order, desc='benchmark', disable=args.no_progress):
        runs[(m, r)].append(_run_worker(args, m, r))
    rows = [merge_rounds(runs[key]) for key in plan]
    add_ratios(rows, args.baseline)
    paths = _write_results(rows, _out_prefix(args.out), protocol, args.baseline)
    _print_table(rows)
    print('wrote ' + ', '.join(str(p) for p in paths))
    return 0 if any(r.get('status') == 'ok' for r in rows if r['model'] == args.baseline) else 1

if __name__ == '__main__':
    sys.exit(main())
