"""Masks from COCO segmentations: pycocotools' answers, independent truths, hostile input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from services.exporter.masks import (
    COORD_LIMIT,
    BadSegmentation,
    box_to_mask,
    decode_counts_string,
    mask_to_png,
    outline_limit,
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


def _compressed(mask: np.ndarray) -> dict:
    """COCO's string form, written by pycocotools itself."""
    rle = coco_mask.encode(np.asfortranarray(mask))
    return {"size": [mask.shape[0], mask.shape[1]], "counts": rle["counts"].decode()}


def _coco_polygons(polygons: list[list[float]], h: int = H, w: int = W) -> np.ndarray:
    return coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polygons, h, w)))


def _encode_counts(runs: list[int]) -> str:
    """COCO's string encoding of run lengths (as pycocotools' rleToString writes it)."""
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


# --- one mask from each of the three forms -------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_compressed_rle_round_trips_through_pycocotools(seed):
    mask = _blob(seed)
    rle = _compressed(mask)
    assert decode_counts_string(rle["counts"]) == _uncompressed(mask)["counts"]
    ours = rle_to_mask(rle, H, W)
    assert ours.dtype == np.uint8 and ours.flags["C_CONTIGUOUS"]
    assert np.array_equal(ours, mask)
    assert np.array_equal(segmentation_to_mask(rle, H, W), mask)


@pytest.mark.parametrize("seed", range(5))
def test_uncompressed_rle_round_trips(seed):
    mask = _blob(seed)
    rle = _uncompressed(mask)
    assert np.array_equal(rle_to_mask(rle, H, W), mask)
    assert np.array_equal(segmentation_to_mask(rle, H, W), mask)
    # The same pixels as pycocotools' own decoding of its own encoding.
    assert np.array_equal(
        rle_to_mask(rle, H, W), coco_mask.decode(coco_mask.encode(np.asfortranarray(mask)))
    )


def test_bytes_counts_are_read_like_a_string():
    mask = _blob(7)
    rle = coco_mask.encode(np.asfortranarray(mask))
    assert np.array_equal(rle_to_mask({"size": [H, W], "counts": rle["counts"]}, H, W), mask)


def test_own_encoder_agrees_with_pycocotools():
    # _encode_counts (used below to build hostile strings) writes what pycocotools writes.
    for seed in range(5):
        mask = _blob(seed)
        assert _encode_counts(_uncompressed(mask)["counts"]) == _compressed(mask)["counts"]


def test_polygon_rectangle_has_its_geometric_area():
    # COCO's polygon semantics: a 20 x 10 rectangle covers 200 pixels (Pillow, which
    # fills the outline too, gave 21 x 11 = 231).
    rect = [5.0, 4.0, 25.0, 4.0, 25.0, 14.0, 5.0, 14.0]
    mask = segmentation_to_mask([rect], H, W)
    assert mask.sum() == 200
    assert mask[4:14, 5:25].all() and mask.dtype == np.uint8
    assert np.array_equal(mask, _coco_polygons([rect]))


def test_polygon_matches_pycocotools_exactly():
    polygon = [5.0, 4.0, 40.0, 8.0, 30.0, 30.0, 8.0, 25.0]
    mask = polygons_to_mask([polygon], H, W)
    assert mask.flags["C_CONTIGUOUS"]
    assert np.array_equal(mask, _coco_polygons([polygon]))


def test_several_polygons_and_tiny_ones():
    polygons = [[1, 1, 5, 1, 5, 5, 1, 5], [20, 20, 21, 20], [30, 2, 40, 2, 35, 10]]
    mask = polygons_to_mask(polygons, H, W)
    assert mask[3, 3] == 1 and mask[5, 35] == 1 and mask[20, 20] == 0
    # The two-point polygon is skipped: the union of the other two, as pycocotools draws it.
    assert np.array_equal(mask, _coco_polygons([polygons[0], polygons[2]]))
    with pytest.raises(BadSegmentation, match="three or more points"):
        polygons_to_mask([[1, 1, 2, 2]], H, W)


def test_polygon_beyond_the_image_is_clipped():
    # A rectangle over the whole image and more: every pixel, nothing else.
    mask = polygons_to_mask([[-10.0, -5.0, W + 9.0, -5.0, W + 9.0, H + 4.0, -10.0, H + 4.0]], H, W)
    assert mask.shape == (H, W) and mask.all()
    # Half of it outside on the left: the part inside, as pycocotools clips it.
    half = [-10.0, 10.0, 10.0, 10.0, 10.0, 20.0, -10.0, 20.0]
    mask = polygons_to_mask([half], H, W)
    assert mask.sum() == 100
    assert np.array_equal(mask, _coco_polygons([half]))


def test_numeric_strings_in_polygons_are_read():
    mask = polygons_to_mask([["5", "4", "25", "4", "25", "14", "5", "14"]], H, W)
    assert mask.sum() == 200


# --- hostile or broken input: BadSegmentation, never a crash ------------------------------


def test_rle_that_does_not_cover_the_image_is_refused():
    with pytest.raises(BadSegmentation, match="cover 10 pixels"):
        rle_to_mask({"size": [H, W], "counts": [5, 5]}, H, W)
    with pytest.raises(BadSegmentation, match="differs from the image"):
        rle_to_mask({"size": [W, H], "counts": [H * W]}, H, W)
    with pytest.raises(BadSegmentation, match="cover 0 pixels"):
        rle_to_mask({"size": [H, W], "counts": []}, H, W)


def test_list_counts_past_the_image_are_refused():
    # pycocotools' rleDecode would write these runs past the end of its buffer.
    with pytest.raises(BadSegmentation, match=f"cover {H * W + 1} pixels"):
        rle_to_mask({"size": [H, W], "counts": [H * W, 1]}, H, W)
    with pytest.raises(BadSegmentation, match="cover"):
        rle_to_mask({"size": [H, W], "counts": [0, 10**9]}, H, W)


def test_string_counts_past_the_image_are_refused():
    runs = [H * W, 10**6]
    counts = _encode_counts(runs)
    assert decode_counts_string(counts) == runs
    with pytest.raises(BadSegmentation, match=f"cover {H * W + 10**6} pixels"):
        rle_to_mask({"size": [H, W], "counts": counts}, H, W)
    # Deltas that wrap to a total of height x width in 32 bits are still refused.
    wrapped = [0, 2**32 - 1, H * W + 1]
    with pytest.raises(BadSegmentation, match="cover"):
        rle_to_mask({"size": [H, W], "counts": _encode_counts(wrapped)}, H, W)


def test_negative_counts_are_refused():
    # The sum is right, but pycocotools would read -5 as 2**32 - 5 and write past the mask.
    runs = [0, H * W + 5, 0, -5]
    counts = _encode_counts(runs)
    assert decode_counts_string(counts) == runs
    with pytest.raises(BadSegmentation, match=">= 0"):
        rle_to_mask({"size": [H, W], "counts": counts}, H, W)
    with pytest.raises(BadSegmentation, match=">= 0"):
        rle_to_mask({"size": [H, W], "counts": runs}, H, W)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ("1" + chr(0x20 + 48), "middle of a count"),  # the last count says more follows
        ("1~", "bad character"),  # '~' is 126, past '0' + 63
        ("1 ", "bad character"),
        (chr(0x20 + 48) * 8 + "0", "longer than 7"),
        ("1é", "bad character"),
        ([1.5, H * W - 1.5], ">= 0"),
        ([True, H * W - 1], ">= 0"),
        (["3", H * W - 3], ">= 0"),
        (None, "list or a string"),
        (b"\xff\xfe", "not ASCII"),
    ],
)
def test_malformed_counts_are_refused(counts, message):
    with pytest.raises(BadSegmentation, match=message):
        rle_to_mask({"size": [H, W], "counts": counts}, H, W)


@pytest.mark.parametrize("size", [None, [H], ["a", W], [None, W], [float("nan"), W]])
def test_malformed_size_is_refused(size):
    with pytest.raises(BadSegmentation, match="size"):
        rle_to_mask({"size": size, "counts": [H * W]}, H, W)


@pytest.mark.parametrize(
    ("polygon", "message"),
    [
        ([1.0, 1.0, float("nan"), 5.0, 5.0, 5.0], "not finite"),
        ([1.0, 1.0, 9.0, float("inf"), 5.0, 5.0], "not finite"),
        ([1.0, 1.0, 9.0, 1.0, float("-inf"), 5.0], "not finite"),
        (["NaN", 1.0, 9.0, 1.0, 5.0, 5.0], "not finite"),
        ([1.0, 1.0, 9.0, 1.0, 5.0, 1e300], "beyond"),
        ([1.0, 1.0, 9.0, 1.0, 5.0, COORD_LIMIT + 1.0], "beyond"),
        ([1.0, 1.0, 9.0, 1.0, 5.0, 10**400], "not a number"),
        ([1.0, 1.0, "x", 1.0, 5.0, 5.0], "not a number"),
        ([1.0, 1.0, None, 1.0, 5.0, 5.0], "not a number"),
        ([1.0, 1.0, [2.0], 1.0, 5.0, 5.0], "not a number"),
        ([1.0, 1.0, 9.0, 1.0, 5.0], "flat list"),
        ({"x": 1}, "flat list"),
    ],
)
def test_bad_polygons_are_refused(polygon, message):
    with pytest.raises(BadSegmentation, match=message):
        segmentation_to_mask([polygon], H, W)
    # Even beside a good polygon.
    with pytest.raises(BadSegmentation, match=message):
        segmentation_to_mask([[1, 1, 5, 1, 5, 5], polygon], H, W)


def test_outline_longer_than_the_limit_is_refused():
    # A zigzag across the image: each edge is one image width long.
    edges = outline_limit(H, W) // W + 2
    zigzag = []
    for i in range(edges):
        zigzag += [0.0 if i % 2 else float(W), float(i % H)]
    with pytest.raises(BadSegmentation, match="outlines"):
        polygons_to_mask([zigzag], H, W)
    # A shape far outside the image but within COORD_LIMIT has a long closing edge only
    # when joined to one inside: a far small triangle alone is fine, and empty.
    far = [1e6, 1e6, 1e6 + 5, 1e6, 1e6, 1e6 + 5]
    assert polygons_to_mask([far], H, W).sum() == 0
    with pytest.raises(BadSegmentation, match="outlines"):
        polygons_to_mask([[1.0, 1.0, 1e6, 1.0, 1.0, 5.0]], H, W)


def test_image_too_large_for_32_bit_runs_is_refused():
    with pytest.raises(BadSegmentation, match="too large"):
        rle_to_mask({"size": [2**16, 2**16], "counts": [2**32]}, 2**16, 2**16)
    with pytest.raises(BadSegmentation, match="too large"):
        polygons_to_mask([[1, 1, 5, 1, 5, 5]], 2**16, 2**16)


# --- boxes, PNGs, empty segmentations -----------------------------------------------------


def test_box_mask_and_png_round_trip():
    mask = box_to_mask((10.0, 5.0, 4.0, 3.0), H, W)
    assert mask.sum() == 12 and mask[5:8, 10:14].all()
    png = mask_to_png(mask)
    back = np.asarray(Image.open(io.BytesIO(png)))
    assert back.shape == (H, W) and np.array_equal(back, mask)


def test_empty_segmentation_is_a_plain_box():
    assert segmentation_to_mask([], H, W) is None
    assert segmentation_to_mask({}, H, W) is None
    assert segmentation_to_mask(None, H, W) is None
    with pytest.raises(BadSegmentation):
        segmentation_to_mask("nonsense", H, W)
