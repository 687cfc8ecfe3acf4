"""A project's dataset: every frame of its completed CVAT jobs, from all its tasks.

A ``TaskAnnotated`` whose ``cvat`` names a project and no task (``task_id`` 0,
``project_id`` P: the gateway's retrains, ``services/gateway/retrain.py``) asks
for everything annotated in the project so far. CVAT can export a whole
project (``POST /api/projects/{id}/dataset/export``), but that export names
frames by file name only, and file names repeat across tasks, while the
evaluation set needs each frame's task (``services/trainer/evalset.py``). So:

1. list the project's completed annotation jobs (``GET /api/jobs?project_id=P&
   state=completed&type=annotation``, every page) and group their frame ranges
   by task;
2. export each of those tasks (the task export flow) and read its frame names
   (``GET /api/tasks/{id}/data/meta``);
3. keep the frames inside completed jobs (a job still being annotated is not
   ground truth), name each ``<task id>/<file name>``, and merge the tasks
   into one COCO export, which the usual conversion turns into one dataset.

Where a task has a CVAT Ground Truth job that is accepted (stage acceptance,
state completed) and holds shapes (``ground_truth``; listed with
``GET /api/jobs?project_id=P&type=ground_truth``), its frames join the export
(completed job or not) with the Ground Truth job's shapes in place of the
annotation jobs' ones, and they are the dataset's validation split
(``evaluation_frames``): the conversion puts them, and only them, in ``val``
(``splits.val.source`` "cvat-ground-truth") and never in ``train``. A project
without one keeps the split by file name (``split``).

The tasks of one project share its labels; tasks whose categories differ are
refused, naming both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from preannotate.errors import FailedPrecondition, InvalidArgument
from services.exporter import ground_truth as gt
from services.exporter.coco import CocoExport, ImageRecord


@dataclass(frozen=True)
class TaskPart:
    """One task of a project dataset: its archive and the frames to keep."""

    task_id: int
    archive: Path
    #: File names of the frames inside completed jobs.
    keep: frozenset[str]
    #: The task's accepted Ground Truth job with shapes, if any.
    ground_truth: gt.GroundTruth | None = None


def completed_ranges(jobs: Iterable[Mapping[str, Any]]) -> dict[int, list[tuple[int, int]]]:
    """Per task, the (start, stop) frame ranges of its completed jobs."""
    out: dict[int, list[tuple[int, int]]] = {}
    for job in jobs:
        if job.get("state") != "completed" or job.get("type", "annotation") != "annotation":
            continue
        task_id, start, stop = job.get("task_id"), job.get("start_frame"), job.get("stop_frame")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (task_id, start, stop)):
            raise FailedPrecondition(f"CVAT listed a job without task_id/start/stop: {job!r:.200}")
        out.setdefault(task_id, []).append((start, stop))
    return out


def is_video(meta: Mapping[str, Any]) -> bool:
    """A video task: its data/meta lists one media item for more frames."""
    frames, size = meta.get("frames"), meta.get("size")
    return isinstance(frames, list) and isinstance(size, int) and size > len(frames)


def frames_in(
    meta: Mapping[str, Any], ranges: list[tuple[int, int]], task_id: int
) -> frozenset[str]:
    """The file names of the task's frames inside ``ranges`` (from its data/meta)."""
    frames = meta.get("frames")
    if not isinstance(frames, list):
        raise FailedPrecondition(f"CVAT's data/meta of task {task_id} lists no frames")
    if is_video(meta):
        size = meta.get("size")
        raise FailedPrecondition(
            f"task {task_id} is a video ({size} frames, {len(frames)} media item): a "
            "project's retrain reads image tasks only; train on the task by itself"
        )
    deleted = set(meta.get("deleted_frames") or [])
    names = set()
    for start, stop in ranges:
        for number in range(start, stop + 1):
            if number in deleted or number >= len(frames):
                continue
            name = frames[number].get("name") if isinstance(frames[number], dict) else None
            if isinstance(name, str) and name:
                names.add(name)
    return frozenset(names)


def evaluation_frames(truths: Iterable[gt.GroundTruth]) -> frozenset[str]:
    """The Ground Truth frames of a project dataset, named as ``merge`` names them."""
    return frozenset(f"{t.task_id}/{name}" for t in truths for name in t.frames)


def merge(
    parts: list[tuple[int, CocoExport, frozenset[str]]],
    truths: Mapping[int, gt.GroundTruth] | None = None,
) -> CocoExport:
    """One export of the kept frames of every task, each named ``<task id>/<file name>``;
    a task's Ground Truth frames (``truths``, by task id) are kept too, with the
    Ground Truth job's shapes."""
    truths = truths or {}
    if not parts:
        raise FailedPrecondition("the project has no completed job to train on")
    first_task, first, _ = parts[0]
    names = [c.name for c in first.categories]
    images = []
    for task_id, export, keep in parts:
        theirs = [c.name for c in export.categories]
        if theirs != names:
            raise InvalidArgument(
                f"task {task_id} has the labels {theirs} and task {first_task} {names}: the "
                "tasks of a retrained project must share the project's labels"
            )
        truth_images = _truth_images(export, truths.get(task_id))
        for image in export.images:
            if image.file_name in truth_images:
                image = truth_images[image.file_name]
            elif image.file_name not in keep:
                continue
            images.append(replace(image, file_name=f"{task_id}/{image.file_name}"))
    if not images:
        raise FailedPrecondition("the project's completed jobs hold no frame of its exports")
    return CocoExport(first.categories, tuple(sorted(images, key=lambda i: i.file_name)))


def with_ground_truth(export: CocoExport, truth: gt.GroundTruth) -> CocoExport:
    """One task's export (``train --task``) with its Ground Truth frames labelled by the
    Ground Truth job's shapes; file names unchanged."""
    truth_images = _truth_images(export, truth)
    return replace(export, images=tuple(truth_images.get(i.file_name, i) for i in export.images))


def _truth_images(export: CocoExport, truth: gt.GroundTruth | None) -> dict[str, ImageRecord]:
    """The task's Ground Truth frames with the Ground Truth job's shapes, by file name."""
    if truth is None:
        return {}
    shapes = truth.frames
    missing = set(shapes) - {image.file_name for image in export.images}
    if missing:
        raise FailedPrecondition(
            f"ground truth job {truth.job_id} of task {truth.task_id} names frames its export "
            f"lacks: {sorted(missing)[:5]}"
        )
    categories = {c.name: c.coco_id for c in export.categories}
    return {
        image.file_name: replace(
            image,
            instances=gt.instances(shapes[image.file_name], categories, image.width, image.height),
        )
        for image in export.images
        if image.file_name in shapes
    }
