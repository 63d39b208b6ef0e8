#!/usr/bin/env python
"""Peak memory and time of BiFormer's routed attention: memory-lean (default) vs the official gather formulation.

    python benchmarks/bench_biformer.py [--threads 2] [--repeats 3] [--out benchmarks/results/biformer_bra_memory.csv]

Protocol (CPU; there is no GPU on the machine this was written on):
  * unit = one `BiLevelRoutingAttention` layer with biformer_small widths at a dense-task resolution (cases below),
    run as forward+backward (`train`) or forward under `torch.inference_mode()` (`infer`);
  * every (case, impl, mode) runs in a *fresh subprocess*, so peak RSS is not polluted by earlier runs. There the
    layer and input are built, the current RSS is read from /proc/self/statm (`rss_before`), the kernel's peak-RSS
    mark is reset (`echo 5 > /proc/self/clear_refs`, Linux >= 4.0), one step is run and `peak_delta_mib` =
    VmHWM - rss_before (glibc returns large blocks to the OS, so RSS tracks tensor memory). `peak_valid` says the
    reset worked (else the import-time peak would mask the step);
  * `saved_mib` = bytes autograd saves for backward inside the attention layer (saved_tensors_hooks; exact,
    allocator-independent; train mode only);
  * `median_ms` = median of --repeats further steps in the same subprocess;
  * `max_abs_diff` = |lean - naive| of the output (and, for train, of the input gradient) on the same weights.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# name: (dim, map H, map W, n_win, topk) -- biformer_small stage widths / topks
CASES = {
    'stage1_512px_nwin8': (64, 128, 128, 8, 1),
    'stage2_512px_nwin8': (128, 64, 64, 8, 4),
    'stage3_512px_nwin8': (256, 32, 32, 8, 16),
    'stage3_1024px_nwin16': (256, 64, 64, 16, 16),
}


def _rss_mib() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def _hwm_mib() -> float:
    with open('/proc/self/status') as f:
        line = next(line for line in f if line.startswith('VmHWM:'))
    return int(line.split()[1]) / 1024


def _build(case: str, impl: str):
    from vimzoo.models.biformer import BiLevelRoutingAttention
    dim, h, w, n_win, topk = CASES[case]
    torch.manual_seed(0)
    layer = BiLevelRoutingAttention(dim, num_heads=dim // 32, n_win=n_win, topk=topk, attn_impl=impl)
    x = torch.randn(1, h, w, dim)
    return layer, x


def _step(layer, x, mode: str):
    if mode == 'infer':
        with torch.inference_mode():
            return layer(x), None
    x = x.detach().requires_grad_(True)
    out = layer(x)
    out.square().mean().backward()
    return out.detach(), x.grad


def child(case: str, impl: str, mode: str, repeats: int) -> dict:
    layer, x = _build(case, impl)
    saved = 0
    if mode == 'train':
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x.detach().requires_grad_(True))
        saved = total[0]
    before = _rss_mib()
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM (peak RSS) to the current RSS
    peak_before = _hwm_mib()
    _step(layer, x, mode)
    peak = _hwm_mib()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _step(layer, x, mode)
        times.append((time.perf_counter() - t0) * 1e3)
    return dict(rss_before_mib=round(before, 1), peak_delta_mib=round(peak - before, 1),
                peak_valid=peak_before <= before + 1, saved_mib=round(saved / 2 ** 20, 2),
                median_ms=round(statistics.median(times), 1))


def _diff(case: str, mode: str) -> float:
    lean, x = _build(case, 'lean')
    naive, _ = _build(case, 'naive')
    naive.load_state_dict(lean.state_dict())
    (o1, g1), (o2, g2) = _step(lean, x, mode), _step(naive, x, mode)
    d = (o1 - o2).abs().max().item()
    if g1 is not None:
        d = max(d, (g1 - g2).abs().max().item())
    return d


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cases', nargs='+', default=list(CASES), choices=list(CASES))
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results' / 'biformer_bra_memory.csv')
    parser.add_argument('--child', nargs=3, metavar=('CASE', 'IMPL', 'MODE'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(*args.child, repeats=args.repeats)))
        return 0

    rows = []
    for case in args.cases:
        dim, h, w, n_win, topk = CASES[case]
        for mode in ('train', 'infer'):
            diff = _diff(case, mode)
            for impl in ('naive', 'lean'):
                cmd = [sys.executable, __file__, '--child', case, impl, mode, '--threads', str(args.threads),
                       '--repeats', str(args.repeats)]
                res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                row = dict(case=case, dim=dim, map=f'{h}x{w}', n_win=n_win, topk=topk, mode=mode, impl=impl, **res,
                           max_abs_diff=f'{diff:.1e}', threads=args.threads, torch=torch.__version__)
                rows.append(row)
                print(', '.join(f'{k}={v}' for k, v in row.items()), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
