#!/usr/bin/env python
"""`torch.compile(model)` against the same model in eager mode (CPU inference, batch 1, fp32), interleaved.

Checks what matters for Vim / LBVim under compile: the fused mixer stays one opaque op (counted in the compiled
graph), and the compiled model is at least as fast as eager. Reported per model: the median over rounds of
(compiled time / eager time in the same round), wall and process CPU, with the load average.

    python benchmarks/bench_compile.py [--models vim_tiny_patch16_224 deit_tiny_patch16_224] [--rounds 15]
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import timm  # noqa: E402
import vimzoo  # noqa: E402,F401


def fused_ops_in_graph(model: torch.nn.Module, x: torch.Tensor) -> int:
    """How many `vimzoo::mamba_inner_fwd` calls Dynamo captures (0 for models without Mamba mixers)."""
    count = 0

    def backend(gm, example_inputs):
        nonlocal count
        count += sum(1 for n in gm.graph.nodes if 'mamba_inner_fwd' in str(n.target))
        return gm.forward
    torch._dynamo.reset()
    with torch.inference_mode():
        torch.compile(model, backend=backend, fullgraph=True)(x)
    torch._dynamo.reset()
    return count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--models', nargs='+', default=['vim_tiny_patch16_224', 'lbvim_tiny_patch16_224',
                                                    'deit_tiny_patch16_224'])
    ap.add_argument('--rounds', type=int, default=15)
    ap.add_argument('--threads', type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(1, 3, 224, 224)
    print(f'torch {torch.__version__}, {args.threads} thread(s), load {os.getloadavg()[0]:.2f}')
    for name in args.models:
        model = timm.create_model(name).eval()
        fused = fused_ops_in_graph(model, x)
        compiled = torch.compile(model)
        with torch.inference_mode():
            t0 = time.perf_counter()
            compiled(x)
            compile_s = time.perf_counter() - t0
            for _ in range(2):
                model(x), compiled(x)
            wall, cpu = [], []
            for _ in range(args.rounds):
                times = []
                for fn in (model, compiled):
                    w0, c0 = time.perf_counter(), time.process_time()
                    fn(x)
                    times.append((time.perf_counter() - w0, time.process_time() - c0))
                wall.append(times[1][0] / times[0][0])
                cpu.append(times[1][1] / times[0][1])
        print(f'{name}: compiled / eager = {statistics.median(wall):.3f} wall, {statistics.median(cpu):.3f} CPU '
              f'(median of {args.rounds} paired rounds); fused mixer ops in the graph: {fused}; first compiled call '
              f'{compile_s:.0f} s; load {os.getloadavg()[0]:.2f}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
