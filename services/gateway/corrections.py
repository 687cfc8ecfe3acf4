"""The corrections a person made to a pre-annotation, measured when the job completes.

Two moments, both in the gateway (it starts the pre-annotation of new tasks and
hears the jobs complete):

1. *the proposal*: when a pre-annotation job the gateway started for a new task
   ends SUCCEEDED (followed in the job.status view), the task's shapes with
   ``source: auto`` (ours: ``services/inference/shapes.py``) are read from CVAT
   (``GET /api/tasks/{id}/annotations``) and kept with the model version that
   made them (``layout.create_proposal``, once per task);
2. *the correction*: when a job of that task turns ``completed``, its shapes
   (``GET /api/jobs/{id}/annotations``) are compared with the proposal's shapes
   on the job's frames (``preannotate.corrections``: CVAT keeps a shape's id when
   a person edits it, so counterparts pair by id) and the result is stored with
   the version (``layout.create_corrections``, once per CVAT job), where
   ``preannotate models`` adds it up.

Rectangles, polygons and masks (what box and Mask R-CNN models write; other
shape types, tracks and tags are not measured), compared by their own IoU
(``preannotate.corrections``). Each measured job moves the gateway's
corrections metrics (``services.gateway.metrics``). Left open: a pre-annotation whose
end the gateway did not see (it restarted meanwhile) has no proposal, and its
jobs are not measured; a person who edits the task before the run ends shows
up in the proposal. Blocking storage calls run in threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from preannotate import layout
from preannotate.corrections import TYPES, Corrections, Shape, compare, from_cvat
from preannotate.cvat.client import CvatClient
from preannotate.cvat.settings import CvatConnection, CvatSettings
from preannotate.storage import Storage
from preannotate.v1 import common_pb2, events_pb2
from services.gateway import metrics
from services.gateway.jobs import JobFactory
from services.gateway.policy import ProjectPolicy

log = structlog.get_logger(component="corrections")

#: ``(GET path, organization) -> the annotations`` CVAT answers.
ReadAnnotations = Callable[[str, str], Awaitable[dict[str, Any]]]


def cvat_annotations(settings: CvatSettings) -> ReadAnnotations:
    async def read(path: str, organization: str) -> dict[str, Any]:
        config = CvatConnection.from_settings(settings, organization)
        async with CvatClient(config) as client:
            answer = await client.request("GET", path)
        return answer if isinstance(answer, dict) else {}

    return read


def measured_shapes(annotations: dict[str, Any], *, auto_only: bool) -> list[dict[str, Any]]:
    """The shapes the measure reads (rectangles, polygons, masks), ours only if ``auto_only``."""
    shapes = annotations.get("shapes") or []
    return [
        s
        for s in shapes
        if isinstance(s, dict)
        and s.get("type") in TYPES
        and (not auto_only or s.get("source") == "auto")
    ]


def _by_frame(shapes: list[dict[str, Any]], frames: range) -> dict[int, list[Shape]]:
    out: dict[int, list[Shape]] = {}
    for shape in shapes:
        frame = shape.get("frame")
        if isinstance(frame, int) and frame in frames:
            out.setdefault(frame, []).append(from_cvat(shape, str(shape.get("label_id"))))
    return out


class CorrectionsDesk:
    """Keeps proposals and measures corrections (the module's two moments)."""

    def __init__(self, *, storage: Storage, jobs: JobFactory, read: ReadAnnotations) -> None:
        self.storage = storage
        self.jobs = jobs
        self.read = read
        self._followers: dict[str, asyncio.Task[None]] = {}

    def follow_annotation(
        self, policy: ProjectPolicy, job_id: str, task_id: int, model: common_pb2.ModelRef
    ) -> None:
        """Keep the proposal of ``job_id`` (pre-annotating ``task_id``) once it succeeds."""
        current = self._followers.get(job_id)
        if current is None or current.done():
            self._followers[job_id] = asyncio.create_task(
                self._after(policy, job_id, task_id, model)
            )

    async def _after(
        self, policy: ProjectPolicy, job_id: str, task_id: int, model: common_pb2.ModelRef
    ) -> None:
        last = None
        async for status in self.jobs.desk.view.watch(job_id):
            last = status
        try:
            if last is not None and last.state == events_pb2.JOB_STATE_SUCCEEDED:
                await self.keep_proposal(policy, job_id, task_id, model)
        except Exception as exc:  # this task's jobs go unmeasured; said here
            log.warning("proposal not kept", job_id=job_id, task=task_id, error=str(exc))
        finally:
            self._followers.pop(job_id, None)

    async def keep_proposal(
        self, policy: ProjectPolicy, job_id: str, task_id: int, model: common_pb2.ModelRef
    ) -> bool:
        annotations = await self.read(f"/api/tasks/{task_id}/annotations", policy.organization)
        shapes = [
            {k: s.get(k) for k in ("id", "frame", "label_id", "points", "type", "source")}
            for s in measured_shapes(annotations, auto_only=True)
        ]
        record = {
            "job_id": job_id,
            "task_id": task_id,
            "model": {"namespace": model.namespace, "name": model.name, "version": model.version},
            "shapes": shapes,
        }
        return await asyncio.to_thread(
            layout.create_proposal, self.storage, policy.namespace, model.name, task_id, record
        )

    async def job_completed(
        self, policy: ProjectPolicy, *, task_id: int, cvat_job: int, start: int, stop: int
    ) -> dict[str, Any] | None:
        """Measure and store the corrections of a completed job (None: no proposal)."""
        proposal = await asyncio.to_thread(
            layout.read_proposal, self.storage, policy.namespace, policy.model_name, task_id
        )
        if proposal is None:
            return None
        frames = range(start, stop + 1)
        final = await self.read(f"/api/jobs/{cvat_job}/annotations", policy.organization)
        measured = await asyncio.to_thread(  # masks and polygons are rasterised
            compare,
            _by_frame(proposal.get("shapes", []), frames),
            _by_frame(measured_shapes(final, auto_only=False), frames),
            frames,
        )
        version = int(proposal["model"]["version"])
        record = {
            "task_id": task_id,
            "cvat_job_id": cvat_job,
            "annotation_job_id": proposal.get("job_id", ""),
            **measured.as_dict(),
        }
        created = await asyncio.to_thread(
            layout.create_corrections,
            self.storage,
            policy.namespace,
            policy.model_name,
            version,
            cvat_job,
            record,
        )
        if created:  # once per CVAT job: a repeated delivery counts nothing
            await asyncio.to_thread(self._observe, policy, version, measured)
        log.info(
            "corrections measured",
            model=f"{policy.namespace}/{policy.model_name}/{version}",
            cvat_job=cvat_job,
            corrections=measured.total,
            per_100_objects=round(measured.per_100_objects, 2),
        )
        return record

    def _observe(self, policy: ProjectPolicy, version: int, measured: Corrections) -> None:
        records = layout.read_corrections(self.storage, policy.namespace, policy.model_name)
        version_total = Corrections.summed(records.get(version, []))
        metrics.observe_corrections(
            policy.namespace, policy.model_name, version, measured, version_total
        )

    async def close(self) -> None:
        tasks = list(self._followers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._followers.clear()
