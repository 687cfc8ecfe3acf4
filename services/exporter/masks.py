"""Instance masks from COCO segmentations, as the PNGs official.vision decodes.

A COCO ``segmentation`` is one of:

- polygons: ``[[x1, y1, x2, y2, ...], ...]`` in pixels (drawn with Pillow);
- uncompressed RLE: ``{"size": [h, w], "counts": [n0, n1, ...]}``, run lengths
  over the image in column-major order, starting with a run of zeros;
- compressed RLE: the same with ``counts`` as COCO's string form (6-bit
  characters from '0', 5 payload bits each, 0x20 = more follows, sign bit
  0x10 on the last one, counts after the second given as deltas to the
  count two before).

The mask of an instance covers the whole image (height x width), one byte per
pixel, 0 or 1, and is stored as a grayscale PNG: official.vision's
TfExampleDecoder reads ``image/object/mask`` as one such PNG per instance.
Numpy and Pillow only: no pycocotools, no TensorFlow.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw


class BadSegmentation(ValueError):
    """A segmentation that cannot be turned into a mask; the message says why."""


def decode_counts_string(counts: str) -> list[int]:
    """Run lengths from COCO's compressed RLE string."""
    values: list[int] = []
    pos = 0
    while pos < len(counts):
        value = 0
        shift = 0
        while True:
            if pos >= len(counts):
                raise BadSegmentation("compressed RLE ends in the middle of a count")
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


def rle_to_mask(rle: dict[str, Any], height: int, width: int) -> np.ndarray:
    """A (height, width) uint8 mask from an RLE dict (list or string counts)."""
    size = rle.get("size")
    counts = rle.get("counts")
    if not (isinstance(size, list | tuple) and len(size) == 2):
        raise BadSegmentation(f"RLE 'size' must be [height, width], got {size!r}")
    if [int(size[0]), int(size[1])] != [height, width]:
        raise BadSegmentation(
            f"RLE size {list(size)} differs from the image's [height, width] = [{height}, {width}]"
        )
    if isinstance(counts, str | bytes):
        runs = decode_counts_string(counts.decode() if isinstance(counts, bytes) else counts)
    elif isinstance(counts, list):
        runs = counts
    else:
        raise BadSegmentation(
            f"RLE 'counts' must be a list or a string, got {type(counts).__name__}"
        )
    if any((not isinstance(n, int)) or n < 0 for n in runs):
        raise BadSegmentation("RLE counts must be whole numbers >= 0")
    if sum(runs) != height * width:
        raise BadSegmentation(
            f"RLE counts cover {sum(runs)} pixels, the image has {height} x {width} = "
            f"{height * width}"
        )
    values = np.arange(len(runs), dtype=np.uint8) % 2
    flat = np.repeat(values, np.asarray(runs, dtype=np.int64))
    # Column-major: the runs go down the first column, then the next.
    return np.ascontiguousarray(flat.reshape(width, height).T)


def polygons_to_mask(polygons: list[Any], height: int, width: int) -> np.ndarray:
    """A (height, width) uint8 mask with every polygon filled (outline included)."""
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    drawn = 0
    for polygon in polygons:
        if not isinstance(polygon, list) or len(polygon) % 2:
            raise BadSegmentation("a polygon must be a flat list [x1, y1, x2, y2, ...]")
        if len(polygon) < 6:
            continue  # fewer than three points: no area
        try:
            points = [(float(polygon[i]), float(polygon[i + 1])) for i in range(0, len(polygon), 2)]
        except (TypeError, ValueError) as exc:
            raise BadSegmentation(
                f"a polygon has a coordinate that is not a number: {exc}"
            ) from exc
        draw.polygon(points, fill=1, outline=1)
        drawn += 1
    if not drawn:
        raise BadSegmentation("no polygon with three or more points")
    return np.asarray(image, dtype=np.uint8)


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
