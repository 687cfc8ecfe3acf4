"""A tiny deterministic detection dataset: coloured circles and squares on noise.

``make_shapes_dataset`` gives ``(images, shapes)`` ready for
``CvatStandIn.add_task(images=..., shapes=...)``: JPEG frames and CVAT-style
shapes (rectangles, polygons and masks, in pixels) that match what is drawn.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image

from .rle import encode_cvat_mask

#: Shape kinds an object can be written as; "mixed" cycles through them.
KINDS = ("rectangle", "polygon", "mask")

#: Base colours (RGB) per class index; classes past the list reuse it shifted.
_COLOURS = ((220, 40, 40), (40, 90, 230), (40, 200, 60), (230, 200, 30), (200, 40, 200))

#: Vertices of the polygon written for a circle.
_CIRCLE_VERTICES = 16


def shapes_labels(
    classes: tuple[str, ...] = ("circle", "square"), label_type: str = "any"
) -> list[dict[str, Any]]:
    """The ``labels=`` argument of ``add_task`` for the given classes."""
    return [{"name": name, "type": label_type, "attributes": []} for name in classes]


def make_shapes_dataset(
    n_images: int,
    size: tuple[int, int] = (96, 96),
    classes: tuple[str, ...] = ("circle", "square"),
    seed: int = 0,
    *,
    kind: str = "mixed",
    max_objects: int = 3,
    jpeg_quality: int = 95,
) -> tuple[list[tuple[str, bytes]], list[dict[str, Any]]]:
    """Make ``n_images`` frames with 1..``max_objects`` objects each.

    ``size`` is (width, height). A class whose name contains "circle" is drawn
    as a disc, any other as an axis-aligned square. ``kind`` picks how each
    object is written: "rectangle", "polygon", "mask", or "mixed" (cycling
    through the three, so one call gives boxes, polygons and masks). Masks are
    exactly the drawn pixels; polygons and boxes follow the drawn outline.
    Returns (images, shapes): images as [(name, jpeg bytes)], shapes as dicts
    with frame, label, type and points.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    if kind not in (*KINDS, "mixed"):
        raise ValueError(f"kind must be one of {', '.join((*KINDS, 'mixed'))}; got {kind!r}")
    if not classes:
        raise ValueError("classes must name at least one class")
    width, height = size
    if min(width, height) < 24:
        raise ValueError(f"size must be at least 24x24 pixels, got {width}x{height}")

    rng = np.random.default_rng(seed)
    images: list[tuple[str, bytes]] = []
    shapes: list[dict[str, Any]] = []
    object_index = 0
    for frame in range(n_images):
        canvas = rng.integers(20, 90, size=(height, width, 3), dtype=np.uint8)
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            box = _place(rng, width, height, placed)
            if box is None:
                continue
            placed.append(box)
            class_index = int(rng.integers(0, len(classes)))
            name = classes[class_index]
            bitmap = _rasterise(name, box, width, height)
            colour = np.array(_colour(class_index), dtype=np.int16)
            jitter = rng.integers(-20, 21, size=3)
            canvas[bitmap] = np.clip(colour + jitter, 0, 255).astype(np.uint8)
            shape_kind = KINDS[object_index % len(KINDS)] if kind == "mixed" else kind
            object_index += 1
            shapes.append(
                {
                    "frame": frame,
                    "label": name,
                    "type": shape_kind,
                    "points": _points(shape_kind, name, box, bitmap),
                }
            )
        buffer = io.BytesIO()
        Image.fromarray(canvas, "RGB").save(buffer, format="JPEG", quality=jpeg_quality)
        images.append((f"frame_{frame:06d}.jpg", buffer.getvalue()))
    return images, shapes


def _colour(class_index: int) -> tuple[int, int, int]:
    r, g, b = _COLOURS[class_index % len(_COLOURS)]
    shift = 25 * (class_index // len(_COLOURS))
    return ((r + shift) % 256, (g + 2 * shift) % 256, (b + 3 * shift) % 256)


def _place(
    rng: np.random.Generator, width: int, height: int, placed: list[tuple[int, int, int, int]]
) -> tuple[int, int, int, int] | None:
    """A square box (x, y, side, side) that does not touch the boxes placed."""
    short = min(width, height)
    for _ in range(30):
        side = int(rng.integers(max(8, short * 18 // 100), max(9, short * 40 // 100) + 1))
        x = int(rng.integers(1, width - side - 1))
        y = int(rng.integers(1, height - side - 1))
        if all(
            x + side + 2 <= px or px + ps + 2 <= x or y + side + 2 <= py or py + ps + 2 <= y
            for px, py, ps, _ in placed
        ):
            return (x, y, side, side)
    return None


def _rasterise(name: str, box: tuple[int, int, int, int], width: int, height: int) -> np.ndarray:
    x, y, side, _ = box
    bitmap = np.zeros((height, width), dtype=bool)
    if "circle" in name:
        cx, cy, r = x + side / 2, y + side / 2, side / 2
        ys, xs = np.mgrid[0:height, 0:width]
        bitmap[((xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2) <= r * r] = True
    else:
        bitmap[y : y + side, x : x + side] = True
    return bitmap


def _points(
    shape_kind: str, name: str, box: tuple[int, int, int, int], bitmap: np.ndarray
) -> list[float]:
    x, y, side, _ = box
    if shape_kind == "mask":
        return encode_cvat_mask(bitmap)
    if shape_kind == "rectangle":
        ys, xs = np.nonzero(bitmap)
        return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    if "circle" in name:
        cx, cy, r = x + side / 2, y + side / 2, side / 2
        points: list[float] = []
        for i in range(_CIRCLE_VERTICES):
            angle = 2 * math.pi * i / _CIRCLE_VERTICES
            points += [round(cx + r * math.cos(angle), 2), round(cy + r * math.sin(angle), 2)]
        return points
    return [float(x), float(y), float(x + side), float(y), float(x + side), float(y + side),
            float(x), float(y + side)]  # fmt: skip
