"""Instance masks from COCO segmentations, as the PNGs official.vision decodes.

A COCO ``segmentation`` is one of:

- polygons: ``[[x1, y1, x2, y2, ...], ...]`` in pixels;
- uncompressed RLE: ``{"size": [h, w], "counts": [n0, n1, ...]}``, run lengths
  over the image in column-major order, starting with a run of zeros;
- compressed RLE: the same with ``counts`` as COCO's string form (6-bit
  characters from '0', 5 payload bits each, 0x20 = more follows, sign bit
  0x10 on the last one, counts after the second given as deltas to the
  count two before).

pycocotools.mask draws and decodes them (``frPyObjects``, ``merge``,
``decode``): the reference COCO evaluation uses, so a polygon's mask follows
COCO's polygon semantics (a 20 x 10 rectangle covers 200 pixels, not the 231
of a fill that includes the outline) and a polygon beyond the image is clipped
the way pycocotools clips it.

The segmentations come from a CVAT export: untrusted. pycocotools' C code
checks nothing: ``rleDecode`` writes every run into a height x width buffer
(counts summing past it overflow memory; too few leave bytes uninitialised),
``rleFrString`` reads past the end of a string that stops inside a count, and
``rleFrPoly`` casts coordinates to ``int`` (undefined for NaN, infinities and
huge values) and allocates memory in proportion to the outline's length. So
everything is checked here first, and pycocotools only ever sees input built
from checked values:

- RLE: ``size`` must be the image's [height, width]; the run lengths must be
  whole numbers >= 0 summing to exactly height x width. pycocotools exposes no
  way to read the run lengths of a compressed string without decoding it (its
  ``_frString`` result is opaque; ``area`` sums into 32 bits and wraps), so
  ``decode_counts_string`` below parses the string to check it, and the
  checked run lengths, not the string, go to pycocotools.
- Polygons: flat lists of an even number of finite numbers within
  ``COORD_LIMIT``; the outlines of one segmentation together no longer than
  ``outline_limit`` (twice the image's pixels plus height plus width: far more
  than any drawn shape, while pycocotools allocates tens of bytes per pixel of
  outline). Polygons of fewer than three points are skipped.

The mask of an instance covers the whole image (height x width), one byte per
pixel, 0 or 1, and is stored as a grayscale PNG: official.vision's
TfExampleDecoder reads ``image/object/mask`` as one such PNG per instance.
No TensorFlow.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

#: pycocotools keeps run lengths as 32-bit unsigned integers.
MAX_PIXELS = 2**32 - 1
#: Largest coordinate accepted in a polygon, in pixels; far below where
#: pycocotools' ``int(5 * x + 0.5)`` would overflow.
COORD_LIMIT = 2**24
#: Longest count in a compressed RLE string: 7 characters carry 35 bits, enough
#: for any delta between 32-bit run lengths (pycocotools writes no longer ones).
_MAX_COUNT_CHARS = 7


class BadSegmentation(ValueError):
    """A segmentation that cannot be turned into a mask; the message says why."""


def decode_counts_string(counts: str) -> list[int]:
    """Run lengths from COCO's compressed RLE string (a count may come out negative)."""
    values: list[int] = []
    pos = 0
    while pos < len(counts):
        value = 0
        shift = 0
        while True:
            if pos >= len(counts):
                raise BadSegmentation("compressed RLE ends in the middle of a count")
            if shift >= 5 * _MAX_COUNT_CHARS:
                raise BadSegmentation(
                    f"compressed RLE has a count longer than {_MAX_COUNT_CHARS} characters"
                )
            char = ord(counts[pos]) - 48
            if not 0 <= char < 64:
                raise BadSegmentation(f"compressed RLE has a bad character {counts[pos]!r}")
            pos += 1
            value |= (char & 0x1F) << shift
            shift += 5
            if not char & 0x20:
                if char & 0x10:
                    value |= -1 << shift
                break
        if len(values) > 2:
            value += values[-2]
        values.append(value)
    return values


def _check_image(height: int, width: int) -> None:
    if height * width > MAX_PIXELS:
        raise BadSegmentation(
            f"an image of {height} x {width} pixels is too large for COCO masks "
            f"(at most {MAX_PIXELS} pixels)"
        )


def _run_lengths(rle: dict[str, Any], height: int, width: int) -> list[int]:
    """The checked run lengths of an RLE dict: they cover the image exactly."""
    size = rle.get("size")
    counts = rle.get("counts")
    if not (isinstance(size, list | tuple) and len(size) == 2):
        raise BadSegmentation(f"RLE 'size' must be [height, width], got {size!r}")
    try:
        given = [int(size[0]), int(size[1])]
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadSegmentation(f"RLE 'size' must be [height, width], got {size!r}") from exc
    if given != [height, width]:
        raise BadSegmentation(
            f"RLE size {list(size)} differs from the image's [height, width] = [{height}, {width}]"
        )
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError as exc:
            raise BadSegmentation("compressed RLE is not ASCII") from exc
    if isinstance(counts, str):
        runs = decode_counts_string(counts)
    elif isinstance(counts, list):
        runs = counts
    else:
        raise BadSegmentation(
            f"RLE 'counts' must be a list or a string, got {type(counts).__name__}"
        )
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in runs):
        raise BadSegmentation("RLE counts must be whole numbers >= 0")
    if sum(runs) != height * width:
        raise BadSegmentation(
            f"RLE counts cover {sum(runs)} pixels, the image has {height} x {width} = "
            f"{height * width}"
        )
    return runs


def rle_to_mask(rle: dict[str, Any], height: int, width: int) -> np.ndarray:
    """A (height, width) uint8 mask from an RLE dict (list or string counts)."""
    _check_image(height, width)
    runs = _run_lengths(rle, height, width)
    # Uncompressed form: pycocotools builds its RLE from these checked numbers
    # and never parses the export's string.
    encoded = coco_mask.frPyObjects({"size": [height, width], "counts": runs}, height, width)
    return np.ascontiguousarray(coco_mask.decode(encoded), dtype=np.uint8)


def _polygon_points(polygon: Any) -> list[float] | None:
    """The checked coordinates of one polygon; None when it has under three points."""
    if not isinstance(polygon, list) or len(polygon) % 2:
        raise BadSegmentation("a polygon must be a flat list [x1, y1, x2, y2, ...]")
    if len(polygon) < 6:
        return None  # fewer than three points: no area
    try:
        coords = [float(v) for v in polygon]
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadSegmentation(f"a polygon has a coordinate that is not a number: {exc}") from exc
    for v in coords:
        if not math.isfinite(v):
            raise BadSegmentation(f"a polygon has a coordinate that is not finite: {v}")
        if abs(v) > COORD_LIMIT:
            raise BadSegmentation(f"a polygon has a coordinate {v} beyond +-{COORD_LIMIT} pixels")
    return coords


def _outline_length(coords: list[float]) -> float:
    """Sum over the closed outline's edges of max(|dx|, |dy|), in pixels."""
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    steps = np.abs(xy - np.roll(xy, 1, axis=0))
    return float(steps.max(axis=1).sum())


def outline_limit(height: int, width: int) -> int:
    """The longest total outline accepted: twice (pixels + height + width)."""
    return 2 * (height * width + height + width)


def polygons_to_mask(polygons: list[Any], height: int, width: int) -> np.ndarray:
    """A (height, width) uint8 mask, the union of the polygons as COCO fills them."""
    _check_image(height, width)
    if not isinstance(polygons, list):
        raise BadSegmentation("polygons must be a list of flat lists [x1, y1, x2, y2, ...]")
    kept = [coords for coords in map(_polygon_points, polygons) if coords is not None]
    if not kept:
        raise BadSegmentation("no polygon with three or more points")
    outline = sum(_outline_length(coords) for coords in kept)
    if outline > outline_limit(height, width):
        raise BadSegmentation(
            f"polygon outlines {outline:.0f} pixels long, over the "
            f"{outline_limit(height, width)} allowed in a {height} x {width} image"
        )
    # Every polygon has >= 6 numbers: frPyObjects reads the list as polygons
    # (a first entry of 4 would be read as boxes).
    rles = coco_mask.frPyObjects(kept, height, width)
    return np.ascontiguousarray(coco_mask.decode(coco_mask.merge(rles)), dtype=np.uint8)


def box_to_mask(box: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """The box (x, y, w, h in pixels) filled: the mask of an instance drawn as a rectangle."""
    x, y, w, h = box
    mask = np.zeros((height, width), dtype=np.uint8)
    x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
    x1, y1 = min(width, int(np.ceil(x + w))), min(height, int(np.ceil(y + h)))
    mask[y0:y1, x0:x1] = 1
    return mask


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray | None:
    """The mask of a COCO segmentation; None when it is empty (a plain box)."""
    if segmentation in (None, [], {}):
        return None
    if isinstance(segmentation, dict):
        return rle_to_mask(segmentation, height, width)
    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, height, width)
    raise BadSegmentation(
        f"segmentation must be a list of polygons or an RLE dict, got {type(segmentation).__name__}"
    )


def mask_to_png(mask: np.ndarray) -> bytes:
    """A grayscale PNG of a 0/1 mask."""
    out = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()
