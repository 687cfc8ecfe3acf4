"""A CVAT task (or one job of it) as an annotation run's target.

Frames are the task's (``data/meta``: ``size`` less ``deleted_frames``) that
an annotation job holds; with a job named, only that job's. Shapes go to the
job that holds their frame, with ``PATCH /api/jobs/{id}/annotations?action=create``:
rectangles for detectors, masks or polygons (``mask_shape``) for Mask R-CNN,
``source: "auto"`` and the score. Replace mode deletes each job's earlier
``source: "auto"`` shapes first. Each job's PATCH is durable when it returns
(``resumable``): ``write`` reports it to ``on_written`` before the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from preannotate.cvat import CvatClient, data_pending
from preannotate.errors import NotFound
from services.inference.shapes import cvat_shape
from services.inference.targets.base import FrameResult, OnWritten


def frame_jobs(jobs: Sequence[dict[str, Any]], only_job: int = 0) -> dict[int, int]:
    """Frame -> the annotation job that holds it (the first, where segments overlap)."""
    owners: dict[int, int] = {}
    picked = [j for j in jobs if j.get("type", "annotation") == "annotation"]
    if only_job:
        picked = [j for j in picked if j["id"] == only_job]
        if not picked:
            known = sorted(j["id"] for j in jobs)
            raise NotFound(f"job {only_job} is not an annotation job of this task; jobs: {known}")
    for job in sorted(picked, key=lambda j: (j["start_frame"], j["id"])):
        for frame in range(job["start_frame"], job["stop_frame"] + 1):
            owners.setdefault(frame, job["id"])
    return owners


class CvatTarget:
    """Reads a CVAT task's frames and writes shapes into its jobs."""

    kind = "cvat"
    resumable = True

    def __init__(
        self,
        client: CvatClient,
        task_id: int,
        *,
        job_id: int = 0,
        replace: bool = False,
        mask_shape: str = "mask",
        frame_quality: str = "original",
    ) -> None:
        self.client = client
        self.task_id = task_id
        self.job_id = job_id
        self.replace = replace
        self.mask_shape = mask_shape
        self.frame_quality = frame_quality
        self.describe = f"CVAT task {task_id}" + (f" job {job_id}" if job_id else "")
        self.owners: dict[int, int] = {}

    async def pending(self) -> str | None:
        return await data_pending(self.client, self.task_id)

    async def labels(self) -> list[dict[str, Any]]:
        return await self.client.labels(self.task_id)

    async def frames(self) -> list[int]:
        meta, jobs = await asyncio.gather(
            self.client.data_meta(self.task_id), self.client.jobs(self.task_id)
        )
        self.owners = frame_jobs(jobs, self.job_id)
        deleted = set(meta.get("deleted_frames") or ())
        return [f for f in range(int(meta["size"])) if f not in deleted and f in self.owners]

    async def prepare(self, frames: Sequence[int]) -> int:
        if not self.replace:
            return 0
        deleted = 0
        for job_id in sorted({self.owners[f] for f in frames}):
            data = await self.client.job_annotations(job_id)
            auto = [s for s in data.get("shapes", []) if s.get("source") == "auto"]
            if auto:
                deleted += await self.client.patch_shapes(job_id, "delete", auto)
        return deleted

    def frame_name(self, frame: int) -> str:
        return f"frame {frame}"

    async def fetch(self, frame: int) -> bytes:
        return await self.client.frame(self.task_id, frame, self.frame_quality)

    async def write(
        self, results: Sequence[FrameResult], on_written: OnWritten | None = None
    ) -> int:
        frames: dict[int, list[int]] = {}
        shapes: dict[int, list[dict[str, Any]]] = {}
        counts: dict[int, int] = {}
        for result in results:
            job_id = self.owners[result.frame]
            frames.setdefault(job_id, []).append(result.frame)
            for label_id, det in result.found:
                shape = cvat_shape(
                    det, result.frame, result.width, result.height, label_id, self.mask_shape
                )
                if shape is not None:
                    shapes.setdefault(job_id, []).append(shape)
                    counts[result.frame] = counts.get(result.frame, 0) + 1
        written = 0
        for job_id in sorted(frames):
            if shapes.get(job_id):
                written += await self.client.patch_shapes(job_id, "create", shapes[job_id])
            if on_written is not None:
                await on_written(frames[job_id], {f: counts.get(f, 0) for f in frames[job_id]})
        return written

    async def finish(self) -> None:
        return None  # every batch is in CVAT once written

    async def close(self) -> None:
        await self.client.close()
