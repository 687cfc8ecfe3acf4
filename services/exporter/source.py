"""Where a task's COCO 1.0 archive comes from: CVAT, or a local file.

``msg.cvat.url``:

- empty, or the configured ``PREANNOTATE_CVAT_URL`` (same scheme, host and
  port): CVAT's export flow (``preannotate.cvat.export``) with the configured
  token; a message that names another CVAT is refused, so the token never
  travels to a server nobody configured;
- ``file:///path/export.zip``: a zip in CVAT's COCO 1.0 layout on this
  machine (the quickstart's path, data that comes from no CVAT server);
  off by default, allowed while ``PREANNOTATE_EXPORT_ALLOW_FILE_IMPORT`` is on
  (the embedded mode), and only under ``PREANNOTATE_EXPORT_FILE_IMPORT_ROOT``
  (required then). A refusal says the same whether the file exists or not.

Either way the handler gets a zip path and treats it the same: safe unpack,
then conversion. A message naming a CVAT project and no task (``task_id`` 0,
``project_id`` set) gets one archive per task with completed jobs or an
accepted Ground Truth job, and those Ground Truth jobs' frames and shapes
(``Archive.parts``, ``services.exporter.project``, ``ground_truth``). A task by
itself (``train --task``) brings its own accepted Ground Truth job, if it has
one with shapes and is not a video (``Archive.ground_truth``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preannotate.cvat import connect, file_ref_path, is_file_ref
from preannotate.cvat.client import CvatClient
from preannotate.cvat.export import ExportLimits, StatusCallback, export_task
from preannotate.errors import FailedPrecondition, InvalidArgument, NotFound
from preannotate.v1 import common_pb2
from services.exporter import ground_truth as gt
from services.exporter.project import TaskPart, completed_ranges, frames_in, is_video
from services.exporter.settings import ExporterSettings


@dataclass(frozen=True)
class Archive:
    path: Path
    #: For the manifest: {"kind": "cvat"|"file", ...}.
    source: dict[str, str | int]
    #: For messages: "CVAT task 12" or "file /data/export.zip".
    describe: str
    #: A project's tasks (``path`` is then their folder): merged by ``project.merge``.
    parts: tuple[TaskPart, ...] = ()
    #: One task's accepted Ground Truth job with shapes (``project.with_ground_truth``).
    ground_truth: gt.GroundTruth | None = None


def export_limits(settings: ExporterSettings) -> ExportLimits:
    return ExportLimits(
        timeout=settings.cvat_export_timeout_seconds,
        poll_interval=settings.cvat_poll_interval_seconds,
        max_archive_bytes=settings.export_max_archive_bytes,
    )


def is_file_source(cvat: common_pb2.CvatRef) -> bool:
    return is_file_ref(cvat.url)


def is_project_source(cvat: common_pb2.CvatRef) -> bool:
    """A CVAT project, not a task: everything annotated in it so far."""
    return not is_file_source(cvat) and cvat.task_id <= 0 and cvat.project_id > 0


def local_archive(url: str, settings: ExporterSettings) -> Path:
    """The zip a ``file://`` URL names, once it passes the settings' rules."""
    if not settings.export_allow_file_import:
        raise InvalidArgument(
            f"{url!r}: importing local files is off in this deployment "
            "(PREANNOTATE_EXPORT_ALLOW_FILE_IMPORT); name a CVAT task instead"
        )
    resolved = file_ref_path(
        url, settings.export_file_import_root, "PREANNOTATE_EXPORT_FILE_IMPORT_ROOT"
    )
    if not resolved.is_file():
        raise NotFound(f"{url!r}: no such file")
    size = resolved.stat().st_size
    if size > settings.export_max_archive_bytes:
        raise InvalidArgument(
            f"{url!r} is {size} bytes, more than the limit of {settings.export_max_archive_bytes} "
            "(PREANNOTATE_EXPORT_MAX_ARCHIVE_BYTES)"
        )
    return resolved


async def fetch_archive(
    cvat: common_pb2.CvatRef,
    settings: ExporterSettings,
    work: Path,
    *,
    on_status: StatusCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Archive:
    """The task's archive on local disk (downloaded into ``work`` when from CVAT)."""
    if is_file_source(cvat):
        path = local_archive(cvat.url, settings)
        return Archive(path, {"kind": "file", "url": cvat.url}, f"file {path}")
    if is_project_source(cvat):
        return await fetch_project(cvat, settings, work, on_status=on_status, cancelled=cancelled)
    task_id = cvat.task_id
    unused: list[str] = []
    async with connect(settings, cvat) as client:
        path = await export_task(
            client,
            task_id,
            work / "export.zip",
            export_limits(settings),
            on_status=on_status,
            cancelled=cancelled,
        )
        listed = await client.paged("/api/jobs", {"task_id": task_id, "type": "ground_truth"})
        accepted, pending = gt.split_jobs(listed)
        unused += [f"{j.get('id')} (not accepted yet)" for j in pending]
        truth = None
        if task_id in accepted:
            meta = await client.data_meta(task_id)
            if is_video(meta):
                unused.append(f"{accepted[task_id].get('id')} (a video task)")
            else:
                truth = await _usable_ground_truth(client, accepted[task_id], meta, unused)
    config = client.config
    source: dict[str, str | int] = {"kind": "cvat", "url": config.url, "task_id": task_id}
    _ground_truth_source(source, [truth.job_id] if truth else [], unused)
    if config.organization:
        source["organization"] = config.organization
    describe = f"CVAT task {task_id}"
    describe += f" (ground truth job {truth.job_id})" if truth else ""
    return Archive(path, source, describe, ground_truth=truth)


async def fetch_project(
    cvat: common_pb2.CvatRef,
    settings: ExporterSettings,
    work: Path,
    *,
    on_status: StatusCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Archive:
    """The archives of every task of the project with completed jobs or an accepted
    Ground Truth job, the frames of those jobs, and the Ground Truth
    (``services.exporter.project``, ``ground_truth``)."""
    project = cvat.project_id
    params = {"project_id": project, "state": "completed", "type": "annotation"}
    parts = []
    unused: list[str] = []
    async with connect(settings, cvat) as client:
        jobs = await client.paged("/api/jobs", params)
        ranges = completed_ranges(jobs)
        if not ranges:
            raise FailedPrecondition(
                f"CVAT project {project} has no completed job yet: nothing to train on"
            )
        listed = await client.paged("/api/jobs", {"project_id": project, "type": "ground_truth"})
        accepted, pending = gt.split_jobs(listed)
        unused += [f"{j.get('id')} (not accepted yet)" for j in pending]
        for task_id in sorted(set(ranges) | set(accepted)):
            if on_status is not None:
                await on_status(f"exporting task {task_id} of CVAT project {project}")
            path = await export_task(
                client,
                task_id,
                work / f"export-{task_id}.zip",
                export_limits(settings),
                on_status=on_status,
                cancelled=cancelled,
            )
            meta = await client.data_meta(task_id)
            truth = None
            if task_id in accepted:
                truth = await _usable_ground_truth(client, accepted[task_id], meta, unused)
            keep = frames_in(meta, ranges.get(task_id, []), task_id)
            parts.append(TaskPart(task_id, path, keep, truth))
    config = client.config
    source: dict[str, str | int] = {
        "kind": "cvat",
        "url": config.url,
        "project_id": project,
        "tasks": ",".join(str(p.task_id) for p in parts),
        "completed_jobs": len(jobs),
    }
    used = [p.ground_truth.job_id for p in parts if p.ground_truth]
    _ground_truth_source(source, used, unused)
    if config.organization:
        source["organization"] = config.organization
    describe = f"CVAT project {project} ({len(jobs)} completed jobs in {len(parts)} tasks"
    describe += f", ground truth jobs {source['ground_truth_jobs']})" if used else ")"
    return Archive(work, source, describe, tuple(parts))


def _ground_truth_source(source: dict[str, str | int], used: list[int], unused: list[str]) -> None:
    """The manifest's ``source`` fields on Ground Truth jobs: those used, those not and why."""
    if used:
        source["ground_truth_jobs"] = ",".join(map(str, used))
    if unused:
        source["ground_truth_jobs_unused"] = ", ".join(unused)


async def _usable_ground_truth(
    client: CvatClient, job: Mapping[str, Any], task_meta: Mapping[str, Any], unused: list[str]
) -> gt.GroundTruth | None:
    """An accepted Ground Truth job's frames and shapes, as CVAT answers them; None
    (and the reason in ``unused``) when it holds no shape."""
    job_id, task_id = job["id"], job["task_id"]
    job_meta = await client.request("GET", f"/api/jobs/{job_id}/data/meta")
    annotations = await client.job_annotations(job_id)
    labels = await client.labels(task_id)
    truth = gt.read(job, task_meta, job_meta, annotations, labels)
    if not truth.shapes:
        unused.append(f"{truth.job_id} (no shapes)")
        return None
    return truth
