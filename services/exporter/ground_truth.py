"""CVAT Ground Truth jobs (a project's, or a task's trained by itself): the frames and
labels of the evaluation split.

CVAT 2.x (docs/cvat.md, "Ground Truth jobs") keeps a task's Ground Truth job
apart: a job of ``type`` ``ground_truth`` over chosen frames of the task (its
data/meta ``included_frames``), whose annotations are not part of the task's
annotations nor of its export, and which CVAT uses (for its quality reports)
once it is finished: stage ``acceptance``, state ``completed``. The exporter
follows the same rule: an accepted Ground Truth job with annotations makes its
frames the dataset's validation split, labelled with the Ground Truth job's
shapes (not with what the annotation jobs drew on those frames), and keeps
them out of the training split (``project.merge``, ``convert``). A Ground
Truth job not accepted yet, or accepted with no shape, is not used; the
manifest's ``source`` names both kinds.

The shapes become COCO instances as CVAT's COCO export (datumaro) writes
them: a rectangle its box, a polygon its points and their box, a mask its
pixels (CVAT's run lengths over the mask's box); tags and shapes COCO has no
place for (polylines, points, ellipses, cuboids, skeletons) are left out, as
the task export leaves them out. Tracks are refused: in a Ground Truth job of
an image task a track is a mistake, and its frames could not be measured
frame by frame without CVAT's interpolation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from preannotate.errors import FailedPrecondition
from services.exporter.coco import Instance

#: A Ground Truth job CVAT uses: finished (quality_control/quality_reports.py).
ACCEPTED_STAGE, ACCEPTED_STATE = "acceptance", "completed"
#: ``splits.val.source`` of a dataset whose validation split is CVAT ground truth.
SOURCE = "cvat-ground-truth"

_SHAPES = ("rectangle", "polygon", "mask")


@dataclass(frozen=True)
class GroundTruth:
    """One task's accepted Ground Truth job: its frames and their shapes."""

    job_id: int
    task_id: int
    #: File name -> the job's shapes on that frame (``label`` added: the label's name).
    frames: Mapping[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)

    @property
    def shapes(self) -> int:
        return sum(len(s) for s in self.frames.values())


def split_jobs(
    jobs: Iterable[Mapping[str, Any]],
) -> tuple[dict[int, Mapping[str, Any]], list[Mapping[str, Any]]]:
    """The listed Ground Truth jobs by task: (accepted, the others)."""
    accepted: dict[int, Mapping[str, Any]] = {}
    pending = []
    for job in jobs:
        if job.get("type") != "ground_truth":
            continue
        task_id = job.get("task_id")
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            raise FailedPrecondition(f"CVAT listed a job without task_id: {job!r:.200}")
        if job.get("stage") == ACCEPTED_STAGE and job.get("state") == ACCEPTED_STATE:
            accepted[task_id] = job
        else:
            pending.append(job)
    return accepted, pending


def read(
    job: Mapping[str, Any],
    task_meta: Mapping[str, Any],
    job_meta: Mapping[str, Any],
    annotations: Mapping[str, Any],
    labels: Iterable[Mapping[str, Any]],
) -> GroundTruth:
    """The Ground Truth of ``job`` from its task's data/meta, its own data/meta
    (``included_frames``) and its annotations (``GET /api/jobs/{id}/annotations``)."""
    job_id, task_id = int(job["id"]), int(job["task_id"])
    where = f"ground truth job {job_id} of task {task_id}"
    if annotations.get("tracks"):
        raise FailedPrecondition(
            f"{where} holds tracks; draw its objects as shapes (a track's frames cannot be "
            "measured one by one)"
        )
    included = job_meta.get("included_frames")
    frames = task_meta.get("frames")
    if not isinstance(included, list) or not isinstance(frames, list):
        raise FailedPrecondition(f"CVAT's data/meta of {where} lists no included_frames")
    deleted = set(task_meta.get("deleted_frames") or []) | set(job_meta.get("deleted_frames") or [])
    names = {}
    for number in included:
        if isinstance(number, int) and 0 <= number < len(frames) and number not in deleted:
            name = frames[number].get("name") if isinstance(frames[number], dict) else None
            if isinstance(name, str) and name:
                names[number] = name
    label_names = {lb.get("id"): lb.get("name") for lb in labels}
    shapes: dict[str, list[dict[str, Any]]] = {name: [] for name in names.values()}
    for shape in annotations.get("shapes") or []:
        frame = shape.get("frame")
        if frame not in names or shape.get("type") not in _SHAPES:
            continue
        label = label_names.get(shape.get("label_id"))
        if not isinstance(label, str):
            raise FailedPrecondition(
                f"{where}: a shape on frame {frame} has label id {shape.get('label_id')}, "
                "which the task's labels lack"
            )
        shapes[names[frame]].append({**shape, "label": label})
    return GroundTruth(job_id, task_id, {k: tuple(v) for k, v in shapes.items()})


def instances(
    shapes: Iterable[Mapping[str, Any]], categories: Mapping[str, int], width: int, height: int
) -> tuple[Instance, ...]:
    """COCO instances of a frame's Ground Truth shapes (``categories``: label name ->
    COCO category id of the task's export)."""
    out = []
    for shape in shapes:
        label = str(shape["label"])
        if label not in categories:
            raise FailedPrecondition(
                f"ground truth label {label!r} is not a category of the task's export "
                f"({', '.join(categories)})"
            )
        bbox, area, segmentation = _geometry(shape, width, height)
        out.append(
            Instance(
                ann_id=int(shape.get("id") or 0),
                category_id=categories[label],
                bbox=bbox,
                area=area,
                is_crowd=False,
                segmentation=segmentation,
            )
        )
    return tuple(out)


def _geometry(
    shape: Mapping[str, Any], width: int, height: int
) -> tuple[tuple[float, float, float, float] | None, float, Any]:
    points = [float(p) for p in shape.get("points") or []]
    kind = shape["type"]
    if kind == "rectangle" and len(points) == 4:
        x1, y1, x2, y2 = points
        return (x1, y1, x2 - x1, y2 - y1), (x2 - x1) * (y2 - y1), []
    if kind == "polygon" and len(points) >= 6:
        xs, ys = points[0::2], points[1::2]
        area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs))))
        box = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
        return box, area, [points]
    if kind == "mask" and len(points) >= 5:
        bitmap = _cvat_mask(points, width, height)
        if bitmap is not None and bitmap.any():
            rle = coco_mask.encode(np.asfortranarray(bitmap.astype(np.uint8)))
            x, y, w, h = (float(v) for v in coco_mask.toBbox(rle))
            return (
                (x, y, w, h),
                float(bitmap.sum()),
                {"size": [height, width], "counts": rle["counts"]},
            )
    return None, 0.0, None  # nothing drawable: convert drops it and counts it


def _cvat_mask(points: list[float], width: int, height: int) -> np.ndarray | None:
    """CVAT's mask points (run lengths over the inclusive box, row by row, background
    first, then left, top, right, bottom) as a (height, width) bitmap; None if broken."""
    *runs, left, top, right, bottom = (int(p) for p in points)
    if not (0 <= left <= right < width and 0 <= top <= bottom < height) or min(runs, default=0) < 0:
        return None
    box_w, box_h = right - left + 1, bottom - top + 1
    if sum(runs) != box_w * box_h:
        return None
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    bitmap = np.zeros((height, width), dtype=bool)
    bitmap[top : bottom + 1, left : right + 1] = flat.reshape(box_h, box_w)
    return bitmap
