"""A download-free built-in dataset, generated deterministically into the same ImageFolder layout as ImageNet.

The default `tools/train.py` run must work offline in minutes on a laptop CPU yet exercise exactly the ImageNet
code path (timm `create_dataset` on `<root>/{train,val}/<class>/*.png`). So instead of a tensor toy dataset we
render small PNGs of procedural shapes and textures once into a cache folder and reuse them afterwards.
"""
from __future__ import annotations

import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ['BUILTIN_DATASETS', 'BuiltinDataset', 'DatasetError', 'default_cache_dir', 'ensure_builtin_dataset',
           'check_image_folder', 'image_extensions', 'count_class_images', 'ClassFolders', 'match_class_folders']

_MARKER = 'VIMZOO_DATASET_COMPLETE'

Color = Tuple[int, int, int]


class DatasetError(ValueError):
    """A dataset folder is missing, empty or not in ImageFolder layout (the CLIs turn it into a usage error)."""


def default_cache_dir() -> Path:
    """`$VIMZOO_CACHE/datasets`, else `~/.cache/vimzoo/datasets` (XDG_CACHE_HOME respected)."""
    if os.environ.get('VIMZOO_CACHE'):
        return Path(os.environ['VIMZOO_CACHE']).expanduser() / 'datasets'
    base = Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')).expanduser()
    return base / 'vimzoo' / 'datasets'


# --------------------------------------------------------------------------------------------------------------
# Procedural image painters. Each takes (rng, size, fg, bg) and returns a PIL image; colours are random per image
# so the classes can only be told apart by shape/texture, not by colour.
# --------------------------------------------------------------------------------------------------------------

def _shape_box(rng: np.random.RandomState, size: int) -> Tuple[float, float, float]:
    radius = rng.uniform(0.26, 0.42) * size
    cx = rng.uniform(radius, size - radius)
    cy = rng.uniform(radius, size - radius)
    return cx, cy, radius


def _canvas(size: int, bg: Color) -> Tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new('RGB', (size, size), bg)
    return img, ImageDraw.Draw(img)


def _circle(rng, size, fg, bg):
    img, draw = _canvas(size, bg)
    cx, cy, r = _shape_box(rng, size)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    return img


def _ring(rng, size, fg, bg):
    img, draw = _canvas(size, bg)
    cx, cy, r = _shape_box(rng, size)
    width = max(2, int(r * rng.uniform(0.25, 0.4)))
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=width)
    return img


def _square(rng, size, fg, bg):
    img, draw = _canvas(size, bg)
    cx, cy, r = _shape_box(rng, size)
    r *= 0.85
    draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
    return img


def _triangle(rng, size, fg, bg):
    img, draw = _canvas(size, bg)
    cx, cy, r = _shape_box(rng, size)
    pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    draw.polygon(pts, fill=fg)
    return img


def _cross(rng, size, fg, bg):
    img, draw = _canvas(size, bg)
    cx, cy, r = _shape_box(rng, size)
    t = r * rng.uniform(0.25, 0.4)
    draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fg)
    draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fg)
    return img


def _hstripes(rng, size, fg, bg):
    img, draw = _canvas(size, bg)
    period = rng.randint(6, 14)
    offset = rng.randint(0, period)
    for y in range(-period + offset, size, period):
        draw.rectangle([0, y, size, y + period // 2 - 1], fill=fg)
    return img


def _vstripes(rng, size, fg, bg):
    return _hstripes(rng, size, fg, bg).transpose(Image.Transpose.TRANSPOSE)


def _checker(rng, size, fg, bg):
    img, draw = _canvas(size, bg)
    cell = rng.randint(6, 14)
    ox, oy = rng.randint(0, cell), rng.randint(0, cell)
    for i, y in enumerate(range(-cell + oy, size, cell)):
        for j, x in enumerate(range(-cell + ox, size, cell)):
            if (i + j) % 2 == 0:
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=fg)
    return img


def _dots(rng, size, fg, bg):
    img, draw = _canvas(size, bg)
    spacing = rng.randint(9, 15)
    r = spacing * rng.uniform(0.2, 0.3)
    ox, oy = rng.uniform(0, spacing), rng.uniform(0, spacing)
    for y in np.arange(-spacing + oy, size + spacing, spacing):
        for x in np.arange(-spacing + ox, size + spacing, spacing):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fg)
    return img


def _diagonal(rng, size, fg, bg):
    period = rng.randint(7, 14)
    width = period / 2
    yy, xx = np.mgrid[0:size, 0:size]
    phase = rng.uniform(0, period)
    mask = ((xx + yy + phase) % period) < width
    arr = np.empty((size, size, 3), dtype=np.uint8)
    arr[:] = bg
    arr[mask] = fg
    return Image.fromarray(arr)


_PAINTERS: Dict[str, Callable] = {
    'circle': _circle, 'ring': _ring, 'square': _square, 'triangle': _triangle, 'cross': _cross,
    'hstripes': _hstripes, 'vstripes': _vstripes, 'checker': _checker, 'dots': _dots, 'diagonal': _diagonal,
}


def _random_colors(rng: np.random.RandomState) -> Tuple[Color, Color]:
    """Foreground/background colours with enough contrast that the pattern is always visible."""
    while True:
        fg = rng.randint(0, 256, size=3)
        bg = rng.randint(0, 256, size=3)
        if np.abs(fg.astype(int) - bg.astype(int)).sum() > 180:
            return tuple(int(v) for v in fg), tuple(int(v) for v in bg)


def _render(painter: Callable, rng: np.random.RandomState, size: int, noise: float) -> Image.Image:
    fg, bg = _random_colors(rng)
    img = painter(rng, size, fg, bg)
    if noise > 0:
        arr = np.asarray(img).astype(np.float32)
        arr += rng.normal(0.0, noise, size=arr.shape)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img


@dataclass(frozen=True)
class BuiltinDataset:
    """A generated dataset: `classes` painters, `train_per_class`/`val_per_class` PNGs of `image_size` pixels."""
    name: str
    classes: Tuple[str, ...]
    train_per_class: int
    val_per_class: int
    image_size: int
    noise: float = 12.0
    seed: int = 0
    version: int = 1

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def folder_name(self) -> str:
        return f'{self.name}-v{self.version}'

    def generate(self, root: Path) -> None:
        """Writes `root/{train,val}/<class>/<index>.png`; identical bytes on every machine for the same version."""
        for split, count, split_id in (('train', self.train_per_class, 0), ('val', self.val_per_class, 1)):
            for class_idx, cls in enumerate(self.classes):
                out = root / split / cls
                out.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    seed = ((self.seed * 1_000_003 + split_id) * 1_009 + class_idx) * 100_003 + i
                    rng = np.random.RandomState(seed % (2 ** 32))
                    img = _render(_PAINTERS[cls], rng, self.image_size, self.noise)
                    img.save(out / f'{i:05d}.png', optimize=False)


BUILTIN_DATASETS: Dict[str, BuiltinDataset] = {
    'shapes10': BuiltinDataset(
        name='shapes10', classes=tuple(_PAINTERS), train_per_class=100, val_per_class=30, image_size=64),
    'shapes10-mini': BuiltinDataset(
        name='shapes10-mini', classes=tuple(_PAINTERS), train_per_class=16, val_per_class=8, image_size=32),
}


def generate_once(spec, cache_dir: Optional[os.PathLike] = None) -> Path:
    """`cache/<spec.folder_name>`, made by `spec.generate(folder)` on first use (built-in and mm toy sets).

    Safe under concurrency (several DDP ranks or test workers): each generator writes to a private temporary folder
    and renames it into place; a loser of the race discards its copy and uses the winner's. A folder without the
    completion marker (left by a crash) is replaced.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = cache / spec.folder_name
    if (root / _MARKER).is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f'.{spec.folder_name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    try:
        spec.generate(tmp)
        (tmp / _MARKER).write_text(f'{spec}\n')
        if root.exists() and not (root / _MARKER).is_file():
            shutil.rmtree(root, ignore_errors=True)  # a stale partial folder from an old crash
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / _MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_builtin_dataset(name: str, cache_dir: Optional[os.PathLike] = None) -> Path:
    """Return the root of built-in dataset `name`, generating it on first use (see `generate_once`)."""
    if name not in BUILTIN_DATASETS:
        raise ValueError(f'Unknown built-in dataset {name!r}; choose one of {sorted(BUILTIN_DATASETS)}.')
    return generate_once(BUILTIN_DATASETS[name], cache_dir)


def image_extensions() -> Tuple[str, ...]:
    """The extensions timm's ImageFolder reader picks up (so a check never passes files timm would skip)."""
    from timm.data.readers.img_extensions import get_img_extensions
    return tuple(get_img_extensions())


def _is_image(name: str, extensions: Tuple[str, ...]) -> bool:
    return os.path.splitext(name)[1].lower() in extensions


def _count_images(folder: Path, limit: int = 1) -> int:
    found = 0
    extensions = image_extensions()
    for _, _, files in os.walk(folder, followlinks=True):
        found += sum(1 for f in files if _is_image(f, extensions))
        if found >= limit:
            break
    return found


def check_image_folder(root: os.PathLike, splits: List[str], what: str = 'dataset') -> Dict[str, Path]:
    """Resolve `root/<split>` ImageFolder folders with errors that say what is wrong and what layout is expected.

    `splits` lists accepted folder names in order of preference (e.g. ['val', 'validation']); returns
    {'<found split>': path}. Raises DatasetError with a message naming the folder and the expected layout.
    """
    root = Path(root).expanduser()
    layout = f'expected ImageFolder layout {root}/{splits[0]}/<class_name>/<image>.jpg'
    if not root.exists():
        raise DatasetError(f'{what} folder {root} does not exist ({layout}).')
    if not root.is_dir():
        raise DatasetError(f'{what} path {root} is not a folder ({layout}).')
    for split in splits:
        folder = root / split
        if folder.is_dir():
            classes = [p for p in folder.iterdir() if p.is_dir()]
            if not classes:
                raise DatasetError(f'{what} folder {folder} has no class sub-folders ({layout}).')
            if _count_images(folder) == 0:
                raise DatasetError(f'{what} folder {folder} contains no images with extensions '
                                   f'{", ".join(image_extensions())} ({layout}).')
            return {split: folder}
    raise DatasetError(f'{what} folder {root} has no {" or ".join(repr(s) for s in splits)} sub-folder '
                       f'({layout}).')


def count_class_images(split_dir: os.PathLike, what: str) -> Dict[str, int]:
    """{class folder name: number of images directly inside it} for an ImageFolder split; an empty class folder or
    images lying outside class folders are a DatasetError naming the folder."""
    split_dir = Path(split_dir)
    extensions = image_extensions()
    counts: Dict[str, int] = {}
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=True):
            counts[entry.name] = sum(1 for f in os.scandir(entry.path) if f.is_file() and _is_image(f.name, extensions))
        elif _is_image(entry.name, extensions):
            raise DatasetError(f'{what}: {entry.path} lies directly in {split_dir}; images must be in class '
                               f'sub-folders ({split_dir}/<class_name>/<image>).')
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise DatasetError(f'{what}: class folder {split_dir / empty[0]} has no images (extensions '
                           f'{", ".join(extensions)})' + (f', nor have {len(empty) - 1} more: {empty[1:6]}'
                                                         if len(empty) > 1 else '')
                           + '; remove it or add images.')
    return counts


@dataclass(frozen=True)
class ClassFolders:
    """The checked class layout of an ImageFolder dataset: the class map (timm's natural sort) and image counts."""
    class_to_idx: Dict[str, int]
    train_counts: Dict[str, int]
    val_counts: Dict[str, int]
    val_skipped: Dict[str, int]  # val classes the training data lacks (only with --allow-class-mismatch)

    def describe(self) -> str:
        def _part(counts: Dict[str, int]) -> str:
            n = list(counts.values()) or [0]
            return f'{sum(n)} images in {len(counts)} classes ({min(n)}-{max(n)} per class)'
        text = f'train {_part(self.train_counts)}; val {_part(self.val_counts)}'
        if self.val_skipped:
            text += f'; val skips {sum(self.val_skipped.values())} images of classes not in train'
        return text


def match_class_folders(train_counts: Dict[str, int], val_counts: Dict[str, int], allow_mismatch: bool,
                        num_classes: Optional[int], train_dir: Path, val_dir: Path) -> ClassFolders:
    """Train and val must have the same class folders (unless `allow_mismatch`), `num_classes` must equal their
    number; returns the class map with timm's ImageFolder order."""
    from timm.utils.misc import natural_key
    only_train = sorted(set(train_counts) - set(val_counts))
    only_val = sorted(set(val_counts) - set(train_counts))
    if (only_train or only_val) and not allow_mismatch:
        parts = [f'{len(c)} only in {d} (first: {", ".join(c[:5])})' for c, d in
                 ((only_train, train_dir), (only_val, val_dir)) if c]
        raise DatasetError(f'the train and val class folders differ: {"; ".join(parts)}. Fix the folders, or pass '
                           f'--allow-class-mismatch to train anyway (val images of classes train lacks are skipped).')
    if num_classes is not None and num_classes != len(train_counts):
        raise DatasetError(f'--num-classes {num_classes} does not match the {len(train_counts)} class folders in '
                           f'{train_dir}; omit --num-classes to use the folders.')
    class_to_idx = {c: i for i, c in enumerate(sorted(train_counts, key=natural_key))}
    return ClassFolders(class_to_idx=class_to_idx, train_counts=train_counts,
                        val_counts={c: n for c, n in val_counts.items() if c in class_to_idx},
                        val_skipped={c: val_counts[c] for c in only_val})
