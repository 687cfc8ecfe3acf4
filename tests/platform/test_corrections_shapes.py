"""The corrections measure on polygons and masks (preannotate/corrections.py): hand-made
shapes whose pixels are counted by hand (a pixel is in a shape when its centre is)."""

from __future__ import annotations

import numpy as np
import pytest

from preannotate.corrections import (
    Box,
    Corrections,
    Mask,
    Polygon,
    compare,
    compare_frame,
    from_cvat,
    iou,
)
from tests.standins.cvat.rle import decode_cvat_mask, encode_cvat_mask


def square(label: str, x: float, y: float, side: float, shape_id: int | None = None) -> Polygon:
    return Polygon(label, (x, y, x + side, y, x + side, y + side, x, y + side), shape_id)


def left_half(label: str, left: int) -> Mask:
    """A 10 x 10 mask box at (left, 0) whose left 5 columns are set: rows of
    5 on, 5 off after a first background run of 0 (50 pixels)."""
    return Mask(label, (0, *[5] * 20), left, 0, left + 9, 9)


def test_polygon_and_mask_pixels_counted_by_hand():
    # The square polygon covers the pixels 0..9 x 0..9, as the box does: 100 pixels.
    assert iou(square("cat", 0, 0, 10), Box("cat", 0, 0, 10, 10)) == 1.0
    # Triangle (0,0) (10,0) (0,10): centres with x + y + 1 < 10, i.e. x + y <= 8:
    # 1 + 2 + ... + 9 = 45 pixels (the diagonal x + y = 9 lies on the edge: out).
    triangle = Polygon("cat", (0, 0, 10, 0, 0, 10))
    assert triangle.raster.area == 45
    assert iou(triangle, Box("cat", 0, 0, 10, 10)) == pytest.approx(0.45)
    # An L: rows 0..4 full (50), rows 5..9 columns 0..4 (25): 75 pixels; concave.
    ell = Polygon("cat", (0, 0, 10, 0, 10, 5, 5, 5, 5, 10, 0, 10))
    assert iou(ell, Box("cat", 0, 0, 10, 10)) == pytest.approx(0.75)
    # The mask's 50 pixels: half the 10 x 10 box, all of its left half.
    assert iou(left_half("dog", 0), Box("dog", 0, 0, 10, 10)) == pytest.approx(0.5)
    assert iou(left_half("dog", 0), Box("dog", 0, 0, 5, 10)) == 1.0
    assert iou(left_half("dog", 0), square("dog", 0, 0, 5)) == pytest.approx(25 / 50)
    # Apart: 0, without rasterising.
    assert iou(square("cat", 0, 0, 10), left_half("cat", 20)) == 0.0


def test_a_hand_made_job_of_polygons_and_masks():
    proposed = {
        0: [
            square("cat", 0, 0, 10),  # reshaped to a triangle: IoU 45/100, moved
            left_half("dog", 20),  # relabelled cat, pixels unchanged
        ],
        1: [
            square("cat", 0, 0, 10),  # replaced by the box 0,0,10,10: another type, moved
            square("dog", 50, 50, 10),  # deleted: a false positive
        ],
        2: [square("cat", 30, 30, 10)],  # kept as is
    }
    final = {
        0: [Polygon("cat", (0, 0, 10, 0, 0, 10)), left_half("cat", 20)],
        1: [Box("cat", 0, 0, 10, 10)],
        2: [
            square("cat", 30, 30, 10),
            Mask("cat", (0, 16), 0, 0, 3, 3),  # drawn: a miss
        ],
    }
    got = compare(proposed, final, frames=range(3))
    assert got == Corrections(
        frames=3, proposed=5, final=5, deleted=1, drawn=1, moved=2, relabelled=1
    )
    assert (got.total, got.per_100_objects) == (5, 100.0)
    assert got.per_frame == pytest.approx(5 / 3)


def test_shape_ids_pair_a_polygon_dragged_far_as_moved():
    before = [square("cat", 0, 0, 10, shape_id=7)]
    after = [square("cat", 40, 40, 10, shape_id=7)]
    assert compare_frame(before, after) == Corrections(1, 1, 1, 0, 0, 1, 0)
    # Replaced (CVAT gives the new shape a new id): deleted and drawn.
    after = [Box("cat", 0, 0, 10, 10, shape_id=8)]
    assert compare_frame(before, after) == Corrections(1, 1, 1, 1, 1, 0, 0)


def test_cvat_shapes_of_each_type_are_read_and_others_refused():
    bitmap = np.zeros((6, 8), dtype=bool)
    bitmap[1:4, 2:5] = True
    bitmap[4, 3] = True
    points = encode_cvat_mask(bitmap)  # CVAT's format: runs..., left, top, right, bottom
    mask = from_cvat({"type": "mask", "points": points, "id": 3}, "cat")
    assert isinstance(mask, Mask) and mask.shape_id == 3 and mask.raster.area == 10
    pixels = np.zeros((6, 8), dtype=bool)
    r = mask.raster
    pixels[r.top : r.top + r.bitmap.shape[0], r.left : r.left + r.bitmap.shape[1]] = r.bitmap
    assert (pixels == decode_cvat_mask(points, 8, 6)).all()
    polygon = from_cvat({"type": "polygon", "points": [1, 2, 3, 2, 3, 4]}, "cat")
    assert polygon == Polygon("cat", (1.0, 2.0, 3.0, 2.0, 3.0, 4.0))
    assert from_cvat({"type": "rectangle", "points": [1, 2, 3, 4]}, "cat") == Box("cat", 1, 2, 3, 4)
    for bad in (
        {"type": "points", "points": [1, 2]},
        {"type": "ellipse", "points": [5, 5, 8, 8]},
        {"type": "polygon", "points": [1, 2, 3, 4]},
        {"type": "mask", "points": [0, 5, 0, 0, 1, 1]},  # 5 pixels in a 2 x 2 box
        {"type": "mask", "points": [0, 4, 0, 0, 1.5, 1]},
    ):
        with pytest.raises(ValueError):
            from_cvat(bad, "cat")
