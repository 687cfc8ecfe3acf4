"""What a person still had to do after pre-annotation: the corrections measure.

For frames that a model pre-annotated and a person then annotated (the CVAT
job completed), compare the shapes the model proposed with the shapes the job
holds at completion:

- *deleted*: a proposed shape with no counterpart at the end (a false positive);
- *drawn*: a shape at the end with no proposed counterpart (a miss);
- *moved*: a counterpart whose IoU with the proposed shape is below
  ``MOVED_IOU`` (0.9), or one of another type (a polygon the person replaced by
  a box): the person redrew, dragged or reshaped it;
- *relabelled*: a counterpart with another label.

Shapes: rectangles (``Box``, the box models' output), polygons (``Polygon``)
and masks (``Mask``, CVAT's run-length format: ``services/inference/shapes.py``),
which Mask R-CNN models write; ``from_cvat`` reads any of the three. Two boxes
compare exactly; any other pair is rasterised on the frame's pixel grid (a
pixel is in a shape when its centre is, polygons by the even-odd rule) and
compared by the pixels they share, so a box and a polygon compare too.

Counterparts: when both sides carry CVAT shape ids (CVAT keeps a shape's id
when a person edits it), a final shape is the counterpart of the proposed shape
with its id; otherwise the shapes of a frame are paired greedily by IoU
(highest first, at least ``MATCH_IOU``, whatever the labels and types, so a
relabelled shape is one correction, not a deletion and a drawing). A moved and
relabelled shape counts in both. ``Corrections`` sums frames;
``per_100_objects`` divides by the shapes at the end (drawing everything by
hand is 100 per 100 objects). Pure (numpy only): the gateway and bench/ feed
it; ``preannotate.layout`` stores its records.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

MOVED_IOU = 0.9
MATCH_IOU = 0.3
#: The CVAT shape types the measure reads (``from_cvat``); others are not measured.
TYPES = ("rectangle", "polygon", "mask")


def _shape_id(shape: Mapping[str, Any]) -> int | None:
    shape_id = shape.get("id")
    return shape_id if isinstance(shape_id, int) and not isinstance(shape_id, bool) else None


@dataclass(frozen=True, eq=False)
class Raster:
    """A shape's pixels: ``bitmap[i, j]`` is the pixel ``(left + j, top + i)``."""

    left: int
    top: int
    bitmap: np.ndarray

    @cached_property
    def area(self) -> int:
        return int(np.count_nonzero(self.bitmap))


def _centres(start: int, stop: int) -> np.ndarray:
    return np.arange(start, stop, dtype=np.float64) + 0.5


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels, with its label and (if known) its CVAT shape id."""

    label: str
    xtl: float
    ytl: float
    xbr: float
    ybr: float
    shape_id: int | None = None
    type: ClassVar[str] = "rectangle"

    @classmethod
    def from_shape(cls, shape: Mapping[str, Any], label: str) -> Box:
        """From a CVAT rectangle shape (``points`` [xtl, ytl, xbr, ybr])."""
        points = shape.get("points")
        if shape.get("type") != "rectangle" or not isinstance(points, list) or len(points) != 4:
            raise ValueError(f"not a CVAT rectangle: {dict(shape)!r:.200}")
        xtl, ytl, xbr, ybr = (float(p) for p in points)
        return cls(label, xtl, ytl, xbr, ybr, _shape_id(shape))

    @property
    def area(self) -> float:
        return max(0.0, self.xbr - self.xtl) * max(0.0, self.ybr - self.ytl)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return self.xtl, self.ytl, self.xbr, self.ybr

    @cached_property
    def raster(self) -> Raster:
        left, top = math.floor(self.xtl), math.floor(self.ytl)
        xs = _centres(left, max(left, math.ceil(self.xbr)))
        ys = _centres(top, max(top, math.ceil(self.ybr)))
        cols = (xs >= self.xtl) & (xs < self.xbr)
        rows = (ys >= self.ytl) & (ys < self.ybr)
        return Raster(left, top, rows[:, None] & cols[None, :])


@dataclass(frozen=True)
class Polygon:
    """A polygon in pixels (``points`` x0, y0, x1, y1, ...), its label and CVAT shape id."""

    label: str
    points: tuple[float, ...]
    shape_id: int | None = None
    type: ClassVar[str] = "polygon"

    def __post_init__(self) -> None:
        if len(self.points) < 6 or len(self.points) % 2:
            raise ValueError(
                f"a polygon needs 3 or more x, y pairs, got {len(self.points)} numbers"
            )

    @classmethod
    def from_shape(cls, shape: Mapping[str, Any], label: str) -> Polygon:
        """From a CVAT polygon shape (``points`` [x0, y0, x1, y1, ...])."""
        points = shape.get("points")
        if shape.get("type") != "polygon" or not isinstance(points, list):
            raise ValueError(f"not a CVAT polygon: {dict(shape)!r:.200}")
        return cls(label, tuple(float(p) for p in points), _shape_id(shape))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        xs, ys = self.points[0::2], self.points[1::2]
        return min(xs), min(ys), max(xs), max(ys)

    @cached_property
    def raster(self) -> Raster:
        """The pixels whose centres are inside (even-odd rule), one scanline a row."""
        xtl, ytl, xbr, ybr = self.bounds
        left, top = math.floor(xtl), math.floor(ytl)
        xs = _centres(left, max(left, math.ceil(xbr)))
        ys = _centres(top, max(top, math.ceil(ybr)))
        x0 = np.asarray(self.points[0::2], dtype=np.float64)
        y0 = np.asarray(self.points[1::2], dtype=np.float64)
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        bitmap = np.zeros((ys.size, xs.size), dtype=bool)
        for i, y in enumerate(ys):
            # Edges that span the scanline (half-open, so a vertex counts once).
            spans = (y0 <= y) != (y1 <= y)
            if not spans.any():
                continue
            a, b, c, d = x0[spans], y0[spans], x1[spans], y1[spans]
            crossings = np.sort(a + (y - b) * (c - a) / (d - b))
            bitmap[i] = np.searchsorted(crossings, xs, side="right") % 2 == 1
        return Raster(left, top, bitmap)


@dataclass(frozen=True)
class Mask:
    """A CVAT mask: run lengths over the inclusive box ``left..right`` x ``top..bottom``,
    row by row, starting with a run of background; its label and CVAT shape id."""

    label: str
    runs: tuple[int, ...]
    left: int
    top: int
    right: int
    bottom: int
    shape_id: int | None = None
    type: ClassVar[str] = "mask"

    def __post_init__(self) -> None:
        width, height = self.right - self.left + 1, self.bottom - self.top + 1
        if width < 1 or height < 1 or any(r < 0 for r in self.runs):
            raise ValueError(f"not a CVAT mask: box {self.box}, runs {self.runs[:8]}")
        if sum(self.runs) != width * height:
            raise ValueError(
                f"mask runs cover {sum(self.runs)} pixels but the box {self.box} has "
                f"{width * height}"
            )

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.left, self.top, self.right, self.bottom

    @classmethod
    def from_shape(cls, shape: Mapping[str, Any], label: str) -> Mask:
        """From a CVAT mask shape (``points`` [runs..., left, top, right, bottom])."""
        points = shape.get("points")
        if shape.get("type") != "mask" or not isinstance(points, list) or len(points) < 5:
            raise ValueError(f"not a CVAT mask: {dict(shape)!r:.200}")
        if not all(float(p).is_integer() for p in points):
            raise ValueError(f"mask points must be whole numbers: {points[:8]!r}")
        *runs, left, top, right, bottom = (int(p) for p in points)
        return cls(label, tuple(runs), left, top, right, bottom, _shape_id(shape))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return self.left, self.top, self.right + 1, self.bottom + 1

    @cached_property
    def raster(self) -> Raster:
        width, height = self.right - self.left + 1, self.bottom - self.top + 1
        flat = np.repeat(np.arange(len(self.runs)) % 2 == 1, self.runs)
        return Raster(self.left, self.top, flat.reshape(height, width))


Shape = Box | Polygon | Mask
_READERS = {"rectangle": Box.from_shape, "polygon": Polygon.from_shape, "mask": Mask.from_shape}


def from_cvat(shape: Mapping[str, Any], label: str) -> Shape:
    """A CVAT rectangle, polygon or mask shape (``TYPES``) as the measure's shape."""
    reader = _READERS.get(str(shape.get("type")))
    if reader is None:
        raise ValueError(
            f"not a shape the measure reads ({', '.join(TYPES)}): {dict(shape)!r:.200}"
        )
    return reader(shape, label)


def _box_iou(a: Box, b: Box) -> float:
    w = min(a.xbr, b.xbr) - max(a.xtl, b.xtl)
    h = min(a.ybr, b.ybr) - max(a.ytl, b.ytl)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def _raster_iou(a: Raster, b: Raster) -> float:
    ah, aw = a.bitmap.shape
    bh, bw = b.bitmap.shape
    left, top = max(a.left, b.left), max(a.top, b.top)
    right, bottom = min(a.left + aw, b.left + bw), min(a.top + ah, b.top + bh)
    inter = 0
    if right > left and bottom > top:
        sa = a.bitmap[top - a.top : bottom - a.top, left - a.left : right - a.left]
        sb = b.bitmap[top - b.top : bottom - b.top, left - b.left : right - b.left]
        inter = int(np.count_nonzero(sa & sb))
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def iou(a: Shape, b: Shape) -> float:
    """Intersection over union: exact for two boxes, else by pixels on the frame's grid."""
    if isinstance(a, Box) and isinstance(b, Box):
        return _box_iou(a, b)
    axtl, aytl, axbr, aybr = a.bounds
    bxtl, bytl, bxbr, bybr = b.bounds
    if min(axbr, bxbr) <= max(axtl, bxtl) or min(aybr, bybr) <= max(aytl, bytl):
        return 0.0  # apart: nothing to rasterise
    return _raster_iou(a.raster, b.raster)


@dataclass(frozen=True)
class Corrections:
    frames: int = 0
    #: Shapes the model proposed, and shapes the frames hold at the end.
    proposed: int = 0
    final: int = 0
    deleted: int = 0
    drawn: int = 0
    moved: int = 0
    relabelled: int = 0

    @property
    def total(self) -> int:
        return self.deleted + self.drawn + self.moved + self.relabelled

    @property
    def per_frame(self) -> float:
        return self.total / self.frames if self.frames else 0.0

    @property
    def per_100_objects(self) -> float:
        return 100.0 * self.total / self.final if self.final else 0.0

    def __add__(self, other: Corrections) -> Corrections:
        return Corrections(*(a + b for a, b in zip(_values(self), _values(other), strict=True)))

    def as_dict(self) -> dict[str, float]:
        return {
            **asdict(self),
            "corrections": self.total,
            "per_frame": round(self.per_frame, 4),
            "per_100_objects": round(self.per_100_objects, 4),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Corrections:
        return cls(*(int(data.get(name, 0)) for name in _FIELDS))

    @classmethod
    def summed(cls, records: Iterable[Mapping[str, Any]]) -> Corrections:
        """The sum of stored records (``as_dict`` of each: one per measured job)."""
        return sum((cls.from_dict(r) for r in records), cls())


_FIELDS = ("frames", "proposed", "final", "deleted", "drawn", "moved", "relabelled")


def _values(c: Corrections) -> tuple[int, ...]:
    return tuple(getattr(c, name) for name in _FIELDS)


def _pairs(proposed: list[Shape], final: list[Shape]) -> list[tuple[Shape, Shape]]:
    if proposed and final and all(b.shape_id is not None for b in (*proposed, *final)):
        by_id = {b.shape_id: b for b in final}
        return [(p, by_id[p.shape_id]) for p in proposed if p.shape_id in by_id]
    scores = ((iou(p, f), i, j) for i, p in enumerate(proposed) for j, f in enumerate(final))
    candidates = sorted((t for t in scores if t[0] >= MATCH_IOU), key=lambda t: (-t[0], t[1], t[2]))
    used_p: set[int] = set()
    used_f: set[int] = set()
    pairs = []
    for _, i, j in candidates:
        if i in used_p or j in used_f:
            continue
        used_p.add(i)
        used_f.add(j)
        pairs.append((proposed[i], final[j]))
    return pairs


def compare_frame(proposed: Iterable[Shape], final: Iterable[Shape]) -> Corrections:
    """The corrections of one frame."""
    proposed, final = list(proposed), list(final)
    pairs = _pairs(proposed, final)
    return Corrections(
        frames=1,
        proposed=len(proposed),
        final=len(final),
        deleted=len(proposed) - len(pairs),
        drawn=len(final) - len(pairs),
        moved=sum(1 for p, f in pairs if p.type != f.type or iou(p, f) < MOVED_IOU),
        relabelled=sum(1 for p, f in pairs if p.label != f.label),
    )


def compare(
    proposed: Mapping[int, Iterable[Shape]],
    final: Mapping[int, Iterable[Shape]],
    frames: Iterable[int] = (),
) -> Corrections:
    """The corrections over frames (frame number -> shapes): ``frames`` (the job's,
    empty ones too) and every frame of either side (a frame the model left empty
    and the person filled is all drawn)."""
    total = Corrections()
    for frame in sorted(set(proposed) | set(final) | set(frames)):
        total = total + compare_frame(proposed.get(frame, ()), final.get(frame, ()))
    return total
