"""Checkpoint -> SavedModel (and TFLite), plus the reference outputs for the parity check.

Runs inside the worker process (TensorFlow). ``export_model`` rebuilds the model
from the experiment config twice:

1. a stock ``DetectionModule`` restored from the checkpoint gives the
   reference outputs on the parity images (its boxes normalised here in NumPy,
   independently of the export module's own normalisation);
2. a ``ServingModule`` restored from the same checkpoint is saved with both
   signatures and ``classes.csv`` as an asset (``module.saved_root``: the
   variables, the asset and the signatures, not the Keras model's layers).

Every restore asserts that each variable of the model was found in the
checkpoint; a checkpoint that cannot be read or does not fit the model fails
with ``FailedPrecondition`` naming the checkpoint and the cause.
"""

from __future__ import annotations

import gc
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from official.vision.serving import detection

from preannotate.classes import parse_classes
from preannotate.errors import FailedPrecondition, InvalidArgument
from services.converter import module as serving


@dataclass(frozen=True)
class ExportRequest:
    experiment: Path
    #: Checkpoint prefix on local disk (``.../ckpt-N``; ``.index`` and ``.data-*`` beside it).
    checkpoint: Path
    classes_csv: Path
    export_dir: Path
    images: list[Path]
    reference_out: Path
    tflite_out: Path | None = None


def read_classes(path: Path) -> list[str]:
    return parse_classes(Path(path).read_text())


def decode(path: Path) -> np.ndarray:
    """An image file as uint8 HxWx3, decoded the way the exported model decodes it."""
    data = tf.io.read_file(str(path))
    return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()


def input_size(params) -> list[int]:
    return [int(v) for v in params.task.model.input_size[:2]]


def check_classes(params, classes: list[str]) -> None:
    expected = int(params.task.model.num_classes)
    if expected != len(classes) + 1:
        raise InvalidArgument(
            f"the experiment has num_classes={expected} (background + {expected - 1}) but "
            f"classes.csv lists {len(classes)}: train the model again so both agree"
        )


def _restore(model, checkpoint: Path) -> None:
    """Read ``checkpoint`` into ``model`` (its variables built) and assert each was found."""
    try:
        status = tf.train.Checkpoint(model=model).read(str(checkpoint))
        status.assert_existing_objects_matched()
        status.expect_partial()  # the optimizer's slots are not needed to serve
    except (tf.errors.OpError, AssertionError, ValueError) as exc:
        text = str(exc).strip()
        first = text.splitlines()[0][:400] if text else type(exc).__name__
        raise FailedPrecondition(
            f"checkpoint {checkpoint.name} cannot be restored into the model of "
            f"experiment.yaml: {type(exc).__name__}: {first}"
        ) from exc


def normalise_reference(boxes: np.ndarray, image_info: np.ndarray) -> np.ndarray:
    """Pixels of the resized input -> 0..1 of the original image (NumPy, for the reference)."""
    scale = np.tile(image_info[:, 2:3, :], (1, 1, 2))
    size = np.tile(image_info[:, 0:1, :], (1, 1, 2))
    return np.clip(boxes / scale / size, 0.0, 1.0)


def reference_outputs(params, checkpoint: Path, images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of the restored checkpoint model (stock module), one image at a time."""
    size = input_size(params)
    module = detection.DetectionModule(
        params=serving.serving_params(params),
        batch_size=None,
        input_image_size=size,
        input_type="image_tensor",
    )
    run = module.inference_from_image_tensors.get_concrete_function(
        tf.TensorSpec([1, None, None, 3], tf.uint8)
    )
    _restore(module.model, checkpoint)  # tracing ``run`` built every variable
    results: dict[str, np.ndarray] = {}
    for i, image in enumerate(images):
        out = {k: v.numpy() for k, v in run(tf.constant(image[None])).items()}
        out["detection_boxes"] = normalise_reference(out["detection_boxes"], out["image_info"])
        for key, value in out.items():
            results[f"{i}/{key}"] = value
    del module, run
    gc.collect()
    return results


def save_savedmodel(
    params, checkpoint: Path, classes_csv: Path, export_dir: Path
) -> dict[str, Any]:
    """The SavedModel with both signatures and classes.csv in its assets."""
    module = serving.ServingModule(
        params, input_image_size=input_size(params), classes_csv=str(classes_csv)
    )
    started = time.monotonic()
    signatures = module.signatures()  # tracing builds every variable
    traced = time.monotonic() - started
    _restore(module.model, checkpoint)
    if export_dir.exists():
        shutil.rmtree(export_dir)
    tf.saved_model.save(serving.saved_root(module), str(export_dir), signatures=signatures)
    return {
        "trace_seconds": round(traced, 2),
        "save_seconds": round(time.monotonic() - started - traced, 2),
        "parameters": int(sum(np.prod(v.shape) for v in module.model.variables)),
    }


def save_tflite(params, checkpoint: Path, out: Path, work: Path) -> dict[str, Any]:
    """A float TFLite model of a single-stage detector (TFLite's detection post-processing op).

    Its input is one image already resized and normalised: float32 [1, H, W, 3]
    of (pixel - mean) / stddev (Model Garden's MEAN_RGB / STDDEV_RGB).
    """
    from official.vision.serving import export_tflite_lib

    if serving.family(params) != "retinanet":
        raise InvalidArgument(
            "a TFLite export exists for the single-stage model only "
            "(ssd-mobilenet-v2-coco); turn PREANNOTATE_CONVERT_TFLITE off for this model"
        )
    params = serving.serving_params(params)
    params.task.model.detection_generator.nms_version = "tflite"
    size = input_size(params)
    module = detection.DetectionModule(
        params=params, batch_size=1, input_image_size=size, input_type="tflite"
    )
    signatures = module.get_inference_signatures({"tflite": "serving_default"})
    _restore(module.model, checkpoint)
    staging = work / "tflite-savedmodel"
    tf.saved_model.save(module, str(staging), signatures=signatures)
    try:
        data = export_tflite_lib.convert_tflite_model(saved_model_dir=str(staging))
    except Exception as exc:  # the converter raises its own ConverterError family
        raise FailedPrecondition(f"TFLite conversion failed: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    out.write_bytes(data)
    return {"bytes": len(data), "input": {"dtype": "float32", "shape": [1, *size, 3]}}


def export_model(request: ExportRequest) -> dict[str, Any]:
    """Reference outputs, the SavedModel and (if asked) the TFLite model; returns facts."""
    from services.converter.experiment import load_params

    params = load_params(request.experiment)
    kind = serving.family(params)
    classes = read_classes(request.classes_csv)
    check_classes(params, classes)
    images = [decode(path) for path in request.images]

    started = time.monotonic()
    reference = reference_outputs(params, request.checkpoint, images)
    np.savez(request.reference_out, **reference)
    reference_seconds = time.monotonic() - started

    started = time.monotonic()
    saved = save_savedmodel(params, request.checkpoint, request.classes_csv, request.export_dir)
    export_seconds = time.monotonic() - started

    facts: dict[str, Any] = {
        "family": kind,
        "has_masks": serving.has_masks(params),
        "input_size": input_size(params),
        "num_classes": int(params.task.model.num_classes),
        "classes": classes,
        "max_detections": int(params.task.model.detection_generator.max_num_detections),
        "reference_seconds": round(reference_seconds, 2),
        "export_seconds": round(export_seconds, 2),
        **saved,
    }
    if request.tflite_out is not None and kind != "retinanet":
        facts["tflite"] = {"skipped": f"no TFLite export for {kind} models (single-stage only)"}
    elif request.tflite_out is not None:
        started = time.monotonic()
        facts["tflite"] = save_tflite(
            params, request.checkpoint, request.tflite_out, request.export_dir.parent
        )
        facts["tflite"]["seconds"] = round(time.monotonic() - started, 2)
    return facts
