"""Load mmengine Runner checkpoints with `torch.load(weights_only=True)` (torch >= 2.6 default) without unpickling code.

mmengine 0.10.7 calls `torch.load(file)`; its Runner checkpoints hold the `MessageHub` state (`HistoryBuffer` objects
with numpy arrays, and `getattr(HistoryBuffer, 'min')`-style references to its statistics methods), which the
weights-only unpickler rejects, so `resume=True`, `load_from=` and `init_detector` fail on a stock install. Instead of
`weights_only=False` (full pickle), the local-file loader registered here keeps `weights_only=True` and allow-lists
exactly those objects: numpy arrays/scalars/dtypes, `HistoryBuffer`, and a `getattr` that only resolves
`HistoryBuffer`'s registered statistics methods (a general `getattr` would let a crafted file reach arbitrary code).
"""
from __future__ import annotations

import os.path as osp
import pickle
from typing import Any, Callable, List

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

__all__ = ['register_safe_checkpoint_loader', 'safe_load', 'SAFE_GLOBALS']


_DEFAULT_STATISTICS = ('min', 'max', 'current', 'mean')  # HistoryBuffer._set_default_statistics


def _history_buffer_getattr(obj: Any, name: str) -> Callable:
    """`builtins.getattr` as the unpickler sees it, limited to `HistoryBuffer.<registered statistics method>`."""
    if obj is HistoryBuffer and (name in _DEFAULT_STATISTICS or name in HistoryBuffer._statistics_methods):
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'refusing getattr({obj!r}, {name!r}) in a weights-only checkpoint')


def _numpy_globals() -> List[Any]:
    core = getattr(np, '_core', None) or np.core
    names = [np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar]
    names += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith('DType')]
    return names


SAFE_GLOBALS: List[Any] = [HistoryBuffer, *_numpy_globals(), (_history_buffer_getattr, 'builtins.getattr')]


def safe_load(filename: str, map_location: Any = None) -> Any:
    """`torch.load(weights_only=True)` that also accepts mmengine Runner checkpoints."""
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        return torch.load(filename, map_location=map_location, weights_only=True)


def _load_from_local(filename: str, map_location: Any) -> Any:
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return safe_load(filename, map_location)


def register_safe_checkpoint_loader() -> None:
    """Make mmengine's local-file loader (load_checkpoint, Runner resume/load_from, init_detector) use `safe_load`.

    Called by `import vimzoo.mm`; idempotent. Remote schemes (http, open-mmlab://, ...) are unchanged.
    """
    CheckpointLoader.register_scheme(prefixes='', loader=_load_from_local, force=True)
