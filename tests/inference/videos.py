"""Synthetic videos for the track tests and bench/tracks.py: objects moving on known
paths (entering and leaving), a detector's view of them (noise, missed frames,
low scores, false boxes), and the frames drawn as images for the real model."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from services.inference.tracks import Detection


@dataclass(frozen=True)
class Mover:
    """One object: visible on frames ``enter`` .. ``leave - 1``; its box's centre moves
    at ``velocity`` plus ``accel`` (pixels per frame, per frame squared)."""

    label: int
    enter: int
    leave: int
    centre: tuple[float, float]
    size: tuple[float, float]
    velocity: tuple[float, float]
    accel: tuple[float, float] = (0.0, 0.0)
    #: Relative growth of the box per frame (an object coming closer).
    grow: float = 0.0

    def box(self, frame: int) -> list[float]:
        t = frame - self.enter
        cx = self.centre[0] + self.velocity[0] * t + 0.5 * self.accel[0] * t * t
        cy = self.centre[1] + self.velocity[1] * t + 0.5 * self.accel[1] * t * t
        scale = 1.0 + self.grow * t
        w, h = self.size[0] * scale, self.size[1] * scale
        return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]

    def truth(self) -> dict[int, list[float]]:
        return {f: self.box(f) for f in range(self.enter, self.leave)}


def movers(
    n_frames: int, seed: int = 0, count: int = 4, size: tuple[int, int] = (640, 480)
) -> list[Mover]:
    """``count`` objects of labels 1 and 2 on straight and curved paths that stay in
    the picture; some enter late and leave early."""
    rng = np.random.default_rng(seed)
    width, height = size
    out = []
    for i in range(count):
        enter = 0 if i % 2 == 0 else int(rng.integers(5, n_frames // 4))
        leave = n_frames if i % 3 == 0 else int(rng.integers(3 * n_frames // 4, n_frames))
        span = max(1, leave - enter)
        w, h = rng.uniform(40, 90), rng.uniform(40, 90)
        start = np.array([rng.uniform(80, width - 80), rng.uniform(80, height - 80)])
        end = np.array([rng.uniform(80, width - 80), rng.uniform(80, height - 80)])
        curve = rng.uniform(-0.3, 0.3, size=2) * (i % 2 == 1) * 200 / span**2
        velocity = (end - start) / span - 0.5 * curve * span
        out.append(
            Mover(
                label=1 + i % 2,
                enter=enter,
                leave=leave,
                centre=(float(start[0]), float(start[1])),
                size=(float(w), float(h)),
                velocity=(float(velocity[0]), float(velocity[1])),
                accel=(float(curve[0]), float(curve[1])),
                grow=float(rng.uniform(-0.002, 0.002)),
            )
        )
    return out


def detect(
    objects: list[Mover],
    n_frames: int,
    seed: int = 0,
    *,
    noise: float = 1.5,
    drop: float = 0.05,
    low: float = 0.1,
    false_rate: float = 0.05,
) -> list[tuple[int, list[Detection]]]:
    """What a detector run at score 0.25 would see on each frame: boxes with Gaussian
    noise (``noise`` px), missed with probability ``drop``, scored 0.3-0.5 (under a
    0.5 threshold) with probability ``low``, else 0.55-0.95; false boxes
    (``false_rate`` per frame), scored above the threshold half the time, at random
    places."""
    rng = np.random.default_rng(seed + 1000)
    frames = []
    for frame in range(n_frames):
        found = []
        for obj in objects:
            if not obj.enter <= frame < obj.leave or rng.random() < drop:
                continue
            box = np.asarray(obj.box(frame)) + rng.normal(0, noise, size=4)
            score = rng.uniform(0.3, 0.5) if rng.random() < low else rng.uniform(0.55, 0.95)
            found.append(Detection(obj.label, tuple(float(v) for v in box), float(score)))
        if rng.random() < false_rate:
            x, y = rng.uniform(0, 560), rng.uniform(0, 400)
            score = rng.uniform(0.5, 0.7) if rng.random() < 0.5 else rng.uniform(0.25, 0.45)
            found.append(Detection(int(rng.integers(1, 3)), (x, y, x + 50, y + 50), float(score)))
        rng.shuffle(found)  # type: ignore[arg-type]
        frames.append((frame, found))
    return frames


def render(
    objects: list[Mover], n_frames: int, size: tuple[int, int], seed: int = 0
) -> list[tuple[str, bytes]]:
    """The video's frames as JPEGs drawn as ``make_shapes_dataset`` draws (the tiny
    models were trained on those): label 1 a disc of class 0's colour, label 2 a
    square of class 1's, on a noisy dark background."""
    from tests.standins.cvat.data import _colour, _rasterise

    width, height = size
    rng = np.random.default_rng(seed)
    images = []
    for frame in range(n_frames):
        canvas = rng.integers(20, 90, size=(height, width, 3), dtype=np.uint8)
        for obj in objects:
            if obj.enter <= frame < obj.leave:
                x1, y1, x2, y2 = obj.box(frame)
                side = round(min(x2 - x1, y2 - y1))
                box = (round(x1), round(y1), side, side)
                name = "circle" if obj.label == 1 else "square"
                canvas[_rasterise(name, box, width, height)] = _colour(obj.label - 1)
        buf = io.BytesIO()
        Image.fromarray(canvas, "RGB").save(buf, format="JPEG", quality=95)
        images.append((f"frame_{frame:05d}.jpg", buf.getvalue()))
    return images


@dataclass
class Fit:
    """How one object's track, as CVAT shows it, compares with the object's truth."""

    obj: Mover
    #: The track matched to the object (CVAT's dict), or None.
    track: dict | None
    #: IoU of the shown box with the truth on each frame the object is there (0: no box).
    ious: list[float]
    #: Frames where the track shows a box but the object is not there.
    extra: int

    @property
    def keyframes(self) -> int:
        """Visible keyframes (the ``outside`` shape is not counted)."""
        return sum(1 for s in self.track["shapes"] if not s["outside"]) if self.track else 0


def fit(objects: list[Mover], cvat_tracks: list[dict], n_frames: int) -> list[Fit]:
    """Each object with the track (same label) that covers it best (by summed IoU)."""
    from services.inference.tracks import expand, iou_pairs

    shown = [expand(t["shapes"], range(n_frames)) for t in cvat_tracks]
    out = []
    for obj in objects:
        truth = obj.truth()
        best, best_score, best_ious = None, 0.0, [0.0] * len(truth)
        for i, track in enumerate(cvat_tracks):
            if track["label_id"] != obj.label:
                continue
            ious = [
                float(iou_pairs(np.array([shown[i][f]]), np.array([box]))[0])
                if f in shown[i]
                else 0.0
                for f, box in truth.items()
            ]
            if sum(ious) > best_score:
                best, best_score, best_ious = i, sum(ious), ious
        extra = 0
        if best is not None:
            extra = sum(1 for f in shown[best] if f not in truth)
        out.append(Fit(obj, cvat_tracks[best] if best is not None else None, best_ious, extra))
    return out
