"""`python -m vimzoo.validate --checkpoint RUN/best.pth [--data-dir DIR]` = `vimzoo-validate` = `tools/validate.py`."""
import sys

from vimzoo.train import validate_main

__all__ = ['validate_main']

if __name__ == '__main__':
    sys.exit(validate_main())
