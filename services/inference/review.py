"""Where a reviewer should look first: frames ranked by how unsure the model was.

A pre-annotation run writes the detections at or above its threshold. Its
mistakes sit where the model hesitated: a box written just above the
threshold is often wrong, one left just below it is often a missed object. So
each frame gets a *doubt*: the sum, over its detections whose score lies
within ``width`` of the threshold (on either side), of how close they came,
``1 - |score - threshold| / width`` (1 at the threshold, 0 at the edge of the
band), plus ``empty`` for a frame with nothing written (a frame the model
found empty may hold what it cannot see). Frames are ranked by doubt, highest
first; the most doubtful detection of a frame is where its CVAT issue points.
How well this ranks mistakes first is measured by bench/review.py
(docs/benchmarks.md, "Review where the model is unsure").

Pure and free of TensorFlow and CVAT: ``rank`` takes what a run predicted
(``Detected`` per frame, with scores below the threshold kept), ``issue`` gives
the body of CVAT's ``POST /api/issues`` for one ranked frame.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from services.inference.postprocess import Detected

#: Half-width of the score band around the threshold that counts as doubt.
WIDTH = 0.25
#: Doubt of a frame where nothing reached the threshold.
EMPTY = 0.5

#: A run's threshold: one for every label, or each label's (``thresholds.Thresholds.of``).
Cut = float | Callable[[str], float]


def cut_of(threshold: Cut) -> Callable[[str], float]:
    return threshold if callable(threshold) else (lambda label: threshold)


@dataclass(frozen=True)
class FrameDoubt:
    """One frame's doubt, and the detection it comes most from (None: nothing close)."""

    frame: int
    doubt: float
    #: How many detections were written on the frame (score >= threshold).
    written: int
    worst: Detected | None


def closeness(score: float, threshold: float, width: float = WIDTH) -> float:
    """1 at the threshold, falling to 0 at ``width`` from it on either side."""
    return max(0.0, 1.0 - abs(score - threshold) / width)


def frame_doubt(
    frame: int,
    detections: Sequence[Detected],
    threshold: Cut,
    *,
    width: float = WIDTH,
    empty: float = EMPTY,
) -> FrameDoubt:
    """The doubt of one frame (see the module doc)."""
    if not 0 < width <= 1:
        raise ValueError(f"width must be in (0, 1], got {width}")
    cut = cut_of(threshold)
    close = [(closeness(d.score, cut(d.label), width), d) for d in detections]
    close = [(c, d) for c, d in close if c > 0]
    written = sum(1 for d in detections if d.score >= cut(d.label))
    doubt = sum(c for c, _ in close) + (empty if written == 0 else 0.0)
    worst = max(close, key=lambda item: item[0])[1] if close else None
    return FrameDoubt(frame=frame, doubt=doubt, written=written, worst=worst)


def rank(
    frames: Mapping[int, Sequence[Detected]],
    threshold: Cut,
    *,
    width: float = WIDTH,
    empty: float = EMPTY,
) -> list[FrameDoubt]:
    """Every frame's doubt, the most doubtful first (ties: lower frame number first)."""
    doubts = [
        frame_doubt(frame, found, threshold, width=width, empty=empty)
        for frame, found in frames.items()
    ]
    return sorted(doubts, key=lambda d: (-d.doubt, d.frame))


def issue(job_id: int, item: FrameDoubt, size: tuple[int, int], threshold: Cut) -> dict:
    """The body of CVAT's ``POST /api/issues`` for one ranked frame of a job: the
    doubtful box (the whole frame when the model found nothing close) and a
    message with the score, for a reviewer to jump to from CVAT's issue list."""
    width, height = size
    cut = cut_of(threshold)
    if item.worst is None:
        position = [0.0, 0.0, float(width), float(height)]
        message = (
            f"preannotate: nothing was found on this frame at threshold {cut(''):.2f}; "
            "check for objects the model missed"
        )
    else:
        position = [round(v, 2) for v in item.worst.pixel_box(width, height)]
        label_cut = cut(item.worst.label)
        kept = "written" if item.worst.score >= label_cut else "not written"
        message = (
            f"preannotate: unsure here: {item.worst.label} at score {item.worst.score:.2f} "
            f"({kept}; threshold {label_cut:.2f}); check this box and the frame "
            f"(doubt {item.doubt:.2f})"
        )
    return {"job": job_id, "frame": item.frame, "position": position, "message": message}
