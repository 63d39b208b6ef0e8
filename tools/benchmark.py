#!/usr/bin/env python3
"""Benchmark zoo models against deit_tiny in the same run: `python tools/benchmark.py --models ... --resolutions ...`.

A thin shim over `vimzoo.benchmark` (installed as `vimzoo-benchmark`); see docs/benchmarking.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a source checkout

from vimzoo.benchmark import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
