"""Training checkpoints: atomic, checksummed, loadable with `torch.load(weights_only=True)` only.

A checkpoint is a plain dict of tensors and python builtins (no pickled classes), so it loads under
`weights_only=True`; untrusted files never run code. It carries a sha256 over its whole content (every tensor's
bytes, dtype and shape, every value and key, in order) that is checked on load, so flipped bits anywhere — not only
in the zip headers torch checks — are refused. It is written to a temporary file in the same folder, fsynced and
renamed into place; `last.pth` keeps its previous version as `previous.pth`, the fallback when the newest is damaged.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

from .fileio import atomic_copy, atomic_write

__all__ = ['CheckpointError', 'FORMAT', 'atomic_save', 'atomic_copy', 'capture_rng_state', 'restore_rng_state',
           'content_digest', 'save_checkpoint', 'load_checkpoint', 'export_safetensors', 'load_model_weights',
           'to_plain', 'TRAINING_KEYS', 'apply_initial_weights']

FORMAT = 'vimzoo-train-v2'
_FORMATS = ('vimzoo-train-v1', FORMAT)  # v1: the same content without the checksum
_CHECKSUM_KEY = 'sha256'

#: What a checkpoint must hold for `--resume`.
TRAINING_KEYS = ('model_name', 'model', 'optimizer', 'epoch', 'batch_idx', 'num_updates')


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, damaged or not what the caller needs (the CLIs print it as a usage error)."""


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


# ----------------------------------------------------------------------------------------------------------------
# checksum
# ----------------------------------------------------------------------------------------------------------------

def _feed(h: 'hashlib._Hash', obj: Any) -> None:
    """A canonical, type-tagged encoding of `obj`: equal content <=> equal bytes fed to the hash."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f'T{t.dtype}{tuple(t.shape)}:'.encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(obj, bool):  # before int: bool is an int subclass
        h.update(b'b1' if obj else b'b0')
    elif isinstance(obj, int):
        h.update(f'i{obj};'.encode())
    elif isinstance(obj, float):
        h.update(f'f{obj.hex()};'.encode())
    elif isinstance(obj, str):
        data = obj.encode('utf-8', 'surrogatepass')
        h.update(f's{len(data)}:'.encode() + data)
    elif isinstance(obj, bytes):
        h.update(f'y{len(obj)}:'.encode() + obj)
    elif obj is None:
        h.update(b'n')
    elif isinstance(obj, dict):
        h.update(f'd{len(obj)}:'.encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f'{"l" if isinstance(obj, list) else "t"}{len(obj)}:'.encode())
        for v in obj:
            _feed(h, v)
    else:
        raise TypeError(f'checkpoint values must be tensors or python builtins, got {type(obj).__name__}')


def content_digest(obj: Any) -> str:
    """sha256 (hex) of `obj`'s content; the same before saving and after `torch.load`."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# RNG state
# ----------------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------------------------------

def atomic_save(obj: Any, path: os.PathLike, keep_previous: Optional[os.PathLike] = None) -> Path:
    """`torch.save` to a temp file next to `path`, then `os.replace`: never leaves a truncated file behind."""
    return atomic_write(path, lambda f: torch.save(obj, f), keep_previous=keep_previous)


def save_checkpoint(path: os.PathLike, keep_previous: Optional[os.PathLike] = None, **entries: Any) -> Path:
    """Atomically save a checksummed checkpoint dict (`args`/`metrics`/`extra` go through `to_plain`)."""
    payload = {k: to_plain(v) if k in ('args', 'metrics', 'extra') else v for k, v in entries.items()}
    payload.setdefault('format', FORMAT)
    payload[_CHECKSUM_KEY] = content_digest(payload)
    return atomic_save(payload, path, keep_previous=keep_previous)


def _torch_load(path: Path, map_location: Any) -> Any:
    """`torch.load(weights_only=True)` with every way a file can be unreadable turned into CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f'{path}: file not found.')
    if path.stat().st_size == 0:
        raise CheckpointError(f'{path} is empty (0 bytes): not a checkpoint.')
    try:   # official training snapshots store their argparse.Namespace 'args': a plain attribute holder
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f'{path} holds objects that weights_only loading refuses to unpickle (only tensors '
                              f'and python builtins are loaded, for safety): {str(e).splitlines()[0]}') from e
    except (EOFError, RuntimeError, ValueError, OSError, zipfile.BadZipFile, KeyError, AttributeError,
            IndexError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f'{path} is damaged or not a PyTorch checkpoint ({reason}).') from e


def load_checkpoint(path: os.PathLike, map_location: Any = 'cpu', training: bool = False) -> Any:
    """Load a file with `weights_only=True`; for vimzoo checkpoints, verify the checksum (and, with `training`,
    that it holds everything `--resume` needs). Raises CheckpointError with a readable reason."""
    path = Path(path).expanduser()
    obj = _torch_load(path, map_location)
    ours = isinstance(obj, dict) and obj.get('format') in _FORMATS
    if ours and _CHECKSUM_KEY in obj:
        stored = obj.pop(_CHECKSUM_KEY)
        try:
            actual = content_digest(obj)
        except TypeError as e:
            raise CheckpointError(f'{path} is damaged ({e}).') from e
        if actual != stored:
            raise CheckpointError(f'{path} is damaged: its content does not match the checksum stored in it '
                                  f'(sha256 {actual[:12]}... != {str(stored)[:12]}...).')
    elif ours and obj.get('format') == FORMAT:
        raise CheckpointError(f'{path} is damaged: its checksum entry is missing.')
    if training:
        if not ours:
            raise CheckpointError(f'{path} is not a vimzoo training checkpoint (no "format" entry); to start from '
                                  f'its weights use --initial-checkpoint.')
        missing = [k for k in TRAINING_KEYS if k not in obj]
        if missing:
            raise CheckpointError(f'{path} lacks {", ".join(missing)}: it cannot resume training (to start from its '
                                  f'weights use --initial-checkpoint).')
    return obj


def export_safetensors(state_dict: Mapping[str, torch.Tensor], path: os.PathLike,
                       metadata: Optional[Dict[str, str]] = None) -> Path:
    """Save weights as safetensors (every tensor cloned contiguous: safetensors refuses shared storage); the
    metadata carries the content sha256 of the tensors, checked by `load_model_weights`."""
    from safetensors.torch import save as st_save
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    meta[_CHECKSUM_KEY] = content_digest(dict(sorted(tensors.items())))
    data = st_save(tensors, metadata=meta)
    return atomic_write(path, lambda f: f.write(data))


def _load_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open
    from timm.models import load_state_dict
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
        state = load_state_dict(str(path), use_ema=False)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f'{path} is damaged or not a safetensors file ({e}).') from e
    if _CHECKSUM_KEY in meta and content_digest(dict(sorted(state.items()))) != meta[_CHECKSUM_KEY]:
        raise CheckpointError(f'{path} is damaged: its tensors do not match the checksum in its metadata.')
    return state


def load_model_weights(path: os.PathLike, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """A model state_dict from a `.safetensors` file, a vimzoo checkpoint (checksum verified) or a timm/DeiT-style /
    official `.pth` (unwrapped as the zoo's families do: `model` / `state_dict`, the EMA copy only with `use_ema`,
    `module.` / `_orig_mod.` prefixes removed; vimzoo.models._helpers.unwrap_checkpoint)."""
    from timm.models import clean_state_dict
    from vimzoo.models._helpers import unwrap_checkpoint
    path = Path(path).expanduser()
    if path.suffix == '.safetensors':
        if use_ema:
            raise CheckpointError(f'{path} is a single set of weights; pass the *_ema.safetensors file without '
                                  f'--use-ema.')
        return _load_safetensors(path)
    obj = load_checkpoint(path)
    if isinstance(obj, dict) and obj.get('format') in _FORMATS:
        state = obj.get('model_ema') if use_ema else obj.get('model')
        if use_ema and state is None:
            raise CheckpointError(f'{path} has no EMA weights (it was trained without --model-ema).')
        return clean_state_dict(state)
    try:
        return unwrap_checkpoint(obj, use_ema=use_ema)
    except KeyError as e:
        raise CheckpointError(f'{path}: {e.args[0]}') from None
    except (TypeError, ValueError):
        raise CheckpointError(f'{path} does not contain a model state_dict.') from None


_STRICT_HINT = ('Pass --initial-checkpoint-strict false to load the matching keys and keep the rest freshly '
                'initialised (e.g. a new classifier).')


def apply_initial_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor], strict: bool,
                          source: str, hint: str = _STRICT_HINT) -> Dict[str, list]:
    """Load `--initial-checkpoint` weights. Strict: any missing/unexpected/re-shaped key is a CheckpointError that
    lists the first ones. Not strict: keys whose shape differs (e.g. a new classifier) keep their fresh init."""
    own = model.state_dict()
    report = {
        'shape': [k for k, v in state.items() if k in own and own[k].shape != v.shape],
        'missing': [k for k in own if k not in state],
        'unexpected': [k for k in state if k not in own],
    }
    if strict and any(report.values()):
        parts = [f'{len(v)} {name} (first: {", ".join(v[:4])})' for name, v in
                 (('missing keys', report['missing']), ('unexpected keys', report['unexpected']),
                  ('keys with another shape', report['shape'])) if v]
        raise CheckpointError(f'{source} does not match {type(model).__name__}: {"; ".join(parts)}. {hint}')
    model.load_state_dict({k: v for k, v in state.items() if k not in report['shape']}, strict=False)
    return report
