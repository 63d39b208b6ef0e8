#!/usr/bin/env python3
"""Train a vimzoo model: `python tools/train.py` (built-in dataset, CPU, minutes) or
`torchrun --nproc_per_node=8 tools/train.py --config configs/train/vim.yaml --data-dir /data/imagenet`.

A thin shim over `vimzoo.train.train_main` (the loop: `vimzoo.train.trainer`); see docs/training.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a source checkout

from vimzoo.train import train_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(train_main())
