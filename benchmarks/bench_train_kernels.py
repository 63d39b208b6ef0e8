#!/usr/bin/env python
"""Where a Vim-T / LBVim-T training step spends its kernel time, and why the kernels run slower there than alone.

Every call the CPU backend makes into the C++ extension during one training step (batch 8 at 224, forward +
cross-entropy + backward) is timed in place; then the first call of each kernel is replayed with the same arguments,
warm (the inputs in cache, as in a standalone kernel benchmark) and cold (a 64 MiB buffer written between calls, so
the inputs come from memory, as inside the model). When in-model time is close to cold time and well above warm
time, that kernel is limited by memory traffic, not arithmetic.

    python benchmarks/bench_train_kernels.py [--model vim_tiny_patch16_224] [--threads 1] [--out results/x.md]
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import timm
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import vimzoo  # noqa: E402,F401  (registers the zoo models)
import vimzoo.ops.backends.cpu as cpu_backend  # noqa: E402
from vimzoo.ops import _loader  # noqa: E402


class TimedExtension:
    """Wraps the extension module: times every call and keeps the first call's arguments of each kernel."""

    def __init__(self, ext) -> None:
        self.ext, self.seconds, self.calls, self.first = ext, collections.Counter(), collections.Counter(), {}
        self.capture = True   # keep first-call arguments (a copy: done in the warm-up step, outside the timing)

    def __getattr__(self, name: str) -> Callable:
        fn = getattr(self.ext, name)

        def timed(*args):
            start = time.perf_counter()
            out = fn(*args)
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1
            if self.capture and name not in self.first:
                self.first[name] = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
            return out
        return timed


def replay(fn: Callable, args: Tuple, rounds: int, flush: torch.Tensor = None) -> float:
    """Median seconds of fn(*args); with `flush`, that buffer is written before every call (cold caches)."""
    fn(*args)
    times = []
    for _ in range(rounds):
        if flush is not None:
            flush.add_(1.0)
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='vim_tiny_patch16_224')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--rounds', type=int, default=15)
    ap.add_argument('--out', default=str(ROOT / 'benchmarks' / 'results' / 'train_kernels.md'))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    timed = TimedExtension(_loader.cpu_extension(required=True))
    cpu_backend._ext = lambda: timed   # the backend looks the extension up through this function on every call
    model = timm.create_model(args.model).train()
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(1))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    step()   # warm-up; captures each kernel's first arguments
    timed.seconds.clear(), timed.calls.clear()
    timed.capture = False
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    step()
    step_s = time.perf_counter() - start
    flush = torch.zeros(16 * 2 ** 20)   # 64 MiB: more than this machine's caches
    rows: List[Dict] = []
    for name in sorted(timed.seconds, key=timed.seconds.get, reverse=True):
        fn = getattr(timed.ext, name)
        in_model = timed.seconds[name] / timed.calls[name]
        warm = replay(fn, timed.first[name], args.rounds)
        cold = replay(fn, timed.first[name], args.rounds, flush)
        rows.append(dict(kernel=name, calls=timed.calls[name], step_ms=1e3 * timed.seconds[name],
                         in_model_ms=1e3 * in_model, warm_ms=1e3 * warm, cold_ms=1e3 * cold))
        print(rows[-1], flush=True)
    stamp = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
    lines = [f'{args.model} training step (batch 8, 224 px, {args.threads} thread(s)): {1e3 * step_s:.0f} ms; '
             f'{stamp}, torch {torch.__version__}, load {load_before:.2f} -> {os.getloadavg()[0]:.2f}; '
             '`python benchmarks/bench_train_kernels.py`', '',
             '| kernel | calls per step | ms per step | ms per call in the model | replayed warm | replayed cold |',
             '|---|---|---|---|---|---|']
    lines += [f"| {r['kernel']} | {r['calls']} | {r['step_ms']:.1f} | {r['in_model_ms']:.2f} | {r['warm_ms']:.2f} | "
              f"{r['cold_ms']:.2f} |" for r in rows]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
