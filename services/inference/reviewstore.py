"""The ranking of a CVAT task's frames by doubt, kept in storage after each run.

Every pre-annotation run of a CVAT task ranks its frames (``targets.reviewed``);
at its end the ranking is written here, once and whole, as JSON under
``keys.review_key`` (``<namespace>/reviews/<cvat server>/task-<id>.json``), and
the task's next run replaces it. ``preannotate review TASK`` and gRPC
``GetReview`` read it back, with a link per frame into CVAT's web UI
(``frame_link``). The record::

    {"schema": 1, "task_id", "cvat_url", "cvat_job_id" (the job the run was
     limited to; 0: the whole task), "namespace", "model": {"namespace",
     "name", "version"}, "job_id" (the run's), "threshold", "label_thresholds",
     "band" (review.WIDTH), "issues_per_job", "created_at" (UTC, ISO 8601),
     "frames_ranked" (frames the run predicted), "frames": [{"frame", "job"
     (CVAT job id), "doubt", "written" (detections at or above the threshold),
     "worst": {"label", "score", "box" [x1, y1, x2, y2 in pixels], "written"}
     or null, "issue_opened"}, ...]}

``frames`` lists the frames with some doubt, the most doubtful first; frames
the model was sure of are counted in ``frames_ranked`` only. Pure apart from
``save``/``load`` (blocking storage calls: run them in a thread).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from preannotate import keys
from preannotate.errors import NotFound
from preannotate.storage.base import Storage
from services.inference import review
from services.inference.targets.reviewed import RankedFrame

SCHEMA = 1


def frame_link(cvat_url: str, task_id: int, job_id: int, frame: int) -> str:
    """The CVAT web UI's page of ``job_id`` opened at ``frame`` (the task's frame
    number). CVAT's router serves a job at ``/tasks/<tid>/jobs/<jid>`` and its
    annotation page starts at the ``frame`` search parameter (docs/cvat.md, "Links
    into the web UI")."""
    return f"{cvat_url.rstrip('/')}/tasks/{task_id}/jobs/{job_id}?frame={frame}"


def frame_entry(item: RankedFrame, threshold: review.Cut) -> dict[str, Any]:
    """One ranked frame as the record holds it."""
    worst = item.doubt.worst
    entry: dict[str, Any] = {
        "frame": item.doubt.frame,
        "job": item.job,
        "doubt": round(item.doubt.doubt, 4),
        "written": item.doubt.written,
        "worst": None,
        "issue_opened": item.issue_opened,
    }
    if worst is not None:
        entry["worst"] = {
            "label": worst.label,
            "score": round(worst.score, 4),
            "box": [round(v, 1) for v in worst.pixel_box(item.width, item.height)],
            "written": worst.score >= review.cut_of(threshold)(worst.label),
        }
    return entry


def record(
    *,
    task_id: int,
    cvat_url: str,
    cvat_job_id: int,
    namespace: str,
    model: Mapping[str, Any],
    job_id: str,
    threshold: float,
    label_thresholds: Mapping[str, float],
    cut: review.Cut,
    issues_per_job: int,
    frames_ranked: int,
    ranked: Sequence[RankedFrame],
    at: datetime | None = None,
) -> dict[str, Any]:
    """The record of one run's ranking (module doc); ``cut``: the threshold of each
    label, as the run ranked against it."""
    when = (at or datetime.now(UTC)).astimezone(UTC)
    return {
        "schema": SCHEMA,
        "task_id": task_id,
        "cvat_url": cvat_url.rstrip("/"),
        "cvat_job_id": cvat_job_id,
        "namespace": namespace,
        "model": dict(model),
        "job_id": job_id,
        "threshold": round(threshold, 6),  # a float32 from protobuf: 0.93, not 0.9300000071
        "label_thresholds": {k: round(v, 6) for k, v in sorted(label_thresholds.items())},
        "band": review.WIDTH,
        "issues_per_job": issues_per_job,
        "created_at": when.isoformat().replace("+00:00", "Z"),
        "frames_ranked": frames_ranked,
        "frames": [frame_entry(item, cut) for item in ranked],
    }


def save(storage: Storage, data: Mapping[str, Any]) -> str:
    """Write a run's record whole, over the task's previous one; returns its key."""
    key = keys.review_key(data["namespace"], data["cvat_url"], int(data["task_id"]))
    storage.put(key, json.dumps(data, indent=1).encode())
    return key


def load(storage: Storage, namespace: str, cvat_url: str, task_id: int) -> dict[str, Any]:
    """The task's kept ranking; ``NotFound`` (saying what to run) when there is none."""
    key = keys.review_key(namespace, cvat_url, task_id)
    try:
        data = storage.get(key)
    except NotFound:
        raise NotFound(
            f"no ranking of CVAT task {task_id} in namespace {namespace!r}: pre-annotate the "
            f"task first (preannotate annotate --task {task_id} --model NAME, or an "
            "annotation.requested event); each run of a CVAT task keeps its ranking"
        ) from None
    return json.loads(data)
