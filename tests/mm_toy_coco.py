"""A tiny COCO-format instance-segmentation dataset for the OpenMMLab tests (written from scratch, seeded).

Each image is a noisy background with a few filled rectangles and ellipses; every shape is one annotation with its
polygon, bbox, area and category, so mmdet's CocoDataset / LoadAnnotations(with_mask) / CocoMetric(bbox, segm) run
on it unchanged.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

CLASSES: Tuple[str, ...] = ('box', 'disc', 'bar')
_COLOURS = ((220, 60, 60), (60, 200, 80), (70, 90, 230))


def _polygon(kind: str, x0: float, y0: float, w: float, h: float) -> List[float]:
    if kind == 'disc':  # 16-gon inscribed in the box
        cx, cy, rx, ry = x0 + w / 2, y0 + h / 2, w / 2, h / 2
        pts = [(cx + rx * math.cos(2 * math.pi * k / 16), cy + ry * math.sin(2 * math.pi * k / 16)) for k in range(16)]
    else:
        pts = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    return [round(float(v), 2) for p in pts for v in p]


def make_toy_coco(root: Path, num_images: int = 4, size: Tuple[int, int] = (96, 128), max_objects: int = 3,
                  seed: int = 0, classes: Sequence[str] = CLASSES) -> Dict[str, Path]:
    """Write `root/images/*.jpg` and `root/annotations.json`; returns their paths. size = (height, width)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / 'images').mkdir(parents=True, exist_ok=True)
    H, W = size
    images, annotations = [], []
    for i in range(num_images):
        canvas = Image.fromarray(rng.integers(0, 60, (H, W, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(1, max_objects + 1))):
            cat = int(rng.integers(0, len(classes)))
            kind = classes[cat]
            w = float(rng.integers(W // 6, W // 2))
            h = float(rng.integers(H // 8, H // 4)) if kind == 'bar' else float(rng.integers(H // 5, H // 2))
            x0, y0 = float(rng.integers(0, W - int(w))), float(rng.integers(0, H - int(h)))
            poly = _polygon(kind, x0, y0, w, h)
            draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=_COLOURS[cat % len(_COLOURS)])
            annotations.append(dict(
                id=len(annotations) + 1, image_id=i + 1, category_id=cat + 1, segmentation=[poly],
                bbox=[x0, y0, w, h], area=float(w * h * (math.pi / 4 if kind == 'disc' else 1.0)), iscrowd=0))
        name = f'{i:04d}.jpg'
        canvas.save(root / 'images' / name, quality=95)
        images.append(dict(id=i + 1, file_name=name, height=H, width=W))
    categories = [dict(id=k + 1, name=c) for k, c in enumerate(classes)]
    ann_file = root / 'annotations.json'
    ann_file.write_text(json.dumps(dict(images=images, annotations=annotations, categories=categories)))
    return dict(root=root, images=root / 'images', ann_file=ann_file)
