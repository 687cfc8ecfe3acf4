"""CVAT's mask encoding and COCO's uncompressed RLE, both ways.

CVAT stores a ``mask`` shape as ``points = [run lengths..., left, top, right,
bottom]``: the runs cover the box ``left..right`` x ``top..bottom`` (inclusive)
row by row, starting with a run of background (possibly 0). COCO's
uncompressed RLE (what datumaro writes for ``iscrowd: 1``) runs over the whole
image column by column, also starting with background.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class MaskError(ValueError):
    """Mask points that do not describe a mask on the given frame."""


def _as_int(value: float) -> int:
    if isinstance(value, bool) or not float(value).is_integer():
        raise MaskError(f"mask points must be whole numbers, got {value!r}")
    return int(value)


def decode_cvat_mask(points: Sequence[float], width: int, height: int) -> np.ndarray:
    """Return the (height, width) bool bitmap that CVAT mask ``points`` describe."""
    if len(points) < 5:
        raise MaskError(
            f"a mask needs run lengths followed by left, top, right, bottom; got {len(points)} "
            "numbers"
        )
    *runs, left, top, right, bottom = (_as_int(p) for p in points)
    if not (0 <= left <= right < width and 0 <= top <= bottom < height):
        raise MaskError(
            f"mask box ({left}, {top}, {right}, {bottom}) is outside the {width}x{height} frame"
        )
    if any(r < 0 for r in runs):
        raise MaskError("mask run lengths must not be negative")
    box_w, box_h = right - left + 1, bottom - top + 1
    if sum(runs) != box_w * box_h:
        raise MaskError(
            f"mask runs cover {sum(runs)} pixels but the box "
            f"({left}, {top}, {right}, {bottom}) has {box_w * box_h}"
        )
    values = (np.arange(len(runs)) % 2).astype(bool)
    flat = np.repeat(values, runs)
    bitmap = np.zeros((height, width), dtype=bool)
    bitmap[top : bottom + 1, left : right + 1] = flat.reshape(box_h, box_w)
    return bitmap


def encode_cvat_mask(bitmap: np.ndarray, bbox: Sequence[float] | None = None) -> list[float]:
    """Encode a (height, width) bool bitmap as CVAT mask ``points``.

    The box defaults to the extent of the set pixels; ``bbox`` = [x1, y1, x2, y2]
    (exclusive right/bottom, as cvat-sdk's ``encode_mask`` takes it) overrides it.
    """
    bitmap = np.asarray(bitmap, dtype=bool)
    if bitmap.ndim != 2:
        raise MaskError("a mask bitmap has two dimensions (height, width)")
    if bbox is None:
        ys, xs = np.nonzero(bitmap)
        if xs.size == 0:
            raise MaskError("an empty mask cannot be encoded: CVAT has no empty mask shape")
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    else:
        x1, y1 = (math.floor(v) for v in bbox[:2])
        x2, y2 = (math.ceil(v) for v in bbox[2:4])
    flat = bitmap[y1:y2, x1:x2].ravel()
    return [*_runs(flat), x1, y1, x2 - 1, y2 - 1]


def _runs(flat: np.ndarray) -> list[int]:
    """Run lengths of a flat bool array, the first run counting ``False``."""
    if flat.size == 0:
        return []
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs.insert(0, 0)
    return [int(r) for r in runs]


def coco_uncompressed_rle(bitmap: np.ndarray) -> dict[str, list[int]]:
    """COCO uncompressed RLE of a bitmap: column-major runs, background first."""
    bitmap = np.asarray(bitmap, dtype=bool)
    height, width = bitmap.shape
    return {"counts": _runs(bitmap.ravel(order="F")), "size": [height, width]}
