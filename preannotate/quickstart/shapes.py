"""A small detection dataset of shapes on textured backgrounds, made on the spot.

Deterministic for a seed. Each image holds one to four shapes of the classes
(circle, square, triangle by default) with random colours and sizes, on a
background of noise, stripes and gradients, so the model must learn shape
rather than colour. The training part is written as a CVAT "COCO 1.0" export
(``annotations/instances_default.json`` and ``images/default/``), the form the
exporter reads from CVAT; the held-out part as images plus a ground-truth COCO
file for scoring.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from preannotate.cvat.coco import coco_document, coco_image

CLASSES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Shape:
    label: str
    box: tuple[float, float, float, float]  # x, y, width, height in pixels
    polygon: list[float]  # x1, y1, x2, y2, ... in pixels


@dataclass(frozen=True)
class Sample:
    name: str
    #: The encoded image (JPEG or PNG, as ``name`` says).
    data: bytes
    width: int
    height: int
    shapes: list[Shape]


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    base = rng.uniform(40, 200, size=3)
    angle = rng.uniform(0, math.pi)
    freq = rng.uniform(0.05, 0.4)
    stripes = np.sin((x * math.cos(angle) + y * math.sin(angle)) * freq)[..., None]
    gradient = ((x + y) / (2 * size))[..., None]
    noise = rng.normal(0, 18, size=(size, size, 3))
    img = base + 25 * stripes + rng.uniform(-40, 40, size=3) * gradient + noise
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _polygon(label: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if label == "circle":
        n = 24
        return [
            (cx + r * math.cos(2 * math.pi * i / n), cy + r * math.sin(2 * math.pi * i / n))
            for i in range(n)
        ]
    if label == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        c, s = math.cos(rot), math.sin(rot)
        return [
            (cx + r * 0.8 * (px * c - py * s), cy + r * 0.8 * (px * s + py * c))
            for px, py in corners
        ]
    if label == "triangle":
        return [
            (
                cx + r * math.cos(rot + 2 * math.pi * i / 3 - math.pi / 2),
                cy + r * math.sin(rot + 2 * math.pi * i / 3 - math.pi / 2),
            )
            for i in range(3)
        ]
    raise ValueError(f"unknown shape class {label!r}; known: {CLASSES}")


def _overlaps(box, boxes, limit=0.2) -> bool:
    x, y, w, h = box
    for bx, by, bw, bh in boxes:
        ix = max(0.0, min(x + w, bx + bw) - max(x, bx))
        iy = max(0.0, min(y + h, by + bh) - max(y, by))
        inter = ix * iy
        if inter > limit * min(w * h, bw * bh):
            return True
    return False


def make_sample(rng: np.random.Generator, index: int, size: int, classes=CLASSES) -> Sample:
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    shapes: list[Shape] = []
    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(20):
            label = classes[int(rng.integers(len(classes)))]
            r = float(rng.uniform(size * 0.08, size * 0.2))
            cx = float(rng.uniform(r + 1, size - r - 1))
            cy = float(rng.uniform(r + 1, size - r - 1))
            points = _polygon(label, cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            box = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
            if not _overlaps(box, boxes):
                break
        else:
            continue
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.polygon(points, fill=colour, outline=tuple(max(0, c - 60) for c in colour))
        boxes.append(box)
        shapes.append(Shape(label, box, [round(v, 2) for p in points for v in p]))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return Sample(f"shape_{index:05d}.jpg", buf.getvalue(), size, size, shapes)


def make_dataset(n: int, size: int = 128, seed: int = 0, classes=CLASSES) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [make_sample(rng, i, size, classes) for i in range(n)]


def coco_json(samples: list[Sample], classes=CLASSES) -> dict:
    """COCO 1.0 as CVAT writes it (category ids from 1 in label order)."""
    cat_ids = {name: i + 1 for i, name in enumerate(classes)}
    doc = coco_document(classes)
    images, annotations = doc["images"], doc["annotations"]
    for img_id, s in enumerate(samples, start=1):
        images.append(coco_image(img_id, s.name, s.width, s.height))
        for shape in s.shapes:
            x, y, w, h = shape.box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": img_id,
                    "category_id": cat_ids[shape.label],
                    "segmentation": [shape.polygon],
                    "area": round(w * h, 2),
                    "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                    "iscrowd": 0,
                    "attributes": {"occluded": False},
                }
            )
    return doc


def write_cvat_export(samples: list[Sample], path: Path, classes=CLASSES) -> Path:
    """A zip laid out as CVAT's "COCO 1.0" export with images."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("annotations/instances_default.json", json.dumps(coco_json(samples, classes)))
        for s in samples:
            zf.writestr(f"images/default/{s.name}", s.data)
    return path


def write_images(samples: list[Sample], folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for s in samples:
        (folder / s.name).write_bytes(s.data)
    return folder
