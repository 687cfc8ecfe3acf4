"""The converter's handler: ``model.trained`` -> checked SavedModel in storage -> ``model.converted``.

For each ModelTrained:

1. check the event (namespace, model, version, prefix, checkpoint) before any work;
2. if ``<namespace>/serving/<name>/<version>/`` has a manifest, the work is
   done: emit the same ModelConverted again (rebuilt from that manifest);
3. otherwise copy the checkpoint, experiment.yaml and classes.csv into a
   private work folder, pick the parity images (the job's validation split,
   else synthetic ones), and in a worker process rebuild the model, restore
   the checkpoint, record its outputs and export the SavedModel (and TFLite);
4. in a second, fresh worker process load the export and run both signatures;
   compare with the checkpoint's outputs; any difference above the tolerance
   fails the job with the difference in the message, and nothing is uploaded;
5. upload (saved_model.pb after variables/ and assets/, the manifest last) and
   return ModelConverted.

The service process imports no TensorFlow; blocking storage work runs in threads.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from preannotate import topics
from preannotate.classes import parse_classes
from preannotate.errors import Cancelled, FailedPrecondition
from preannotate.handler import Context, Outcome
from preannotate.keys import check_name
from preannotate.storage import read_manifest
from preannotate.v1 import events_pb2
from services.converter import fetch, parity, process, publish, samples
from services.converter.settings import ConverterSettings

STAGE = events_pb2.JOB_STAGE_CONVERT
#: Signature names, in the order the event lists them.
SIGNATURES = ("serving_default", "serving_image_tensor")
#: Output key prefix of the check worker -> signature it ran.
CHECKED = {"bytes": "serving_default", "tensor": "serving_image_tensor"}


def _check_cancel(ctx: Context, what: str) -> None:
    if ctx.cancel_requested():
        raise Cancelled(f"cancelled by a user while {what}")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def _manifest(
    msg: events_pb2.ModelTrained,
    place: fetch.ModelPlace,
    files: fetch.ModelFiles,
    exported: dict[str, Any],
    checked: dict[str, Any],
    report: parity.ParityReport,
    images: samples.Samples,
    sizes: dict[str, int],
    tflite: bool,
) -> dict[str, Any]:
    return {
        "kind": publish.MANIFEST_KIND,
        "job_id": msg.job_id,
        "namespace": place.namespace,
        "model": {"namespace": place.namespace, "name": place.name, "version": place.version},
        "model_type": msg.model_type,
        "family": exported["family"],
        "model_prefix": place.model_prefix,
        "checkpoint": files.checkpoint_key,
        "steps": int(msg.steps),
        "dataset_prefix": msg.dataset_prefix,
        "serving_path": place.serving_prefix,
        "base_path": place.base_path,
        "signature_names": list(SIGNATURES),
        "signatures": checked["signatures"],
        "classes": files.classes,
        "classes_asset": "assets/classes.csv",
        "metrics": dict(msg.metrics),
        "input_size": exported["input_size"],
        "has_masks": exported["has_masks"],
        "max_detections": exported["max_detections"],
        "parameters": exported["parameters"],
        "boxes": "normalised [ymin, xmin, ymax, xmax] of the image as sent",
        "boxes_normalized": True,
        "parity": {**report.summary(), "images_from": images.source, "note": images.note},
        "sizes": sizes,
        "tflite_path": place.serving_prefix + publish.TFLITE if tflite else "",
        "tflite": {**exported.get("tflite", {}), **checked.get("tflite", {})},
        "timings": {
            "reference_seconds": exported["reference_seconds"],
            "export_seconds": exported["export_seconds"],
            "load_seconds": checked["load_seconds"],
            "check_run_seconds": checked["run_seconds"],
        },
    }


async def handle_model_trained(
    msg: events_pb2.ModelTrained, ctx: Context, *, settings: ConverterSettings
) -> Outcome:
    """Export the trained model for serving, check it, and announce it."""
    check_name(msg.job_id, "job id")
    place = fetch.place_of(msg, default_namespace=settings.namespace)
    found = await asyncio.to_thread(read_manifest, ctx.storage, place.serving_prefix)
    if found is not None:
        ctx.log.info("model already converted; emitting it again", prefix=place.serving_prefix)
        return Outcome.emit(topics.MODEL_CONVERTED, publish.converted_event(msg, found))

    async def status(text: str, details: dict[str, str] | None = None) -> None:
        await ctx.report(stage=STAGE, message=text, details=details)

    stop = ctx.stop_requested

    async def worker(command: str, job: dict[str, Any], folder: Path) -> dict[str, Any]:
        return await process.run_worker(
            command,
            job,
            folder,
            python=settings.python(),
            timeout=settings.convert_subprocess_timeout_seconds,
            threads=settings.convert_threads,
            cancelled=ctx.cancel_requested,
            stopping=stop,
        )

    work = Path(settings.convert_work_dir).resolve() / f"{msg.job_id}-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=False)
    started = time.monotonic()
    try:
        await status(f"fetching {place.model_prefix}")
        files = await asyncio.to_thread(fetch.fetch_model, ctx.storage, msg, place, work / "model")
        images = await asyncio.to_thread(
            samples.parity_samples,
            ctx.storage,
            place.namespace,
            msg.dataset_prefix,
            settings.convert_parity_images,
            int(msg.input_size) or 256,
            work / "images",
            settings.convert_parity_max_shard_bytes,
        )
        if images.note:
            ctx.log.info("parity check on synthetic images", reason=images.note)
        _check_cancel(ctx, "fetching the model")

        await status("exporting the SavedModel")
        export_dir = work / "export"
        tflite_out = work / publish.TFLITE if settings.convert_tflite else None
        exported = await worker(
            "export",
            {
                "experiment": files.experiment,
                "checkpoint": files.checkpoint,
                "classes_csv": files.classes_csv,
                "export_dir": export_dir,
                "images": images.paths,
                "reference_out": work / "reference.npz",
                "tflite_out": tflite_out,
            },
            work / "export-worker",
        )
        has_tflite = tflite_out is not None and tflite_out.exists()

        await status(f"checking the export in a fresh process on {len(images.paths)} images")
        checked = await worker(
            "check",
            {
                "export_dir": export_dir,
                "images": images.paths,
                "outputs_out": work / "exported.npz",
                "has_masks": exported["has_masks"],
                "tflite": tflite_out if has_tflite else None,
            },
            work / "check-worker",
        )
        if parse_classes(checked["classes_csv"]) != files.classes:
            raise FailedPrecondition(
                "the export's classes.csv asset does not list the model's classes"
            )
        reference = await asyncio.to_thread(_load_npz, work / "reference.npz")
        outputs = await asyncio.to_thread(_load_npz, work / "exported.npz")
        report = parity.compare(
            reference,
            outputs,
            images=len(images.paths),
            signatures=CHECKED,
            tolerance=settings.convert_parity_tolerance,
            masks=exported["has_masks"],
        )
        if not report.ok:
            raise FailedPrecondition(report.message())
        _check_cancel(ctx, "checking the export")

        await status(f"uploading to {place.serving_prefix}")
        sizes = publish.tree_sizes(export_dir)
        if has_tflite:
            sizes["tflite"] = tflite_out.stat().st_size
        manifest = _manifest(
            msg, place, files, exported, checked, report, images, sizes, has_tflite
        )
        manifest["timings"]["total_seconds"] = round(time.monotonic() - started, 2)
        written = await asyncio.to_thread(
            publish.upload_export,
            ctx.storage,
            place.serving_prefix,
            export_dir,
            tflite_out if has_tflite else None,
            manifest,
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)

    details = {
        "serving_path": place.serving_prefix,
        "signatures": ",".join(SIGNATURES),
        "parity": (
            f"{report.detections} detections on {report.images} {images.source} images, "
            f"max box diff {report.max_box_diff:.2g}, max score diff {report.max_score_diff:.2g}"
        ),
        "savedmodel_bytes": str(written["sizes"]["total"]),
    }
    if has_tflite:
        details["tflite_path"] = written["tflite_path"]
    await status(f"ready to serve: {place.serving_prefix}", details)
    ctx.log.info("model converted", **details)
    return Outcome.emit(topics.MODEL_CONVERTED, publish.converted_event(msg, written))
