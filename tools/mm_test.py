#!/usr/bin/env python3
"""Evaluate a checkpoint of an mmdet / mmseg config on its test set with mmengine's Runner.

    python tools/mm_test.py CONFIG CHECKPOINT [--data-root DIR] [--work-dir DIR] [--cpu] [--cfg-options K=V ...]

CONFIG is a file or the name of a config shipped with vimzoo (e.g. mask-rcnn_van-b0_toy). The code lives in
vimzoo.mm.launch (docs/mm.md).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a source checkout

from vimzoo.mm.launch import test_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(test_main())
