"""Built-in toy detection and segmentation sets: generated on first use, cached, in the standard on-disk layouts.

They exist so that a detection or segmentation config can be trained end to end in minutes on a CPU with nothing
downloaded, through exactly the code a real run uses (mmdet's `CocoDataset` + `CocoMetric`, mmseg's dataset +
`IoUMetric`). Each image holds a few saturated shapes (rectangle, ellipse, triangle, cross) on a noisy greyish
background; each class has its own hue band, so a model learns the classes in minutes and spends its capacity on
finding the shapes and their exact extent (boxes, masks, boundaries).

- `shapes-coco`: COCO instance layout (`train2017/`, `val2017/`, `annotations/instances_{train,val}2017.json`),
  one annotation per shape with its polygon, tight box and polygon area; shapes never overlap.
- `shapes-ade`: ADE20K layout (`images/{training,validation}/*.jpg`, `annotations/{training,validation}/*.png`),
  label 0 = unlabelled (ADE20K convention, ignored with `reduce_zero_label=True`), 1 = background, 2.. = shapes;
  shapes may overlap (later ones occlude earlier ones in image and label map alike).

A config selects one with `data_root = 'vimzoo-toy:<name>/'`; `vimzoo.mm.launch` resolves that prefix to the cache
folder (`$VIMZOO_CACHE/datasets` or `~/.cache/vimzoo/datasets`, the classification `shapes10` cache).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from vimzoo.train.datasets import generate_once

__all__ = ['TOY_PREFIX', 'ToyDataset', 'TOY_DATASETS', 'ensure_toy_dataset', 'toy_dataset_root']

TOY_PREFIX = 'vimzoo-toy:'
SHAPES: Tuple[str, ...] = ('rectangle', 'ellipse', 'triangle', 'cross')
# mean area of each outline in units of r^2 (r = circumradius drawn by _place), from the ranges in _shape_polygon:
# classes are drawn with probability ~ 1 / area so that every class covers about the same number of pixels
# (with uniform draws, triangles cover half the pixels of rectangles, and pixel-wise losses learn them last).
_MEAN_AREA = {'rectangle': 4 * 0.725, 'ellipse': math.pi * 0.775, 'triangle': 3 * math.sqrt(3) / 4, 'cross': 2.3}

Box = Tuple[float, float, float, float]  # x0, y0, x1, y1


# ----------------------------------------------------------------------------------------------------- shapes
def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _shape_polygon(kind: str, rng: np.random.Generator, cx: float, cy: float, r: float) -> np.ndarray:
    """Unit-free outline of `kind` centred at (cx, cy) with circumradius about r; (N, 2) float array."""
    if kind == 'rectangle':
        aspect = rng.uniform(0.45, 1.0)
        w, h = (r, r * aspect) if rng.random() < 0.5 else (r * aspect, r)
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]])
    elif kind == 'ellipse':
        a, b = r, r * rng.uniform(0.55, 1.0)
        t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        pts = np.stack([a * np.cos(t), b * np.sin(t)], 1)
        pts = _rotate(pts, rng.uniform(0, math.pi))
    elif kind == 'triangle':
        t = np.array([-math.pi / 2, math.pi / 6, 5 * math.pi / 6]) + rng.uniform(0, 2 * math.pi)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    elif kind == 'cross':
        t = r * rng.uniform(0.28, 0.42)
        pts = np.array([[-t, -r], [t, -r], [t, -t], [r, -t], [r, t], [t, t], [t, r], [-t, r], [-t, t], [-r, t],
                        [-r, -t], [-t, -t]])
        pts = _rotate(pts, rng.uniform(0, math.pi / 2))
    else:
        raise ValueError(f'unknown shape {kind!r}; choose one of {SHAPES}')
    return pts + np.array([cx, cy])


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def _hsv_to_rgb(h: float, s: float, v: float) -> Tuple[int, int, int]:
    import colorsys
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A noisy gradient between two greyish (saturation <= 0.2) colours: shapes always stand out."""
    c0, c1 = (np.array(_hsv_to_rgb(rng.random(), rng.uniform(0, 0.2), rng.uniform(0.15, 0.9))) for _ in range(2))
    ramp = np.linspace(0, 1, w if rng.random() < 0.5 else h)
    ramp = ramp[None, :, None] if len(ramp) == w else ramp[:, None, None]
    img = c0 * (1 - ramp) + c1 * ramp + rng.normal(0, 10, (h, w, 3))
    return np.clip(np.broadcast_to(img, (h, w, 3)), 0, 255).astype(np.uint8)


def _shape_colour(rng: np.random.Generator, cls: int, num_classes: int) -> Tuple[int, int, int]:
    """A saturated colour in the class's hue band (width 1/(2 * num_classes) of the hue circle)."""
    hue = (cls + rng.uniform(-0.25, 0.25)) / num_classes
    return _hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))


def _place(rng: np.random.Generator, h: int, w: int, radius: Tuple[float, float], taken: List[Box],
           allow_overlap: bool) -> Optional[Tuple[float, float, float]]:
    """A centre and radius whose (slightly padded) square does not touch `taken` (unless overlap is allowed)."""
    for _ in range(50):
        r = rng.uniform(*radius) * min(h, w)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        box = (cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2)
        if allow_overlap or all(box[2] <= t[0] or t[2] <= box[0] or box[3] <= t[1] or t[3] <= box[1] for t in taken):
            taken.append(box)
            return cx, cy, r
    return None


# ----------------------------------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class ToyDataset:
    """A generated dataset: `num_train` / `num_val` images of `image_size` (h, w), `objects` shapes each."""
    name: str
    layout: str  # 'coco' or 'ade'
    num_train: int
    num_val: int
    image_size: Tuple[int, int] = (128, 128)
    objects: Tuple[int, int] = (1, 4)
    radius: Tuple[float, float] = (0.09, 0.24)  # circumradius as a fraction of the shorter image side
    classes: Tuple[str, ...] = SHAPES
    seed: int = 0
    version: int = 1

    @property
    def folder_name(self) -> str:
        return f'{self.name}-v{self.version}'

    @property
    def class_probs(self) -> np.ndarray:
        inv = np.array([1 / _MEAN_AREA[c] for c in self.classes])
        return inv / inv.sum()

    @property
    def class_names(self) -> Tuple[str, ...]:
        """The classes a model predicts ('background' first for segmentation)."""
        return self.classes if self.layout == 'coco' else ('background', *self.classes)

    def _scenes(self, split_id: int, count: int):
        """Yield (index, image, [(class index, polygon)]) deterministically from (seed, split, index)."""
        h, w = self.image_size
        for i in range(count):
            rng = np.random.default_rng([self.seed, ('coco', 'ade').index(self.layout), split_id, i])
            canvas = Image.fromarray(_background(rng, h, w))
            draw = ImageDraw.Draw(canvas)
            taken: List[Box] = []
            shapes = []
            for _ in range(int(rng.integers(self.objects[0], self.objects[1] + 1))):
                spot = _place(rng, h, w, self.radius, taken, allow_overlap=self.layout == 'ade')
                if spot is None:
                    continue
                cls = int(rng.choice(len(self.classes), p=self.class_probs))
                pts = _shape_polygon(self.classes[cls], rng, *spot)
                pts[:, 0] = pts[:, 0].clip(0, w - 1)
                pts[:, 1] = pts[:, 1].clip(0, h - 1)
                draw.polygon([tuple(p) for p in pts], fill=_shape_colour(rng, cls, len(self.classes)))
                shapes.append((cls, pts))
            yield i, canvas, shapes

    def generate(self, root: Path) -> None:
        if self.layout == 'coco':
            self._generate_coco(root)
        elif self.layout == 'ade':
            self._generate_ade(root)
        else:
            raise ValueError(f'unknown toy layout {self.layout!r}')

    def _generate_coco(self, root: Path) -> None:
        (root / 'annotations').mkdir(parents=True, exist_ok=True)
        categories = [dict(id=k + 1, name=c, supercategory='shape') for k, c in enumerate(self.classes)]
        for split_id, (split, count) in enumerate((('train2017', self.num_train), ('val2017', self.num_val))):
            (root / split).mkdir(parents=True, exist_ok=True)
            images, annotations = [], []
            for i, canvas, shapes in self._scenes(split_id, count):
                name = f'{i:06d}.jpg'
                canvas.save(root / split / name, quality=95)
                images.append(dict(id=i + 1, file_name=name, height=self.image_size[0], width=self.image_size[1]))
                for cls, pts in shapes:
                    x0, y0 = pts.min(0)
                    x1, y1 = pts.max(0)
                    annotations.append(dict(
                        id=len(annotations) + 1, image_id=i + 1, category_id=cls + 1, iscrowd=0,
                        segmentation=[[round(float(v), 2) for v in pts.reshape(-1)]], area=_polygon_area(pts),
                        bbox=[round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)]))
            doc = dict(info=dict(description=f'vimzoo toy set {self.folder_name}'), images=images,
                       annotations=annotations, categories=categories)
            (root / 'annotations' / f'instances_{split}.json').write_text(json.dumps(doc))

    def _generate_ade(self, root: Path) -> None:
        for split_id, (split, count) in enumerate((('training', self.num_train), ('validation', self.num_val))):
            (root / 'images' / split).mkdir(parents=True, exist_ok=True)
            (root / 'annotations' / split).mkdir(parents=True, exist_ok=True)
            for i, canvas, shapes in self._scenes(split_id, count):
                label = Image.new('L', canvas.size, 1)  # 1 = background (0 stays "unlabelled", as in ADE20K)
                draw = ImageDraw.Draw(label)
                for cls, pts in shapes:
                    draw.polygon([tuple(p) for p in pts], fill=cls + 2)
                stem = f'toy_{split}_{i:06d}'
                canvas.save(root / 'images' / split / f'{stem}.jpg', quality=95)
                label.save(root / 'annotations' / split / f'{stem}.png')


TOY_DATASETS: Dict[str, ToyDataset] = {
    'shapes-coco': ToyDataset('shapes-coco', 'coco', num_train=400, num_val=100),
    'shapes-ade': ToyDataset('shapes-ade', 'ade', num_train=400, num_val=100, objects=(1, 5)),
}


def ensure_toy_dataset(name: str, cache_dir: Optional[os.PathLike] = None) -> Path:
    """Root folder of toy set `name`, generated on first use (a few seconds; safe when several processes, e.g.
    DDP ranks, ask at once: `vimzoo.train.datasets.generate_once`)."""
    if name not in TOY_DATASETS:
        raise ValueError(f'unknown toy dataset {name!r}; choose one of {sorted(TOY_DATASETS)}')
    return generate_once(TOY_DATASETS[name], cache_dir)


def toy_dataset_root(data_root: str, cache_dir: Optional[os.PathLike] = None) -> Optional[str]:
    """'vimzoo-toy:<name>/...' -> the generated folder (same tail); any other string -> None."""
    if not isinstance(data_root, str) or not data_root.startswith(TOY_PREFIX):
        return None
    name, _, tail = data_root[len(TOY_PREFIX):].partition('/')
    root = str(ensure_toy_dataset(name, cache_dir))
    return f'{root}/{tail}' if tail or data_root.endswith('/') else root


def class_palette(n: int) -> List[Sequence[int]]:
    """n well separated RGB colours for visualisers (fixed, so plots agree across runs)."""
    rng = np.random.default_rng(1)
    return [[int(v) for v in rng.integers(0, 256, 3)] for _ in range(n)]
