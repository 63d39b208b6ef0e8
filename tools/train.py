#!/usr/bin/env python3
"""Train a vimzoo model: `python tools/train.py` (built-in dataset, CPU, minutes) or
`torchrun --nproc_per_node=8 tools/train.py --config configs/train/vim.yaml --data-dir /data/imagenet`.

The loop lives in `vimzoo.train.trainer` (built on timm's data/optim/scheduler/EMA pieces); see docs/training.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a source checkout

from vimzoo.train.trainer import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
