"""`python -m vimzoo.train [options]` = `vimzoo-train` = `python tools/train.py` (see docs/training.md)."""
import sys

from vimzoo.train import train_main

if __name__ == '__main__':
    sys.exit(train_main())
