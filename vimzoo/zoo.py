"""The zoo index: which timm model names belong to which family, and the `models/` metafiles.

timm's registry knows every model; the zoo needs to know which of them are *ours* (and which timm models we adopt
as family members) without shadowing any timm name. Family modules call `register_zoo_model(family)` instead of
timm's `register_model`; timm-backed families call `adopt_timm_models`.
"""
from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import timm
import yaml
from timm.models import register_model

__all__ = [
    'FAMILIES', 'register_zoo_model', 'adopt_timm_models', 'list_models', 'list_families', 'family_of',
    'model_index', 'resource_path', 'check_model_name',
]

FAMILIES = ('vim', 'lbvim', 'biformer', 'davit', 'van', 'convit', 'halonet', 'dependencyvit', 'hydra')

_zoo: Dict[str, List[str]] = {family: [] for family in FAMILIES}


def _add(family: str, name: str) -> None:
    if family not in _zoo:
        raise ValueError(f'Unknown family {family!r}; the zoo has {FAMILIES}.')
    if name not in _zoo[family]:
        _zoo[family].append(name)


def register_zoo_model(family: str) -> Callable:
    """`@register_model` that also files the entrypoint under a zoo family and refuses to shadow a timm name."""
    def decorator(fn: Callable) -> Callable:
        if fn.__name__ in timm.list_models() and fn.__name__ not in _zoo.get(family, []):
            raise RuntimeError(f'{fn.__name__} already exists in timm; vimzoo never shadows timm models.')
        _add(family, fn.__name__)
        return register_model(fn)
    return decorator


def adopt_timm_models(family: str, names: Iterable[str]) -> None:
    """Files existing timm models (DaViT, ConViT, HaloNet) as zoo members without re-registering them."""
    available = set(timm.list_models())
    for name in names:
        if name not in available:
            raise RuntimeError(f'timm {timm.__version__} has no model {name!r} to adopt into {family!r}.')
        _add(family, name)


def list_families() -> List[str]:
    return list(FAMILIES)


def list_models(family: Optional[str] = None, include_test: bool = False) -> List[str]:
    """Zoo model names, optionally for one family. Tiny `test_*` variants are hidden unless asked for."""
    if family is not None and family not in _zoo:
        raise ValueError(f'Unknown family {family!r}; choose one of {list(FAMILIES)}.')
    families = [family] if family else FAMILIES
    return [n for f in families for n in _zoo[f] if include_test or not n.startswith('test_')]


def family_of(model_name: str) -> str:
    base = model_name.split('.')[0]
    for family, names in _zoo.items():
        if base in names:
            return family
    raise KeyError(f'{model_name!r} is not a vimzoo model.')


def check_model_name(model_name: str) -> None:
    """Raise a helpful error for an unknown model name (timm's own error gives no suggestions)."""
    base = model_name.split('.')[0]
    if base in timm.list_models():
        return
    candidates = timm.list_models() + [n for names in _zoo.values() for n in names]
    close = difflib.get_close_matches(base, candidates, n=5, cutoff=0.6)
    hint = f' Did you mean: {", ".join(close)}?' if close else ''
    raise RuntimeError(f'Unknown model {model_name!r}.{hint} Zoo families: {", ".join(FAMILIES)}; '
                       f'see vimzoo.list_models().')


def resource_path(name: str) -> Path:
    """Locate a repo-root resource folder (`models`, `csrc`) in a source checkout or inside an installed wheel."""
    package_dir = Path(__file__).resolve().parent
    checkout = package_dir.parent / name
    if checkout.is_dir():
        return checkout
    installed = package_dir / {'models': 'model_index'}.get(name, name)
    if installed.is_dir():
        return installed
    raise FileNotFoundError(f'vimzoo resource folder {name!r} not found (looked in {checkout} and {installed}).')


@lru_cache(maxsize=None)
def model_index() -> Dict[str, dict]:
    """All `models/<family>.yml` metafiles, keyed by family."""
    index = {}
    for path in sorted(resource_path('models').glob('*.yml')):
        meta = yaml.safe_load(path.read_text())
        if meta.get('family') != path.stem:
            raise ValueError(f'{path}: family field {meta.get("family")!r} must match the file name.')
        index[path.stem] = meta
    return index
