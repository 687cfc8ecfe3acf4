"""The exporter's handler: ``task.annotated`` -> dataset in storage -> ``train.jobs.<pool>``.

For each TaskAnnotated:

1. check the event (job id, namespace, trainer pool) before any work;
2. if the job's dataset prefix has a manifest, the work is done: emit the same
   DatasetExported again (rebuilt from that manifest) and return;
3. otherwise fetch the archive (``source``), unpack it safely (``unpack``),
   convert it (``coco`` + ``convert``) in a private work folder, and upload it
   under ``<namespace>/datasets/<job_id>/`` with ``PrefixWriter``: anything an
   earlier, broken attempt left there is removed first, the manifest goes
   last, and on failure nothing stays;
4. return DatasetExported for ``train.jobs.<pool>``.

The whole task is exported even when the event names one job of it
(``cvat.job_id``): the dataset is everything annotated in the task so far.
An event naming a project and no task gets the frames of every completed job
of the project, each named ``<task id>/<file name>`` (``project``); where the
project's tasks have accepted CVAT Ground Truth jobs, their frames, with their
shapes, are the validation split and nothing else is (``ground_truth``). A task
by itself does the same with its own accepted Ground Truth job (file names
unchanged).
Blocking work (zip, images, storage) runs in threads; the conversion's
progress reaches job.status through ``preannotate.progress.ThreadReports``
(a report that cannot be written is logged and counted, and the export goes
on). An event that names no namespace is the service's (``settings.namespace``).
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from preannotate import keys, topics
from preannotate.errors import Cancelled, InvalidArgument
from preannotate.handler import Context, Outcome
from preannotate.progress import ThreadReports
from preannotate.storage import PrefixWriter, Storage, read_manifest
from preannotate.v1 import common_pb2, events_pb2
from services.exporter import project, source
from services.exporter.coco import read_export
from services.exporter.convert import ConvertOptions, ConvertResult, convert_export
from services.exporter.settings import ExporterSettings
from services.exporter.unpack import UnpackLimits, safe_unpack

STAGE = events_pb2.JOB_STAGE_EXPORT
MANIFEST_KIND = "dataset"
PROGRESS_EVERY_SECONDS = 2.0


def machine_type_for(msg: events_pb2.TaskAnnotated, settings: ExporterSettings) -> str:
    """The trainer pool of the job: the one asked for, else the default pool."""
    pools = settings.pools()
    machine = msg.training.machine_type or settings.default_machine_type
    if machine not in pools:
        raise InvalidArgument(
            f"machine type {machine!r} is unknown: use one of {', '.join(sorted(pools))} "
            "(PREANNOTATE_MACHINE_TYPES)"
        )
    return machine


def dataset_event(
    msg: events_pb2.TaskAnnotated, namespace: str, prefix: str, manifest: dict[str, Any]
) -> events_pb2.DatasetExported:
    """The DatasetExported for ``msg`` from its dataset's manifest (fresh or found)."""
    splits = manifest.get("splits", {})

    def counts(name: str) -> common_pb2.SplitCounts:
        split = splits.get(name, {})
        return common_pb2.SplitCounts(
            images=int(split.get("images", 0)),
            boxes=int(split.get("boxes", 0)),
            boxes_per_class={k: int(v) for k, v in split.get("boxes_per_class", {}).items()},
        )

    return events_pb2.DatasetExported(
        job_id=msg.job_id,
        namespace=namespace,
        cvat=msg.cvat,
        training=msg.training,
        dataset_prefix=prefix,
        classes=list(manifest.get("classes", [])),
        train=counts("train"),
        val=counts("val"),
        has_masks=bool(manifest.get("has_masks", False)),
    )


def _options(settings: ExporterSettings) -> ConvertOptions:
    return ConvertOptions(
        val_fraction=settings.export_val_fraction,
        keep_negatives=settings.export_keep_negatives,
        shard_max_bytes=settings.export_shard_max_bytes,
        shard_max_images=settings.export_shard_max_images,
    )


def _convert(
    archive: source.Archive,
    work: Path,
    settings: ExporterSettings,
    what: str,
    progress: Callable[[int, int], None] | None = None,
) -> ConvertResult:
    limits = UnpackLimits(settings.export_max_bytes, settings.export_max_files)
    unpacked = work / "unpacked"
    options = _options(settings)
    if archive.parts:  # a project: one folder per task, merged
        parts = []
        for part in archive.parts:
            folder = unpacked / str(part.task_id)
            safe_unpack(part.archive, folder, limits)
            parts.append(
                (part.task_id, read_export(folder, settings.export_max_image_pixels), part.keep)
            )
        truths = {p.task_id: p.ground_truth for p in archive.parts if p.ground_truth}
        export = project.merge(parts, truths)
        if truths:  # CVAT ground truth is the validation split, and only it
            options = replace(options, val_files=project.evaluation_frames(truths.values()))
    else:
        safe_unpack(archive.path, unpacked, limits)
        export = read_export(unpacked, settings.export_max_image_pixels)
        truth = archive.ground_truth
        if truth is not None:  # a task by itself with its accepted Ground Truth job
            export = project.with_ground_truth(export, truth)
            options = replace(options, val_files=frozenset(truth.frames))
    result = convert_export(export, work / "dataset", options, source=what, progress=progress)
    shutil.rmtree(unpacked, ignore_errors=True)
    return result


class _ConvertProgress:
    """The conversion's progress callback (worker thread): a report every few seconds."""

    def __init__(self, reports: ThreadReports) -> None:
        self.reports = reports
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_SECONDS and done < total:
            return
        self.last = now
        self.reports.send(
            message=f"converting: {done} of {total} images",
            progress=events_pb2.Progress(step=done, total=total),
        )


def _store(storage: Storage, prefix: str, folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    storage.delete_prefix(prefix)  # leftovers of an attempt that died without cleaning up
    with PrefixWriter(storage, prefix) as out:
        out.upload_tree(folder)
        return out.commit(manifest)


def _check_cancel(ctx: Context, what: str) -> None:
    if ctx.cancel_requested():
        raise Cancelled(f"cancelled by a user while {what}")


async def handle_task_annotated(
    msg: events_pb2.TaskAnnotated, ctx: Context, *, settings: ExporterSettings
) -> Outcome:
    """Export the task's annotations as a dataset and queue it for its trainer pool."""
    namespace = msg.namespace or settings.namespace
    prefix = keys.dataset_prefix(namespace, keys.check_name(msg.job_id, "job id"))
    machine = machine_type_for(msg, settings)
    topic = topics.train_jobs(machine)
    if not source.is_file_source(msg.cvat) and msg.cvat.task_id <= 0 and msg.cvat.project_id <= 0:
        raise InvalidArgument(
            f"task.annotated for job {msg.job_id} names no CVAT task id (nor project)"
        )

    found = await asyncio.to_thread(read_manifest, ctx.storage, prefix)
    if found is not None:
        ctx.log.info("dataset already exported; emitting it again", prefix=prefix)
        return Outcome.emit(topic, dataset_event(msg, namespace, prefix, found))

    async def status(text: str) -> None:
        await ctx.report(stage=STAGE, message=text)

    work = Path(settings.export_work_dir) / f"{msg.job_id}-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=False)
    try:
        await status("exporting the task's annotations")
        archive = await source.fetch_archive(
            msg.cvat, settings, work, on_status=status, cancelled=ctx.cancel_requested
        )
        _check_cancel(ctx, "exporting")
        await status(f"converting {archive.describe} to TFRecords")
        reports = ThreadReports(ctx, asyncio.get_running_loop(), stage=STAGE)
        try:
            result = await asyncio.to_thread(
                _convert,
                archive,
                work,
                settings,
                archive.describe,
                _ConvertProgress(reports),
            )
        finally:
            await reports.settle()
        _check_cancel(ctx, "converting")
        manifest = {
            "kind": MANIFEST_KIND,
            "job_id": msg.job_id,
            "namespace": namespace,
            "source": archive.source,
            "options": {
                "val_fraction": settings.export_val_fraction,
                "keep_negatives": settings.export_keep_negatives,
                "shard_max_bytes": settings.export_shard_max_bytes,
                "shard_max_images": settings.export_shard_max_images,
            },
            **result.summary(),
        }
        await status(f"uploading the dataset to {prefix}")
        written = await asyncio.to_thread(_store, ctx.storage, prefix, work / "dataset", manifest)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)

    train, val = result.splits["train"], result.splits["val"]
    details = {
        "classes": ",".join(result.classes),
        "train_images": str(train.images),
        "val_images": str(val.images),
        "boxes": str(train.boxes + val.boxes),
        "masks": "yes" if result.has_masks else "no",
    }
    if result.notes:
        details["export_notes"] = "; ".join(f"{k}: {v}" for k, v in sorted(result.notes.items()))
    await ctx.report(
        stage=STAGE,
        message=(
            f"dataset ready: {train.images} training and {val.images} validation images, "
            f"{len(result.classes)} classes"
        ),
        details=details,
    )
    ctx.log.info("dataset exported", prefix=prefix, **details)
    return Outcome.emit(topic, dataset_event(msg, namespace, prefix, written))
