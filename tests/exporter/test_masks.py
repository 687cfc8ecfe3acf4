"""Masks from COCO segmentations, checked against pycocotools (tests only)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from services.exporter.masks import (
    BadSegmentation,
    box_to_mask,
    decode_counts_string,
    mask_to_png,
    polygons_to_mask,
    rle_to_mask,
    segmentation_to_mask,
)

H, W = 37, 53


def _blob(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((H, W), dtype=np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, H - 8), rng.integers(0, W - 8)
        mask[y : y + rng.integers(2, 9), x : x + rng.integers(2, 9)] = 1
    return mask


def _uncompressed(mask: np.ndarray) -> dict:
    flat = mask.T.reshape(-1)  # column-major
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": [mask.shape[0], mask.shape[1]], "counts": counts}


@pytest.mark.parametrize("seed", range(5))
def test_compressed_rle_matches_pycocotools(seed):
    mask = _blob(seed)
    rle = coco_mask.encode(np.asfortranarray(mask))
    counts = rle["counts"].decode()
    assert decode_counts_string(counts) == _uncompressed(mask)["counts"]
    assert np.array_equal(rle_to_mask({"size": [H, W], "counts": counts}, H, W), mask)


@pytest.mark.parametrize("seed", range(5))
def test_uncompressed_rle(seed):
    mask = _blob(seed)
    assert np.array_equal(rle_to_mask(_uncompressed(mask), H, W), mask)


def test_rle_that_does_not_cover_the_image_is_refused():
    with pytest.raises(BadSegmentation, match="cover 10 pixels"):
        rle_to_mask({"size": [H, W], "counts": [5, 5]}, H, W)
    with pytest.raises(BadSegmentation, match="differs from the image"):
        rle_to_mask({"size": [W, H], "counts": [H * W]}, H, W)


def test_polygon_agrees_with_pycocotools():
    polygon = [5.0, 4.0, 40.0, 8.0, 30.0, 30.0, 8.0, 25.0]
    ours = polygons_to_mask([polygon], H, W)
    theirs = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects([polygon], H, W)))
    iou = (ours & theirs).sum() / (ours | theirs).sum()
    assert iou > 0.9


def test_several_polygons_and_tiny_ones():
    mask = polygons_to_mask(
        [[1, 1, 5, 1, 5, 5, 1, 5], [20, 20, 21, 20], [30, 2, 40, 2, 35, 10]], H, W
    )
    assert mask[3, 3] == 1 and mask[5, 35] == 1 and mask[20, 20] == 0
    with pytest.raises(BadSegmentation, match="three or more points"):
        polygons_to_mask([[1, 1, 2, 2]], H, W)


def test_box_mask_and_png_round_trip():
    mask = box_to_mask((10.0, 5.0, 4.0, 3.0), H, W)
    assert mask.sum() == 12 and mask[5:8, 10:14].all()
    png = mask_to_png(mask)
    back = np.asarray(Image.open(io.BytesIO(png)))
    assert back.shape == (H, W) and np.array_equal(back, mask)


def test_empty_segmentation_is_a_plain_box():
    assert segmentation_to_mask([], H, W) is None
    with pytest.raises(BadSegmentation):
        segmentation_to_mask("nonsense", H, W)
