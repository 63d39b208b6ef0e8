#!/usr/bin/env python3
"""Train an mmdet / mmseg config on mmengine's Runner (CPU or GPU, one process or torchrun DDP).

    python tools/mm_train.py CONFIG [--data-root DIR] [--work-dir DIR] [--cpu] [--resume [CKPT]] [--cfg-options K=V ...]
    torchrun --nproc_per_node=N tools/mm_train.py CONFIG ...

CONFIG is a file or the name of a config shipped with vimzoo (e.g. mask-rcnn_van-b0_toy). The code lives in
vimzoo.mm.launch (docs/mm.md).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a source checkout

from vimzoo.mm.launch import train_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(train_main())
