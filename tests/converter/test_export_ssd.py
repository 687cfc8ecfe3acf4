"""ssd-mobilenet-v2-coco from the trainer's checkpoint to a checked SavedModel (and TFLite)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from preannotate import topics
from preannotate.storage import read_manifest
from preannotate.v1 import events_pb2
from services.converter.handlers import handle_model_trained
from tests.converter import images
from tests.converter.signatures import assert_same_detections
from tests.fakes import FakeContext

pytestmark = [pytest.mark.tf, pytest.mark.timeout(1800)]

OUTPUTS = {
    "detection_boxes": ("float32", 3),
    "detection_scores": ("float32", 2),
    "detection_classes": ("int32", 2),
    "num_detections": ("int32", 1),
}


@pytest.fixture(scope="module")
def loaded(ssd_converted):
    import tensorflow as tf

    return tf.saved_model.load(str(ssd_converted.export_dir))


def test_model_converted_event(ssd_converted):
    outcome, msg = ssd_converted.outcome, ssd_converted.msg
    assert [e.topic for e in outcome.emits] == [topics.MODEL_CONVERTED]
    event: events_pb2.ModelConverted = ssd_converted.event
    assert event.job_id == msg.job_id and event.namespace == "default"
    assert (event.model.name, event.model.version) == ("detector", 1)
    assert event.model_type == "ssd-mobilenet-v2-coco"
    assert event.serving_path == "default/serving/detector/1/"
    assert event.base_path == "default/serving/detector"
    assert list(event.signatures) == ["serving_default", "serving_image_tensor"]
    assert list(event.classes) == ["rect", "ellipse"]
    assert dict(event.metrics) == dict(msg.metrics)
    assert event.input_size == 128 and not event.has_masks
    assert event.tflite_path == "default/serving/detector/1/model.tflite"
    assert event.cvat.task_id == msg.cvat.task_id


def test_tf_serving_layout_and_manifest(ssd_converted):
    storage, prefix = ssd_converted.storage, ssd_converted.event.serving_path
    names = {key[len(prefix) :] for key in storage.list(prefix)}
    assert {
        "saved_model.pb",
        "variables/variables.index",
        "assets/classes.csv",
        "model.tflite",
        "manifest.json",
    } <= names
    assert any(n.startswith("variables/variables.data-") for n in names)
    manifest = read_manifest(storage, prefix)
    assert manifest["kind"] == "serving"
    assert manifest["model"] == {"namespace": "default", "name": "detector", "version": 1}
    assert manifest["checkpoint"] == ssd_converted.msg.checkpoint
    assert manifest["signature_names"] == ["serving_default", "serving_image_tensor"]
    assert manifest["signatures"]["serving_default"]["inputs"]["inputs"] == {
        "dtype": "string",
        "shape": [None],
    }
    assert manifest["signatures"]["serving_image_tensor"]["inputs"]["inputs"] == {
        "dtype": "uint8",
        "shape": [None, None, None, 3],
    }
    assert manifest["input_size"] == [128, 128] and manifest["has_masks"] is False
    assert manifest["boxes_normalized"] is True
    assert manifest["sizes"]["total"] > manifest["sizes"]["variables"] > 0
    assert set(manifest["files"]) == names - {"manifest.json"}
    parity = manifest["parity"]
    assert parity["images_from"] == "validation" and parity["images"] == 3
    # 3 images x 2 signatures x 20 detections, all matched.
    assert parity["detections"] == 120 and parity["cutoff_swaps"] == 0
    assert parity["max_box_diff"] <= 1e-3 and parity["max_score_diff"] <= 1e-3


def test_status_reports_the_steps(ssd_converted):
    reports = ssd_converted.ctx.reports
    assert all(r["stage"] == events_pb2.JOB_STAGE_CONVERT for r in reports)
    texts = [r["message"] for r in reports]
    assert texts[0].startswith("fetching") and texts[-1].startswith("ready to serve")
    assert any("fresh process" in t for t in texts)
    assert "120 detections on 3 validation images" in reports[-1]["details"]["parity"]


def test_both_signatures_with_their_outputs(loaded):
    import tensorflow as tf

    data = images.encoded()
    by_bytes = loaded.signatures["serving_default"](inputs=tf.constant(data))
    for name, (dtype, rank) in OUTPUTS.items():
        assert by_bytes[name].dtype.name == dtype and by_bytes[name].shape.rank == rank
    assert by_bytes["detection_boxes"].shape[:2] == [3, 20]
    assert "detection_masks" not in by_bytes
    # The same images one by one through the tensor signature give the same detections.
    for i, blob in enumerate(data):
        pixels = tf.io.decode_image(blob, channels=3, expand_animations=False)
        by_tensor = loaded.signatures["serving_image_tensor"](inputs=pixels[None])
        for name in OUTPUTS:
            assert by_tensor[name].dtype == by_bytes[name].dtype
        assert_same_detections(by_bytes, i, by_tensor, masks=False, tolerance=1e-5)


def test_boxes_are_normalised_to_the_image_as_sent(loaded):
    import tensorflow as tf

    out = loaded.signatures["serving_default"](inputs=tf.constant(images.encoded()))
    boxes = out["detection_boxes"].numpy()
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0
    assert boxes.max() > 0.1  # pixel boxes of 80-160 px images would be far above 1
    ymin, xmin, ymax, xmax = np.moveaxis(boxes, -1, 0)
    assert (ymax >= ymin).all() and (xmax >= xmin).all()
    classes = out["detection_classes"].numpy()
    assert set(np.unique(classes)) <= {1, 2}


def test_the_export_holds_the_signatures_and_variables_not_the_keras_layers(loaded):
    # Saving the Keras model too would store every layer's traced call functions,
    # which made loading four times slower (services/converter/module.py).
    assert not hasattr(loaded, "model")
    assert len(loaded.model_variables) > 100
    assert sorted(loaded.signatures) == ["serving_default", "serving_image_tensor"]


def test_classes_csv_travels_in_the_assets(loaded):
    from pathlib import Path

    text = Path(loaded.classes_file.asset_path.numpy().decode()).read_text()
    assert text.splitlines() == ["id,name", "1,rect", "2,ellipse"]


def test_tflite_model_runs(ssd_converted):
    import tensorflow as tf

    path = ssd_converted.export_dir / "model.tflite"
    interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner()
    out = runner(inputs=np.zeros([1, 128, 128, 3], np.float32))
    assert {"detection_boxes", "detection_scores", "detection_classes", "num_detections"} <= set(
        out
    )
    manifest = read_manifest(ssd_converted.storage, ssd_converted.event.serving_path)
    assert manifest["tflite"]["input"] == {"dtype": "float32", "shape": [1, 128, 128, 3]}
    assert manifest["sizes"]["tflite"] == path.stat().st_size


def test_redelivery_with_a_manifest_re_emits_without_work(ssd_converted):
    storage, prefix = ssd_converted.storage, ssd_converted.event.serving_path
    before = {key: (storage.root / key).stat().st_mtime_ns for key in storage.list(prefix)}
    ctx = FakeContext(storage)
    outcome = asyncio.run(
        handle_model_trained(ssd_converted.msg, ctx, settings=ssd_converted.settings)
    )
    assert outcome.emits == ssd_converted.outcome.emits
    assert ctx.reports == []
    assert ctx.log.lines and "already converted" in ctx.log.lines[0][1]
    after = {key: (storage.root / key).stat().st_mtime_ns for key in storage.list(prefix)}
    assert after == before
    work = ssd_converted.settings.convert_work_dir
    assert not work.exists() or list(work.iterdir()) == []
