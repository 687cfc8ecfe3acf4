"""What a person still had to do after pre-annotation: the corrections measure.

For frames that a model pre-annotated and a person then annotated (the CVAT
job completed), compare the boxes the model proposed with the boxes the job
holds at completion:

- *deleted*: a proposed box with no counterpart at the end (a false positive);
- *drawn*: a box at the end with no proposed counterpart (a miss);
- *moved*: a counterpart whose IoU with the proposed box is below ``MOVED_IOU``
  (0.9): the person redrew or dragged it;
- *relabelled*: a counterpart with another label.

Counterparts: when both sides carry CVAT shape ids (CVAT keeps a shape's id
when a person edits it), a final box is the counterpart of the proposed box
with its id; otherwise the boxes of a frame are paired greedily by IoU (highest
first, at least ``MATCH_IOU``, whatever the labels, so a relabelled box is one
correction, not a deletion and a drawing). A moved and relabelled box counts
in both. ``Corrections`` sums frames; ``per_100_objects`` divides by the boxes
at the end (drawing everything by hand is 100 per 100 objects). Pure: the
gateway and bench/ feed it; ``preannotate.layout`` stores its records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

MOVED_IOU = 0.9
MATCH_IOU = 0.3


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels, with its label and (if known) its CVAT shape id."""

    label: str
    xtl: float
    ytl: float
    xbr: float
    ybr: float
    shape_id: int | None = None

    @classmethod
    def from_shape(cls, shape: Mapping[str, Any], label: str) -> Box:
        """From a CVAT rectangle shape (``points`` [xtl, ytl, xbr, ybr])."""
        points = shape.get("points")
        if shape.get("type") != "rectangle" or not isinstance(points, list) or len(points) != 4:
            raise ValueError(f"not a CVAT rectangle: {dict(shape)!r:.200}")
        xtl, ytl, xbr, ybr = (float(p) for p in points)
        shape_id = shape.get("id")
        return cls(label, xtl, ytl, xbr, ybr, shape_id if isinstance(shape_id, int) else None)

    @property
    def area(self) -> float:
        return max(0.0, self.xbr - self.xtl) * max(0.0, self.ybr - self.ytl)


def iou(a: Box, b: Box) -> float:
    w = min(a.xbr, b.xbr) - max(a.xtl, b.xtl)
    h = min(a.ybr, b.ybr) - max(a.ytl, b.ytl)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class Corrections:
    frames: int = 0
    #: Boxes the model proposed, and boxes the frames hold at the end.
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


_FIELDS = ("frames", "proposed", "final", "deleted", "drawn", "moved", "relabelled")


def _values(c: Corrections) -> tuple[int, ...]:
    return tuple(getattr(c, name) for name in _FIELDS)


def _pairs(proposed: list[Box], final: list[Box]) -> list[tuple[Box, Box]]:
    if proposed and final and all(b.shape_id is not None for b in (*proposed, *final)):
        by_id = {b.shape_id: b for b in final}
        return [(p, by_id[p.shape_id]) for p in proposed if p.shape_id in by_id]
    candidates = sorted(
        (
            (iou(p, f), i, j)
            for i, p in enumerate(proposed)
            for j, f in enumerate(final)
            if iou(p, f) >= MATCH_IOU
        ),
        key=lambda t: (-t[0], t[1], t[2]),
    )
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


def compare_frame(proposed: Iterable[Box], final: Iterable[Box]) -> Corrections:
    """The corrections of one frame."""
    proposed, final = list(proposed), list(final)
    pairs = _pairs(proposed, final)
    return Corrections(
        frames=1,
        proposed=len(proposed),
        final=len(final),
        deleted=len(proposed) - len(pairs),
        drawn=len(final) - len(pairs),
        moved=sum(1 for p, f in pairs if iou(p, f) < MOVED_IOU),
        relabelled=sum(1 for p, f in pairs if p.label != f.label),
    )


def compare(
    proposed: Mapping[int, Iterable[Box]],
    final: Mapping[int, Iterable[Box]],
    frames: Iterable[int] = (),
) -> Corrections:
    """The corrections over frames (frame number -> boxes): ``frames`` (the job's,
    empty ones too) and every frame of either side (a frame the model left empty
    and the person filled is all drawn)."""
    total = Corrections()
    for frame in sorted(set(proposed) | set(final) | set(frames)):
        total = total + compare_frame(proposed.get(frame, ()), final.get(frame, ()))
    return total
