"""Detections to CVAT shapes and Nuclio answers; raw outputs to detections."""

from __future__ import annotations

import numpy as np
import pytest
from cvat_sdk.masks import decode_mask

from preannotate.errors import FailedPrecondition
from services.inference.backends.base import RawOutput, split_outputs
from services.inference.postprocess import Detected, detections, normalised_boxes, paste_mask
from services.inference.registry import ModelEntry
from services.inference.shapes import (
    cvat_mask_points,
    cvat_shape,
    mask_runs,
    nuclio_item,
    outline,
    to_proto,
)
from tests.standins.cvat import decode_cvat_mask

MODEL = ModelEntry("default", "m", 1, ("circle", "square"))


def _disc(h=40, w=60, cx=30, cy=20, r=12) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r


@pytest.mark.parametrize(
    "mask",
    [
        np.array([[1, 1], [0, 1]], bool),
        np.array([[0, 0, 1], [1, 1, 1]], bool),
        np.zeros((3, 4), bool),
        np.ones((2, 5), bool),
        _disc(),
    ],
)
def test_cvat_mask_points_decode_with_cvat_sdk_and_the_standin(mask):
    left, top = 7, 3
    box = (left, top, left + mask.shape[1] - 1, top + mask.shape[0] - 1)
    points = cvat_mask_points(mask, box)
    assert sum(points[:-4]) == mask.size
    full = decode_mask(points, image_width=80, image_height=50)
    assert np.array_equal(full[top : box[3] + 1, left : box[2] + 1], mask)
    assert full.sum() == mask.sum()
    assert np.array_equal(decode_cvat_mask(points, 80, 50), full)


def test_runs_start_with_background():
    assert mask_runs(np.array([[True, False]])) == [0, 1, 1]
    assert mask_runs(np.array([[False, False, True]])) == [2, 1]


def test_outline_follows_the_mask():
    mask = _disc()
    points = outline(mask, left=100, top=50)
    xs, ys = np.array(points[0::2]), np.array(points[1::2])
    assert len(points) >= 16
    assert 100 + 17 <= xs.min() <= 100 + 19 and 100 + 41 <= xs.max() <= 100 + 43
    assert 50 + 7 <= ys.min() <= 50 + 9 and 50 + 31 <= ys.max() <= 50 + 33
    assert outline(np.zeros((4, 4), bool), 0, 0) == []


def test_a_mask_too_thin_to_outline_gets_the_rectangle_around_its_pixels():
    dot = np.zeros((4, 6), bool)
    dot[2, 3] = True
    assert outline(dot, left=10, top=20) == [13, 22, 14, 22, 14, 23, 13, 23]
    line = np.zeros((4, 6), bool)
    line[1, 1:5] = True  # one row: its contour has no area
    assert outline(line, left=0, top=0) == [1, 1, 5, 1, 5, 2, 1, 2]


def test_rectangle_shape_in_pixels_with_source_and_score():
    det = Detected("square", 2, 0.876543, (0.25, 0.5, 0.75, 1.0))
    shape = cvat_shape(det, frame=4, width=200, height=100, label_id=11, kind="rectangle")
    assert shape["points"] == [50.0, 50.0, 150.0, 100.0]
    assert shape["type"] == "rectangle" and shape["frame"] == 4 and shape["label_id"] == 11
    assert shape["source"] == "auto" and shape["score"] == 0.8765


def test_mask_and_polygon_shapes_and_nuclio_mask_item():
    mask = _disc(h=25, w=25, cx=12, cy=12, r=11)
    det = Detected("circle", 1, 0.9, (0.1, 0.1, 0.5, 0.5), mask=mask, mask_box=(10, 20, 34, 44))
    as_mask = cvat_shape(det, 0, 100, 100, 5, "mask")
    assert as_mask["type"] == "mask"
    full = decode_mask(as_mask["points"], image_width=100, image_height=100)
    assert np.array_equal(full[20:45, 10:35], mask)
    as_polygon = cvat_shape(det, 0, 100, 100, 5, "polygon")
    assert as_polygon["type"] == "polygon" and len(as_polygon["points"]) >= 6

    item = nuclio_item(det, 100, 100)
    assert item["type"] == "mask" and item["label"] == "circle"
    assert float(item["confidence"]) == pytest.approx(0.9)
    *flat, xtl, ytl, xbr, ybr = item["mask"]
    assert (xtl, ytl, xbr, ybr) == (10, 20, 34, 44)
    # What CVAT's lambda manager does with it: the flat box pixels, row by row.
    assert len(flat) == (xbr - xtl + 1) * (ybr - ytl + 1)
    assert np.array_equal(np.array(flat).reshape(ybr - ytl + 1, xbr - xtl + 1), mask)
    assert len(item["points"]) >= 6

    rect = nuclio_item(Detected("square", 2, 0.5, (0.0, 0.5, 0.5, 1.0)), 80, 40)
    assert rect == {
        "label": "square",
        "confidence": "0.5",
        "attributes": [],
        "type": "rectangle",
        "points": [0.0, 20.0, 40.0, 40.0],
    }
    proto = to_proto(det)
    assert (proto.mask.width, proto.mask.height) == (25, 25)
    assert proto.mask.data == mask.astype(np.uint8).tobytes()


def test_pixel_boxes_are_mapped_back_with_image_info():
    # Mask R-CNN style: a 160x120 image resized by 0.8 to 128x96; box in those pixels.
    info = np.array([[120, 160], [96, 128], [0.8, 0.8], [0, 0]], np.float32)
    raw = RawOutput(
        boxes=np.array([[8.0, 16.0, 48.0, 64.0]]),
        scores=np.array([0.9]),
        classes=np.array([2]),
        image_info=info,
    )
    boxes = normalised_boxes(raw, MODEL)
    assert boxes[0] == pytest.approx([10 / 120, 20 / 160, 60 / 120, 80 / 160])
    found = detections(raw, MODEL, 160, 120, threshold=0.5)
    assert found[0].label == "square"
    assert found[0].pixel_box(160, 120) == pytest.approx((20, 10, 80, 60))
    assert detections(raw, MODEL, 160, 120, threshold=0.95) == []
    with pytest.raises(FailedPrecondition, match="image_info"):
        normalised_boxes(RawOutput(raw.boxes, raw.scores, raw.classes), MODEL)


def test_masks_are_pasted_onto_the_box_and_empty_ones_dropped():
    probs = np.zeros((28, 28), np.float32)
    probs[7:21, 7:21] = 1.0
    mask, box = paste_mask(probs, (0.1, 0.2, 0.5, 0.6), 100, 50)
    assert box == (10, 10, 49, 29)
    assert mask.shape == (20, 40)
    assert mask[10, 20] and not mask[0, 0]
    assert paste_mask(np.zeros((28, 28)), (0.1, 0.2, 0.5, 0.6), 100, 50) is None


def test_split_outputs_trims_to_num_detections():
    outputs = {
        "detection_boxes": np.zeros((2, 5, 4), np.float32),
        "detection_scores": np.ones((2, 5), np.float32),
        "detection_classes": np.full((2, 5), 1.0, np.float32),
        "num_detections": np.array([3, 0]),
    }
    first, second = split_outputs(outputs, 2, "m")
    assert first.boxes.shape == (3, 4) and first.classes.dtype == np.int64
    assert second.scores.shape == (0,)
    with pytest.raises(FailedPrecondition, match="detection_scores"):
        split_outputs({"detection_boxes": outputs["detection_boxes"]}, 2, "m")
