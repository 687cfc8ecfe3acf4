"""maskrcnn from the trainer's checkpoint to a checked SavedModel with masks."""

from __future__ import annotations

import numpy as np
import pytest

from preannotate.storage import read_manifest
from tests.converter import images
from tests.converter.signatures import assert_same_detections

pytestmark = [pytest.mark.tf, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def loaded(mask_converted):
    import tensorflow as tf

    return tf.saved_model.load(str(mask_converted.export_dir))


def test_model_converted_event(mask_converted):
    event = mask_converted.event
    assert event.model_type == "maskrcnn" and event.has_masks
    assert event.serving_path == "default/serving/segmenter/1/"
    assert list(event.signatures) == ["serving_default", "serving_image_tensor"]
    assert list(event.classes) == ["rect", "ellipse"]
    assert event.input_size == 128
    assert event.tflite_path == ""  # TFLite is for the single-stage model only


def test_manifest_and_parity(mask_converted):
    storage, prefix = mask_converted.storage, mask_converted.event.serving_path
    manifest = read_manifest(storage, prefix)
    assert manifest["has_masks"] is True and manifest["family"] == "maskrcnn"
    assert "skipped" in manifest["tflite"] and "model.tflite" not in manifest["files"]
    for signature in ("serving_default", "serving_image_tensor"):
        masks = manifest["signatures"][signature]["outputs"]["detection_masks"]
        assert masks == {"dtype": "float32", "shape": [None, 20, 28, 28]}
    parity = manifest["parity"]
    assert parity["images_from"] == "validation"
    assert parity["detections"] == 120 and parity["max_mask_diff"] <= 1e-3


def test_masks_and_normalised_boxes_from_both_signatures(loaded):
    import tensorflow as tf

    data = images.encoded(seed=1)
    by_bytes = loaded.signatures["serving_default"](inputs=tf.constant(data))
    masks = by_bytes["detection_masks"].numpy()
    assert masks.shape == (3, 20, 28, 28) and masks.dtype == np.float32
    assert masks.min() >= 0.0 and masks.max() <= 1.0
    boxes = by_bytes["detection_boxes"].numpy()
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0 and boxes.max() > 0.1
    assert by_bytes["detection_classes"].dtype == tf.int32
    assert by_bytes["num_detections"].dtype == tf.int32
    for i, blob in enumerate(data):
        pixels = tf.io.decode_image(blob, channels=3, expand_animations=False)
        by_tensor = loaded.signatures["serving_image_tensor"](inputs=pixels[None])
        assert_same_detections(by_bytes, i, by_tensor, masks=True, tolerance=1e-4)


def test_classes_csv_travels_in_the_assets(loaded, mask_converted):
    from pathlib import Path

    text = Path(loaded.classes_file.asset_path.numpy().decode()).read_text()
    assert text.splitlines() == ["id,name", "1,rect", "2,ellipse"]
    assert (mask_converted.export_dir / "assets" / "classes.csv").read_text() == text
