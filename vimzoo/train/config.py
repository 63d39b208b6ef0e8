"""Recipe files (`configs/train/<family>.yaml`) and their merge with command-line arguments.

Precedence, lowest first: argparse defaults < built-in dataset preset < recipe < recipe `variants[<model>]` <
options given on the command line. Recipe keys are argparse destinations (`drop_path` or `drop-path`); unknown keys
are an error so that a typo in a recipe never silently falls back to a default.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

__all__ = ['load_recipe', 'explicit_options', 'merge_defaults', 'recipe_dir']

_RECIPE_META_KEYS = ('variants', 'notes', 'source', 'family')


def recipe_dir() -> Path:
    """`configs/train` of a source checkout, or `vimzoo/configs/train` inside a wheel that ships it."""
    try:
        from ..zoo import resource_path
        return resource_path('configs') / 'train'
    except FileNotFoundError:
        return Path(__file__).resolve().parents[2] / 'configs' / 'train'


def _actions(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ('help', argparse.SUPPRESS)}


def _convert(action: argparse.Action, value: Any, where: str, parser: argparse.ArgumentParser) -> Any:
    """YAML gives strings for `5e-4` (YAML 1.1); run the argparse `type` over scalars and list items."""
    if value is None or action.type is None:
        return value
    try:
        if isinstance(value, (list, tuple)):
            return [action.type(v) if isinstance(v, str) else v for v in value]
        if isinstance(value, str):
            return action.type(value)
        if action.type is float and isinstance(value, int):
            return float(value)
    except (TypeError, ValueError) as e:
        parser.error(f'{where}: bad value {value!r} for {action.dest}: {e}')
    return value


def _normalise(section: Dict[str, Any], parser: argparse.ArgumentParser, where: str) -> Dict[str, Any]:
    actions = _actions(parser)
    out = {}
    for key, value in section.items():
        dest = str(key).replace('-', '_')
        if dest not in actions:
            parser.error(f'{where}: unknown option {key!r} (valid keys are the long option names of '
                         f'tools/train.py, e.g. lr_base, drop_path, mixup).')
        out[dest] = _convert(actions[dest], value, where, parser)
    return out


def load_recipe(path: os.PathLike, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """Read a recipe; returns {'base': {...}, 'variants': {model: {...}}}. A bare name looks in configs/train/."""
    p = Path(path).expanduser()
    if not p.is_file() and not p.suffix:
        candidate = recipe_dir() / f'{p.name}.yaml'
        if candidate.is_file():
            p = candidate
    if not p.is_file():
        available = ', '.join(sorted(x.stem for x in recipe_dir().glob('*.yaml'))) if recipe_dir().is_dir() else ''
        parser.error(f'--config {path}: file not found.' + (f' Shipped recipes: {available}.' if available else ''))
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        parser.error(f'--config {p}: not valid YAML: {e}')
    if not isinstance(raw, dict):
        parser.error(f'--config {p}: expected a mapping of option: value.')
    variants = raw.pop('variants', {}) or {}
    for key in _RECIPE_META_KEYS:
        raw.pop(key, None)
    base = _normalise(raw, parser, str(p))
    norm_variants = {}
    for model, section in variants.items():
        if not isinstance(section, dict):
            parser.error(f'{p}: variants.{model} must be a mapping.')
        norm_variants[str(model)] = _normalise(section, parser, f'{p} variants.{model}')
    return {'base': base, 'variants': norm_variants, 'path': str(p)}


def explicit_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Dict[str, Any]:
    """The options actually typed on the command line (defaults suppressed)."""
    saved = {a: a.default for a in parser._actions}
    try:
        for a in parser._actions:
            if a.dest != 'help':
                a.default = argparse.SUPPRESS
        ns, _ = parser.parse_known_args(list(argv))
    finally:
        for a, d in saved.items():
            a.default = d
    return vars(ns)


def merge_defaults(parser: argparse.ArgumentParser, layers: List[Optional[Dict[str, Any]]]) -> None:
    """Apply default layers in order (later wins) as parser defaults, so the final parse still type-checks."""
    merged: Dict[str, Any] = {}
    for layer in layers:
        if layer:
            merged.update(layer)
    parser.set_defaults(**merged)
