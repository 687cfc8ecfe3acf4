"""A second synthetic detection dataset, unlike the quickstart's, closer to what users annotate.

The quickstart's data (``preannotate/quickstart/shapes.py``) is one square size,
one to four mid-sized solid shapes well inside the frame, JPEG only. This one
differs on every axis the recipe could be tuned to:

- sizes: landscape 320x240 up to 1024x576 and portrait frames (``SIZES``);
- objects of four other classes (``CLASSES``: star, ring, cross, arrow), each
  filled with a solid colour, stripes or a checkerboard, rotated, 0 to 8 per
  frame; about 40 % small (10-30 px across, COCO's "small"), the others up to
  half the frame's short side; about 15 % cut by the border (the box is the
  visible part; kept when at least 40 % of it is inside);
- about 10 % empty frames;
- backgrounds of gradients, blotchy noise, tiles or soft rectangles, with
  distractors that belong to no class (lines, filled ellipses, rectangles,
  scribbles), sometimes blurred;
- JPEG (quality 60-95) and PNG.

Deterministic for a seed: the benchmark trains on one seed and scores on frames
made with another. The samples are ``preannotate.quickstart.shapes.Sample``s, so
the quickstart's writers (CVAT COCO 1.0 export, image folder, truth file) serve.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from preannotate.quickstart.shapes import Sample, Shape

CLASSES = ("star", "ring", "cross", "arrow")
#: (width, height); portrait frames included.
SIZES = (
    (320, 240),
    (480, 360),
    (640, 480),
    (800, 450),
    (1024, 576),
    (240, 320),
    (360, 480),
    (480, 640),
)
SMALL = (10.0, 30.0)  # px across
P_SMALL = 0.4
P_BORDER = 0.15
P_EMPTY = 0.1
MAX_OBJECTS = 8
MIN_VISIBLE = 0.4


def _upsampled_noise(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    small = rng.uniform(0, 1, size=(cells, max(2, cells * w // max(h, 1)), 3))
    img = Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = int(rng.integers(4))
    base = rng.uniform(30, 220, size=3)
    if kind == 0:  # two-colour gradient
        other = rng.uniform(30, 220, size=3)
        angle = rng.uniform(0, 2 * math.pi)
        t = x * math.cos(angle) + y * math.sin(angle)
        t = ((t - t.min()) / max(1.0, float(t.max() - t.min())))[..., None]
        img = base * (1 - t) + other * t
    elif kind == 1:  # blotchy noise
        img = base + (_upsampled_noise(rng, w, h, int(rng.integers(3, 12))) - 128) * 0.8
    elif kind == 2:  # tiles
        cell = int(rng.integers(12, 60))
        tiles = ((x // cell + y // cell) % 2)[..., None]
        img = base + tiles * rng.uniform(-50, 50, size=3)
    else:
        img = np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    img = img + rng.normal(0, rng.uniform(3, 20), size=(h, w, 3))
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if kind == 3:  # soft rectangles on a flat colour
        draw = ImageDraw.Draw(out)
        for _ in range(int(rng.integers(3, 10))):
            x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
            x1, y1 = x0 + rng.uniform(20, w / 2), y0 + rng.uniform(20, h / 2)
            draw.rectangle((x0, y0, x1, y1), fill=_colour(rng))
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(2, 6)))
    return out


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _distractors(rng: np.random.Generator, img: Image.Image) -> None:
    """Things of no class: lines, filled ellipses, rectangles, scribbles."""
    w, h = img.size
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 7))):
        kind = int(rng.integers(4))
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        size = float(rng.uniform(8, min(w, h) / 3))
        if kind == 0:
            angle = rng.uniform(0, 2 * math.pi)
            end = (x + size * 2 * math.cos(angle), y + size * 2 * math.sin(angle))
            draw.line((x, y, *end), fill=_colour(rng), width=int(rng.integers(1, 5)))
        elif kind == 1:
            ratio = rng.uniform(0.3, 0.7)  # never round: a round one would look like a ring
            draw.ellipse((x, y, x + size, y + size * ratio), fill=_colour(rng))
        elif kind == 2:
            draw.rectangle((x, y, x + size, y + size * rng.uniform(0.3, 1.5)), fill=_colour(rng))
        else:
            points = [(x, y)]
            for _ in range(int(rng.integers(3, 8))):
                points.append(
                    (points[-1][0] + rng.uniform(-15, 15), points[-1][1] + rng.uniform(-15, 15))
                )
            draw.line(points, fill=_colour(rng), width=2)


def _rotate(points, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + r * (px * c - py * s), cy + r * (px * s + py * c)) for px, py in points]


def _outline(label: str) -> list[tuple[float, float]]:
    """The class's outline in a unit circle."""
    if label == "star":
        return [
            (
                (1.0 if i % 2 == 0 else 0.42) * math.cos(math.pi * i / 5 - math.pi / 2),
                (1.0 if i % 2 == 0 else 0.42) * math.sin(math.pi * i / 5 - math.pi / 2),
            )
            for i in range(10)
        ]
    if label == "ring":
        return [(math.cos(2 * math.pi * i / 32), math.sin(2 * math.pi * i / 32)) for i in range(32)]
    if label == "cross":
        a, b = 0.3, 0.9
        return [
            (-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a),
            (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a),
        ]  # fmt: skip
    if label == "arrow":
        return [(-0.9, -0.25), (0.2, -0.25), (0.2, -0.6), (0.95, 0.0), (0.2, 0.6), (0.2, 0.25),
                (-0.9, 0.25)]  # fmt: skip
    raise ValueError(f"unknown class {label!r}; known: {CLASSES}")


def _fill(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A solid colour, stripes or a checkerboard, the size of the frame."""
    first, second = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    kind = int(rng.integers(3))
    if kind == 0:
        return Image.new("RGB", (w, h), tuple(int(c) for c in first))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    period = float(rng.uniform(3, 10))
    if kind == 1:
        angle = rng.uniform(0, math.pi)
        t = np.sin((x * math.cos(angle) + y * math.sin(angle)) * 2 * math.pi / period) > 0
    else:
        t = ((x // period + y // period) % 2) > 0
    img = np.where(t[..., None], first, second)
    return Image.fromarray(img.astype(np.uint8))


def _overlaps(box, boxes, limit: float = 0.15) -> bool:
    x, y, w, h = box
    for bx, by, bw, bh in boxes:
        ix = max(0.0, min(x + w, bx + bw) - max(x, bx))
        iy = max(0.0, min(y + h, by + bh) - max(y, by))
        if ix * iy > limit * min(w * h, bw * bh):
            return True
    return False


def _place(rng: np.random.Generator, w: int, h: int):
    """(cx, cy, r, cut): an object's centre and radius; ``cut`` when it crosses the border."""
    if rng.uniform() < P_SMALL:
        r = float(rng.uniform(*SMALL)) / 2
    else:
        r = float(rng.uniform(SMALL[1] / 2, min(w, h) / 4))
    if rng.uniform() < P_BORDER:
        side = int(rng.integers(4))
        off = float(rng.uniform(-0.6, 0.3)) * r  # the centre just inside or outside the edge
        along_x, along_y = float(rng.uniform(r, w - r)), float(rng.uniform(r, h - r))
        cx, cy = [(off, along_y), (w - off, along_y), (along_x, off), (along_x, h - off)][side]
        return cx, cy, r, True
    return float(rng.uniform(r + 1, w - r - 1)), float(rng.uniform(r + 1, h - r - 1)), r, False


def _draw(img: Image.Image, rng: np.random.Generator, label: str, points, cx, cy, r) -> None:
    w, h = img.size
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    draw.polygon(points, fill=255)
    if label == "ring":
        inner = r * float(rng.uniform(0.45, 0.7))
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    img.paste(_fill(rng, w, h), (0, 0), mask)
    edge = ImageDraw.Draw(img)
    if rng.uniform() < 0.5:
        edge.polygon(points, outline=_colour(rng))


def make_sample(rng: np.random.Generator, index: int, classes=CLASSES) -> Sample:
    w, h = SIZES[int(rng.integers(len(SIZES)))]
    img = _background(rng, w, h)
    _distractors(rng, img)
    shapes: list[Shape] = []
    boxes: list[tuple[float, float, float, float]] = []
    count = 0 if rng.uniform() < P_EMPTY else int(rng.integers(1, MAX_OBJECTS + 1))
    for _ in range(count):
        for _attempt in range(20):
            label = classes[int(rng.integers(len(classes)))]
            cx, cy, r, cut = _place(rng, w, h)
            points = _rotate(_outline(label), cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            full = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
            x0, y0 = max(0.0, full[0]), max(0.0, full[1])
            x1, y1 = min(float(w), full[0] + full[2]), min(float(h), full[1] + full[3])
            if x1 - x0 < 4 or y1 - y0 < 4:
                continue
            box = (x0, y0, x1 - x0, y1 - y0)
            if cut and box[2] * box[3] < MIN_VISIBLE * full[2] * full[3]:
                continue
            if not _overlaps(full, boxes):
                break
        else:
            continue
        _draw(img, rng, label, points, cx, cy, r)
        boxes.append(full)
        clipped = [
            round(min(max(v, 0.0), float(w if i % 2 == 0 else h)), 2)
            for p in points
            for i, v in enumerate(p)
        ]
        shapes.append(Shape(label, box, clipped))
    if rng.uniform() < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.2))))
    buf = io.BytesIO()
    if rng.uniform() < 0.6:
        img.save(buf, format="JPEG", quality=int(rng.integers(60, 96)))
        name = f"mixed_{index:05d}.jpg"
    else:
        img.save(buf, format="PNG")
        name = f"mixed_{index:05d}.png"
    return Sample(name, buf.getvalue(), w, h, shapes)


def make_dataset(n: int, seed: int = 0, classes=CLASSES) -> list[Sample]:
    """``n`` frames, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return [make_sample(rng, i, classes) for i in range(n)]
