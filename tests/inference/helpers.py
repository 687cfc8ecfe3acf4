"""Helpers of the inference tests: publishing fixture models as the converter does,
settings, a started ``InferenceApp``, and matching detections to ground truth."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from preannotate import keys, topics
from preannotate.bus import MemoryBus, TopicSpec
from preannotate.service import Resources
from preannotate.status import StatusWriter
from preannotate.storage import PrefixWriter, Storage
from preannotate.v1 import common_pb2, events_pb2
from services.inference.app import InferenceApp
from services.inference.backends.base import ImageInput
from services.inference.settings import InferenceSettings

CLASSES = ("circle", "square")
TOKEN = "secret-token"


def publish_model(
    storage: Storage,
    source: Path,
    *,
    namespace: str = "default",
    name: str = "shapes",
    version: int = 1,
    classes: tuple[str, ...] = CLASSES,
    has_masks: bool = False,
    manifest_classes: bool = True,
    job_id: str = "train-1",
    metrics: dict[str, float] | None = None,
) -> events_pb2.ModelConverted:
    """Copy a SavedModel folder to ``<ns>/serving/<name>/<version>/``, manifest last,
    and return the ``model.converted`` event the converter would send."""
    prefix = keys.serving_prefix(namespace, name, version)
    model_type = "maskrcnn" if has_masks else "ssd-mobilenet-v2-coco"
    with PrefixWriter(storage, prefix) as out:
        out.upload_tree(source)
        manifest: dict[str, Any] = {  # the keys the converter writes (and a few more)
            "kind": "serving",
            "job_id": job_id,
            "namespace": namespace,
            "model": {"namespace": namespace, "name": name, "version": version},
            "model_type": model_type,
            "serving_path": prefix,
            "base_path": keys.serving_base(namespace, name),
            "signature_names": ["serving_default", "image_tensor"],
            "signatures": {"serving_default": {}, "image_tensor": {}},
            "classes_asset": "assets/classes.csv",
            "has_masks": has_masks,
            "input_size": [128, 128],
            "metrics": {"AP": 0.5} if metrics is None else metrics,
        }
        if not has_masks:  # the fixture's Mask R-CNN gives pixels: let the service tell
            manifest["boxes"] = "normalised [ymin, xmin, ymax, xmax] of the image as sent"
        if manifest_classes:
            manifest["classes"] = list(classes)
        out.commit(manifest)
    return events_pb2.ModelConverted(
        job_id=job_id,
        namespace=namespace,
        model=common_pb2.ModelRef(namespace=namespace, name=name, version=version),
        model_type=model_type,
        serving_path=prefix,
        base_path=keys.serving_base(namespace, name),
        signatures=["serving_default", "image_tensor"],
        classes=list(classes),
        has_masks=has_masks,
        input_size=128,
    )


def make_settings(tmp: Path, **overrides: Any) -> InferenceSettings:
    values: dict[str, Any] = {
        "bus": "memory",
        "storage": "local",
        "storage_root": tmp / "storage",
        "inference_model_cache_dir": tmp / "cache",
        "cvat_token": TOKEN,
        "cvat_retry_backoff_seconds": 0.01,
        "inference_batch_size": 4,
        "inference_batch_wait_ms": 5,
        "inference_default_threshold": 0.5,
        "inference_grpc_port": 0,
        "nuclio_port": 0,
        # file:// targets are off by default; the tests' folders lie beside ``tmp``
        "inference_allow_file_targets": True,
        "inference_file_target_root": tmp.parent,
    }
    values.update(overrides)
    return InferenceSettings(**values)


async def start_app(
    settings: InferenceSettings, storage: Storage
) -> tuple[InferenceApp, MemoryBus]:
    bus = MemoryBus()
    await bus.ensure_topics([TopicSpec(t, 1) for t in topics.all_topics()])
    app = InferenceApp(settings)
    await app.start(
        Resources(bus=bus, storage=storage, status_writer=StatusWriter(bus, "inference"))
    )
    return app, bus


def decode(data: bytes) -> ImageInput:
    return ImageInput(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), data)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def iou(a: list[float], b: list[float]) -> float:
    """IoU of two [x1, y1, x2, y2] boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def truth_boxes(shapes: list[dict[str, Any]]) -> dict[int, list[tuple[str, list[float]]]]:
    """Ground truth of ``make_shapes_dataset(kind="rectangle")``: frame -> [(label, box)]."""
    out: dict[int, list[tuple[str, list[float]]]] = {}
    for s in shapes:
        out.setdefault(s["frame"], []).append((s["label"], list(s["points"])))
    return out
