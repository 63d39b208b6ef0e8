"""Where the shipped mmdet / mmseg configs are, without importing the OpenMMLab stack."""
from pathlib import Path
from typing import List

from vimzoo.zoo import resource_path

__all__ = ['config_path', 'list_configs']


def list_configs() -> List[str]:
    """Names of the mmdet / mmseg configs that ship with vimzoo (`_base_` parts excluded)."""
    root = resource_path('configs')
    return sorted(p.stem for sub in ('mmdet', 'mmseg') for p in (root / sub).glob('*.py'))


def config_path(name: str) -> Path:
    """A config file, or the name of one shipped with vimzoo ('x', 'x.py' or 'mmdet/x.py'), as a path.

    Works from a source checkout and from a wheel install (the configs ship inside the package).
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    root = resource_path('configs')
    stem = name[:-3] if name.endswith('.py') else name
    for candidate in (root / f'{stem}.py', root / 'mmdet' / f'{stem}.py', root / 'mmseg' / f'{stem}.py'):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f'config {name!r} is neither a file nor a vimzoo config; vimzoo ships: '
                            f'{", ".join(list_configs())} (in {root})')
