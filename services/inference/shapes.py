"""Detections in the shapes others read: CVAT shapes, Nuclio answers, protobuf.

- CVAT shapes (``PATCH /api/jobs/{id}/annotations``): rectangles
  ``[x1, y1, x2, y2]`` in pixels; masks ``[run lengths..., left, top, right,
  bottom]`` where the runs cover the inclusive box row by row, starting with
  a run of background (CVAT's format, as cvat-sdk's ``masks`` module reads
  it); polygons ``[x, y, ...]``. Every shape carries ``source: "auto"`` and
  the model's ``score``.
- Nuclio answers (CVAT's lambda manager): ``{"label", "type", "points",
  "confidence"}``; a mask adds ``"mask"`` = the box's pixels flattened row by
  row (0/1) followed by left, top, right, bottom, which CVAT turns into its
  run lengths, with ``points`` its outline for "convert masks to polygons".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from preannotate.v1 import common_pb2
from services.inference.postprocess import Detected


def mask_runs(mask: np.ndarray) -> list[int]:
    """Run lengths of a bool mask, row by row, the first run being background."""
    flat = np.asarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def cvat_mask_points(mask: np.ndarray, box: tuple[int, int, int, int]) -> list[int]:
    """CVAT mask points: runs over the inclusive ``box`` (left, top, right, bottom)."""
    return [*mask_runs(mask), *box]


def outline(mask: np.ndarray, left: int, top: int) -> list[float]:
    """The outline of a mask's largest part as polygon points in image pixels.

    A part too thin to outline (a pixel, a line) gives the rectangle around its
    pixels, so a non-empty mask always has a polygon; an empty mask gives ``[]``.
    """
    import cv2

    padded = np.pad(np.asarray(mask, dtype=np.uint8), 1)
    contours, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    contour = max(contours, key=cv2.contourArea)
    contour = cv2.approxPolyDP(contour, 0.5, True).reshape(-1, 2)
    if len(contour) < 3 or cv2.contourArea(contour) == 0:
        xs, ys = contour[:, 0] + left - 1, contour[:, 1] + top - 1
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        return [float(v) for v in (x1, y1, x2, y1, x2, y2, x1, y2)]
    # Contour points are pixel centres of the padded mask; shift to image pixels.
    points = contour.astype(np.float64) + np.array([left - 1, top - 1])
    return [round(float(v), 2) for v in points.ravel()]


def cvat_shape(
    det: Detected, frame: int, width: int, height: int, label_id: int, kind: str
) -> dict[str, Any] | None:
    """One CVAT shape for ``det`` on ``frame``; ``kind`` is rectangle, mask or polygon.

    A mask or polygon asked of a detection without a mask gives its rectangle;
    a detection whose mask is empty gives None.
    """
    shape: dict[str, Any] = {
        "type": "rectangle",
        "frame": frame,
        "label_id": label_id,
        "occluded": False,
        "outside": False,
        "z_order": 0,
        "rotation": 0.0,
        "attributes": [],
        "group": 0,
        "source": "auto",
        "score": round(det.score, 4),
    }
    if kind in ("mask", "polygon") and det.mask is not None and det.mask_box is not None:
        if kind == "mask":
            shape["type"] = "mask"
            shape["points"] = cvat_mask_points(det.mask, det.mask_box)
            return shape
        points = outline(det.mask, det.mask_box[0], det.mask_box[1])
        if not points:
            return None
        shape["type"] = "polygon"
        shape["points"] = points
        return shape
    shape["points"] = [round(v, 2) for v in det.pixel_box(width, height)]
    return shape


def nuclio_item(det: Detected, width: int, height: int) -> dict[str, Any]:
    """One item of a Nuclio detector's answer, as CVAT's lambda manager reads it."""
    item: dict[str, Any] = {
        "label": det.label,
        "confidence": str(round(det.score, 4)),
        "attributes": [],
    }
    if det.mask is not None and det.mask_box is not None:
        item["type"] = "mask"
        item["mask"] = [*det.mask.astype(np.uint8).ravel().tolist(), *det.mask_box]
        item["points"] = outline(det.mask, det.mask_box[0], det.mask_box[1])
    else:
        item["type"] = "rectangle"
        item["points"] = [round(v, 2) for v in det.pixel_box(width, height)]
    return item


def to_proto(det: Detected) -> common_pb2.Detection:
    """A ``preannotate.v1.Detection``: normalised box; mask over its pixel box."""
    xmin, ymin, xmax, ymax = det.box
    out = common_pb2.Detection(
        label=det.label,
        class_id=det.class_id,
        score=det.score,
        box=common_pb2.Box(xmin=xmin, ymin=ymin, xmax=xmax, ymax=ymax),
    )
    if det.mask is not None:
        h, w = det.mask.shape
        out.mask.CopyFrom(
            common_pb2.Mask(width=w, height=h, data=det.mask.astype(np.uint8).tobytes())
        )
    return out
