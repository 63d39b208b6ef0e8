"""Training/evaluation support shared by `tools/train.py` and `tools/validate.py`.

Everything heavy (data pipeline, optimizers, schedulers, EMA, mixup, losses, metrics, distributed set-up) comes from
timm; this subpackage adds what timm's wheel lacks: a download-free built-in dataset, checksummed resumable atomic
checkpoints, a locked run folder, recipe loading and the run loop that wires the timm pieces together.
`train_main` / `validate_main` are the two command lines (`tools/train.py`, `tools/validate.py`).
"""
from typing import Optional, Sequence

from .checkpoint import (
    CheckpointError, atomic_save, capture_rng_state, export_safetensors, load_checkpoint, load_model_weights,
    restore_rng_state, save_checkpoint,
)
from .datasets import (
    BUILTIN_DATASETS, DatasetError, check_image_folder, default_cache_dir, ensure_builtin_dataset,
)

__all__ = [
    'atomic_save', 'capture_rng_state', 'export_safetensors', 'load_checkpoint', 'load_model_weights',
    'restore_rng_state', 'save_checkpoint', 'BUILTIN_DATASETS', 'CheckpointError', 'DatasetError',
    'default_cache_dir', 'ensure_builtin_dataset', 'check_image_folder', 'train_main', 'validate_main',
]


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """`tools/train.py` (the run loop is imported on call, so `import vimzoo.train` stays light)."""
    from .trainer import main
    return main(argv)


def validate_main(argv: Optional[Sequence[str]] = None) -> int:
    """`tools/validate.py`."""
    from .evaluate import main
    return main(argv)
