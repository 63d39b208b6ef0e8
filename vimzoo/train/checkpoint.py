"""Checkpoint I/O that survives a SIGKILL at any instant and loads with `torch.load(weights_only=True)`.

A checkpoint is a plain dict of tensors and python builtins (no pickled classes), so it loads under
`weights_only=True`. It is written to a temporary file in the same folder, fsynced and `os.replace`d into place,
so a reader only ever sees the previous or the new complete file.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

__all__ = ['atomic_save', 'atomic_copy', 'capture_rng_state', 'restore_rng_state', 'save_checkpoint',
           'load_checkpoint', 'export_safetensors', 'load_model_weights', 'to_plain']


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: os.PathLike, writer) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, 'wb') as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(obj: Any, path: os.PathLike) -> Path:
    """`torch.save` to a temp file next to `path`, then `os.replace`: never leaves a truncated file behind."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_copy(src: os.PathLike, dst: os.PathLike) -> Path:
    def _copy(f):
        with open(src, 'rb') as s:
            while chunk := s.read(1 << 24):
                f.write(chunk)
    return _atomic_write(dst, _copy)


def to_plain(value: Any) -> Any:
    """Convert argparse values (Paths, tuples, numpy scalars) to builtins that `weights_only` loading accepts."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value
    return str(value)


def capture_rng_state() -> Dict[str, Any]:
    """torch (CPU + every CUDA device), numpy and python RNG states as tensors / builtins."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        'torch': torch.get_rng_state(),
        'numpy': {
            'kind': str(np_state[0]),
            'keys': torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            'pos': int(np_state[2]),
            'has_gauss': int(np_state[3]),
            'cached_gaussian': float(np_state[4]),
        },
        'python': {'version': int(py_state[0]), 'state': list(py_state[1]),
                   'gauss_next': py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state['torch'].cpu())
    n = state['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    p = state['python']
    random.setstate((p['version'], tuple(p['state']), p['gauss_next']))
    if 'cuda' in state and torch.cuda.is_available():
        cuda_states = list(state['cuda'])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_checkpoint(path: os.PathLike, **entries: Any) -> Path:
    """Atomically save a training checkpoint dict; `entries` are converted with `to_plain` where needed."""
    return atomic_save({k: to_plain(v) if k in ('args', 'metrics', 'extra') else v for k, v in entries.items()},
                       path)


def load_checkpoint(path: os.PathLike, map_location: Any = 'cpu') -> Dict[str, Any]:
    """`torch.load(..., weights_only=True)` with a readable error for missing files."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist.')
    return torch.load(path, map_location=map_location, weights_only=True)


def export_safetensors(state_dict: Mapping[str, torch.Tensor], path: os.PathLike,
                       metadata: Optional[Dict[str, str]] = None) -> Path:
    """Save weights as safetensors (every tensor cloned contiguous: safetensors refuses shared storage)."""
    from safetensors.torch import save as st_save
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    data = st_save(tensors, metadata={k: str(v) for k, v in (metadata or {}).items()})
    return _atomic_write(path, lambda f: f.write(data))


def load_model_weights(path: os.PathLike, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """Return a model state_dict from a `.safetensors` file or a `.pth` checkpoint (ours, timm's, or an official one).

    Our checkpoints keep weights under 'model' and 'model_ema'; timm/DeiT-style files use 'state_dict',
    'state_dict_ema', 'model' or 'model_ema'. A DDP/`torch.compile` prefix (`module.`, `_orig_mod.`) is stripped.
    The unwrapping is the zoo's shared one (`vimzoo.models._helpers`): main weights unless `use_ema`.
    """
    from vimzoo.models._helpers import read_checkpoint, unwrap_checkpoint
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'weights file {path} does not exist.')
    if path.suffix == '.safetensors' and use_ema:
        raise KeyError(f'{path} is a single set of weights; pass the *_ema.safetensors file without --use-ema.')
    checkpoint = read_checkpoint(path)
    try:
        return unwrap_checkpoint(checkpoint, use_ema=use_ema)
    except KeyError as e:
        raise KeyError(f'{path}: {e.args[0]}') from None
    except (TypeError, ValueError):
        raise ValueError(f'{path} does not contain a model state_dict.') from None
