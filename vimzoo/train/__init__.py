"""Training/evaluation support shared by `tools/train.py` and `tools/validate.py`.

Everything heavy (data pipeline, optimizers, schedulers, EMA, mixup, losses, metrics) comes from timm; this
subpackage only adds what timm's wheel lacks: a download-free built-in dataset, resumable atomic checkpoints,
recipe loading and the run loop that wires the timm pieces together.
"""
from .checkpoint import (
    atomic_save, capture_rng_state, export_safetensors, load_checkpoint, load_model_weights, restore_rng_state,
    save_checkpoint,
)
from .datasets import (
    BUILTIN_DATASETS, DatasetError, check_image_folder, default_cache_dir, ensure_builtin_dataset,
)

__all__ = [
    'atomic_save', 'capture_rng_state', 'export_safetensors', 'load_checkpoint', 'load_model_weights',
    'restore_rng_state', 'save_checkpoint', 'BUILTIN_DATASETS', 'DatasetError', 'default_cache_dir',
    'ensure_builtin_dataset', 'check_image_folder',
]
