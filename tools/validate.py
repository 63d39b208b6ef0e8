#!/usr/bin/env python3
"""Evaluate a checkpoint: `python tools/validate.py --checkpoint output/train/<run>/best.pth [--data-dir DIR]`.

Accepts our checkpoints, `.safetensors` exports and (with --official-weights) official release files; uses the
model's eval preprocessing and the same evaluation loop as training. A thin shim over `vimzoo.train.validate_main`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a source checkout

from vimzoo.train import validate_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(validate_main())
