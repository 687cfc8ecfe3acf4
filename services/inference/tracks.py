"""A video's per-frame detections as CVAT tracks: linking, keyframes, CVAT's interpolation.

1. ``link``: detections on consecutive frames become tracks, one label at a
   time, in the manner of ByteTrack (Zhang et al. 2022): each live track's box
   is predicted on the next frame at constant velocity; detections scored at
   or above the run's threshold are matched to the predictions first (IoU at
   least ``match_iou``, greedy by IoU), then the lower-scored ones (down to
   ``threshold * low_ratio``) may only continue tracks left unmatched (IoU at
   least ``low_match_iou``); a high detection left over starts a track. A
   track missed on more than ``max_missed`` frames in a row ends; one seen on
   fewer than ``min_hits`` frames is dropped as flicker.
2. ``keyframes``: each track's boxes are smoothed (a centred moving average
   over ``smooth`` observations either side) and reduced Douglas-Peucker
   style: a frame is kept only where CVAT's linear interpolation between the
   kept ones would drift below ``keyframe_iou`` against the smoothed box.
3. ``cvat_track``: the kept frames as CVAT's ``LabeledTrack`` with
   ``TrackedShape`` rectangles, and a shape with ``outside: true`` on the
   next frame of the run after the object was last seen (CVAT ends the
   visible part of a track there; without it the last box would stay to the
   end of the job). ``split_track`` cuts one across CVAT jobs the way CVAT's
   ``AnnotationIR._slice_track`` does, with interpolated keyframes at the cuts.
4. ``box_at`` / ``expand``: CVAT's interpolation of a track's shapes
   (``TrackManager.get_interpolated_shapes`` in cvat/apps/dataset_manager/
   annotation.py), for tests and the benchmark.

Why our own and not supervision's ByteTrack or norfair: supervision pulls
PyAV, matplotlib, scipy and requests into the inference image; norfair pins
numpy < 2 (this project runs numpy 2). The work here is offline (the whole
video is known before anything is written), so a constant-velocity
prediction stands in for the Kalman filter, and greedy IoU matching (norfair's
default) for the Hungarian algorithm: numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: x1, y1, x2, y2 in image pixels.
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class TrackSettings:
    """How detections are linked and how tracks are reduced to keyframes."""

    #: Least IoU between a track's predicted box and a detection at or above the threshold.
    match_iou: float = 0.3
    #: Least IoU for a lower-scored detection to continue a track (ByteTrack's second pass).
    low_match_iou: float = 0.5
    #: Detections down to ``threshold * low_ratio`` may continue tracks (never start one).
    low_ratio: float = 0.5
    #: Frames in a row a track may go undetected before it ends.
    max_missed: int = 5
    #: Tracks seen on fewer frames are dropped (a detector's flicker).
    min_hits: int = 2
    #: Least IoU between CVAT's interpolation of the kept keyframes and the track's box.
    keyframe_iou: float = 0.85
    #: Observations either side averaged into each box before keyframes are chosen.
    smooth: int = 2

    def __post_init__(self) -> None:
        for name in ("match_iou", "low_match_iou", "low_ratio", "keyframe_iou"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"TrackSettings.{name} must be in (0, 1], got {value}")
        for name in ("max_missed", "smooth"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrackSettings.{name} must be at least 0")
        if self.min_hits < 1:
            raise ValueError("TrackSettings.min_hits must be at least 1")


@dataclass(frozen=True)
class Detection:
    """One box on one frame, with the target's label id."""

    label: int
    box: Box
    score: float


@dataclass
class Track:
    """One object across frames: the frames it was seen on, in order."""

    label: int
    frames: list[int] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    #: The run's next frame after the last one the object was seen on (None: the run's last).
    outside: int | None = None

    def add(self, frame: int, det: Detection) -> None:
        self.frames.append(frame)
        self.boxes.append(det.box)
        self.scores.append(det.score)

    def predict(self, frame: int) -> np.ndarray:
        """The box on ``frame`` at the velocity between the last two observations."""
        last = np.asarray(self.boxes[-1], dtype=np.float64)
        if len(self.frames) < 2:
            return last
        prev = np.asarray(self.boxes[-2], dtype=np.float64)
        velocity = (last - prev) / (self.frames[-1] - self.frames[-2])
        return last + velocity * (frame - self.frames[-1])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), x1 y1 x2 y2."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)[:, None, :]
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)[None, :, :]
    return iou_pairs(*np.broadcast_arrays(a, b))


def iou_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``a[..., i]`` with ``b[..., i]`` elementwise (boxes x1 y1 x2 y2 on the last axis)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ix = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iy = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ix * iy
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def greedy_match(iou: np.ndarray, least: float) -> list[tuple[int, int]]:
    """(row, column) pairs, best IoU first, each row and column used once, IoU >= ``least``."""
    iou = np.array(iou, dtype=np.float64)
    pairs: list[tuple[int, int]] = []
    while iou.size:
        row, col = np.unravel_index(int(np.argmax(iou)), iou.shape)
        if iou[row, col] < least:
            break
        pairs.append((int(row), int(col)))
        iou[row, :] = -1.0
        iou[:, col] = -1.0
    return pairs


def link(
    frames: Iterable[tuple[int, Sequence[Detection]]],
    threshold: float,
    settings: TrackSettings | None = None,
) -> list[Track]:
    """Tracks from (frame, detections) in increasing frame order (the module doc).

    Every frame the run predicted counts, with or without detections; frames
    not passed (skipped, deleted) are not counted as misses."""
    settings = settings or TrackSettings()
    low = threshold * settings.low_ratio
    live: dict[int, list[tuple[Track, int]]] = {}  # label -> [(track, frames missed)]
    done: list[Track] = []
    seen_frames: list[int] = []
    last_frame = -1
    for frame, dets in frames:
        if frame <= last_frame:
            raise ValueError(f"frames must increase: {frame} after {last_frame}")
        last_frame = frame
        seen_frames.append(frame)
        by_label: dict[int, list[Detection]] = {}
        for det in dets:
            if det.score >= low:
                by_label.setdefault(det.label, []).append(det)
        for label in set(live) | set(by_label):
            live[label] = _step(
                live.get(label, []), by_label.get(label, []), frame, threshold, settings, done
            )
    for tracks in live.values():
        done += [t for t, _ in tracks]
    kept = [t for t in done if len(t.frames) >= settings.min_hits]
    for track in kept:
        after = np.searchsorted(seen_frames, track.frames[-1], side="right")
        track.outside = seen_frames[after] if after < len(seen_frames) else None
    return sorted(kept, key=lambda t: (t.frames[0], t.label, t.boxes[0]))


def _step(
    tracks: list[tuple[Track, int]],
    dets: list[Detection],
    frame: int,
    threshold: float,
    settings: TrackSettings,
    done: list[Track],
) -> list[tuple[Track, int]]:
    """One frame for one label: match, start, age; returns the tracks still live."""
    high = [d for d in dets if d.score >= threshold]
    low = [d for d in dets if d.score < threshold]
    matched: set[int] = set()
    if tracks and high:
        predicted = np.stack([t.predict(frame) for t, _ in tracks])
        iou = iou_matrix(predicted, np.array([d.box for d in high]))
        pairs = greedy_match(iou, settings.match_iou)
        for row, col in pairs:
            tracks[row][0].add(frame, high[col])
            matched.add(row)
        used = {col for _, col in pairs}
        high = [d for i, d in enumerate(high) if i not in used]
    rest = [i for i in range(len(tracks)) if i not in matched]
    if rest and low:
        predicted = np.stack([tracks[i][0].predict(frame) for i in rest])
        iou = iou_matrix(predicted, np.array([d.box for d in low]))
        for row, col in greedy_match(iou, settings.low_match_iou):
            tracks[rest[row]][0].add(frame, low[col])
            matched.add(rest[row])
    out: list[tuple[Track, int]] = []
    for i, (track, missed) in enumerate(tracks):
        missed = 0 if i in matched else missed + 1
        if missed > settings.max_missed:
            done.append(track)
        else:
            out.append((track, missed))
    for det in high:
        track = Track(det.label)
        track.add(frame, det)
        out.append((track, 0))
    return out


# --- keyframes --------------------------------------------------------------------------


def smoothed(boxes: Sequence[Box], half: int) -> np.ndarray:
    """A centred moving average over up to ``half`` observations either side; the window
    narrows near the ends so that it stays centred (a straight path stays straight)."""
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if half == 0 or len(arr) < 3:
        return arr
    sums = np.vstack([np.zeros((1, 4)), np.cumsum(arr, axis=0)])
    n = len(arr)
    out = np.empty_like(arr)
    for i in range(n):
        w = min(half, i, n - 1 - i)
        out[i] = (sums[i + w + 1] - sums[i - w]) / (2 * w + 1)
    return out


def keyframes(frames: Sequence[int], boxes: np.ndarray, least_iou: float) -> list[int]:
    """Indexes into ``frames`` to keep: first and last, and wherever linear
    interpolation between the kept ones falls below ``least_iou`` against ``boxes``."""
    n = len(frames)
    if n <= 2:
        return list(range(n))
    f = np.asarray(frames, dtype=np.float64)
    keep = {0, n - 1}
    todo = [(0, n - 1)]
    while todo:
        i, j = todo.pop()
        if j - i < 2:
            continue
        t = (f[i + 1 : j] - f[i]) / (f[j] - f[i])
        between = boxes[i] + (boxes[j] - boxes[i]) * t[:, None]
        fit = iou_pairs(between, boxes[i + 1 : j])
        worst = int(np.argmin(fit))
        if fit[worst] < least_iou:
            k = i + 1 + worst
            keep.add(k)
            todo += [(i, k), (k, j)]
    return sorted(keep)


# --- CVAT -------------------------------------------------------------------------------


def rectangle(frame: int, box: Sequence[float], *, outside: bool = False) -> dict[str, Any]:
    """One CVAT ``TrackedShape`` rectangle."""
    return {
        "type": "rectangle",
        "frame": int(frame),
        "points": [round(float(v), 2) for v in box],
        "outside": outside,
        "occluded": False,
        "z_order": 0,
        "rotation": 0.0,
        "attributes": [],
    }


def cvat_track(
    track: Track, settings: TrackSettings | None = None, size: tuple[int, int] | None = None
) -> dict[str, Any]:
    """The track as CVAT's ``LabeledTrack``: keyframes only, ``outside`` after the last
    sighting; boxes clipped to ``size`` (width, height) when given."""
    settings = settings or TrackSettings()
    boxes = smoothed(track.boxes, settings.smooth)
    if size is not None:
        boxes = np.clip(boxes, 0, [size[0], size[1], size[0], size[1]])
    kept = keyframes(track.frames, boxes, settings.keyframe_iou)
    shapes = [rectangle(track.frames[k], boxes[k]) for k in kept]
    if track.outside is not None:
        shapes.append(rectangle(track.outside, boxes[kept[-1]], outside=True))
    return {
        "frame": track.frames[0],
        "label_id": track.label,
        "group": 0,
        "source": "auto",
        "attributes": [],
        "shapes": shapes,
    }


def box_at(shapes: Sequence[dict[str, Any]], frame: int) -> list[float] | None:
    """The box CVAT shows on ``frame`` for a track with these shapes (in frame
    order), or None where the track is outside (or has not begun): a keyframe's
    own box; linear between two keyframes unless the earlier is ``outside``;
    the last visible keyframe's box held to the end."""
    before = None
    for i, shape in enumerate(shapes):
        if shape["frame"] > frame:
            break
        before = i
    if before is None:
        return None
    left = shapes[before]
    if left["outside"]:
        return None
    if left["frame"] == frame or before + 1 == len(shapes):
        return list(map(float, left["points"]))
    right = shapes[before + 1]
    t = (frame - left["frame"]) / (right["frame"] - left["frame"])
    a, b = np.asarray(left["points"], float), np.asarray(right["points"], float)
    return (a + (b - a) * t).tolist()


def expand(shapes: Sequence[dict[str, Any]], frames: Iterable[int]) -> dict[int, list[float]]:
    """Frame -> the box CVAT shows there, for the frames where the track is visible."""
    out = {}
    for frame in frames:
        box = box_at(shapes, frame)
        if box is not None:
            out[frame] = box
    return out


def split_track(
    track: dict[str, Any], ranges: Sequence[tuple[int, int]]
) -> list[tuple[int, dict[str, Any]]]:
    """(range index, part) for each (start, stop) frame range (a job's) the track is
    visible in. A part starts with the interpolated box where the track enters the
    range in mid-flight and gets one at ``stop`` where it goes on past it, so that
    CVAT shows in each job exactly what the whole track shows there; a part's
    leading ``outside`` shapes are dropped, as CVAT's ``_slice_track`` drops them."""
    shapes = track["shapes"]
    parts = []
    for index, (start, stop) in enumerate(ranges):
        inside = [dict(s) for s in shapes if start <= s["frame"] <= stop]
        at_start = box_at(shapes, start)
        if at_start is not None and (not inside or inside[0]["frame"] != start):
            inside.insert(0, rectangle(start, at_start))
        at_stop = box_at(shapes, stop)
        later = any(s["frame"] > stop for s in shapes)
        if at_stop is not None and later and inside and inside[-1]["frame"] != stop:
            inside.append(rectangle(stop, at_stop))
        while inside and inside[0]["outside"]:
            inside.pop(0)
        if inside:
            part = dict(track, frame=inside[0]["frame"], shapes=inside)
            parts.append((index, part))
    return parts
