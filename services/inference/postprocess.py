"""Model outputs to detections: thresholded, labelled, boxes normalised, masks pasted.

The same for every backend. Boxes leave here as (xmin, ymin, xmax, ymax) in
0..1 of the image. official.vision exports RetinaNet boxes normalised when
``output_normalized_coordinates`` is set, but Mask R-CNN boxes always in
pixels of the resized model input: those are mapped back with ``image_info``
(original size, scale). Which one a model gives comes from its manifest
(``boxes_normalized``) when it says; otherwise from the values (a box
coordinate above 1 means pixels).

A Mask R-CNN mask is a small per-box probability map (28 x 28); it is resized
to the box in image pixels and cut at 0.5. A detection whose mask has no pixel
left is dropped (there is nothing to draw).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from preannotate.errors import FailedPrecondition
from services.inference.backends.base import RawOutput
from services.inference.registry import ModelEntry

MASK_CUT = 0.5


@dataclass(frozen=True, eq=False)
class Detected:
    """One detection on one image."""

    label: str
    class_id: int
    score: float
    #: xmin, ymin, xmax, ymax in 0..1 of the image.
    box: tuple[float, float, float, float]
    #: bool (bottom - top + 1, right - left + 1) over ``mask_box`` (Mask R-CNN only).
    mask: np.ndarray | None = None
    #: left, top, right, bottom in image pixels, inclusive.
    mask_box: tuple[int, int, int, int] | None = None

    def pixel_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 * width, y1 * height, x2 * width, y2 * height)


def normalised_boxes(raw: RawOutput, model: ModelEntry) -> np.ndarray:
    """``raw.boxes`` as [ymin, xmin, ymax, xmax] in 0..1 of the original image."""
    boxes = np.asarray(raw.boxes, dtype=np.float64).reshape(-1, 4)
    normalized = model.boxes_normalized
    if normalized is None:
        normalized = boxes.size == 0 or float(boxes.max()) <= 1.0 + 1e-4
    if not normalized:
        if raw.image_info is None:
            raise FailedPrecondition(
                f"model {model.label} gives boxes in pixels of its input but no image_info "
                "to map them back; export it with output_normalized_coordinates"
            )
        info = np.asarray(raw.image_info, dtype=np.float64)
        (height, width), (scale_y, scale_x) = info[0], info[2]
        if min(height, width, scale_y, scale_x) <= 0:
            raise FailedPrecondition(f"model {model.label} gave an unusable image_info {info}")
        boxes = boxes / np.array([scale_y, scale_x, scale_y, scale_x])
        boxes = boxes / np.array([height, width, height, width])
    return np.clip(boxes, 0.0, 1.0)


def detections(
    raw: RawOutput, model: ModelEntry, width: int, height: int, threshold: float
) -> list[Detected]:
    """The detections of ``raw`` with a score of at least ``threshold``."""
    boxes = normalised_boxes(raw, model)
    out: list[Detected] = []
    for i in range(boxes.shape[0]):
        score = float(raw.scores[i])
        if score < threshold:
            continue
        ymin, xmin, ymax, xmax = (float(v) for v in boxes[i])
        if xmax <= xmin or ymax <= ymin:
            continue
        class_id = int(raw.classes[i])
        mask = mask_box = None
        if raw.masks is not None:
            pasted = paste_mask(raw.masks[i], (xmin, ymin, xmax, ymax), width, height)
            if pasted is None:
                continue
            mask, mask_box = pasted
        out.append(
            Detected(
                label=model.class_name(class_id),
                class_id=class_id,
                score=score,
                box=(xmin, ymin, xmax, ymax),
                mask=mask,
                mask_box=mask_box,
            )
        )
    return out


def pixel_extent(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[int, int, int, int]:
    """Inclusive pixel rectangle (left, top, right, bottom) covered by a normalised box."""
    xmin, ymin, xmax, ymax = box
    left = min(max(math.floor(xmin * width), 0), width - 1)
    top = min(max(math.floor(ymin * height), 0), height - 1)
    right = min(max(math.ceil(xmax * width) - 1, left), width - 1)
    bottom = min(max(math.ceil(ymax * height) - 1, top), height - 1)
    return left, top, right, bottom


def paste_mask(
    probabilities: np.ndarray, box: tuple[float, float, float, float], width: int, height: int
) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """A per-box probability map resized onto the box's pixels and cut at 0.5.

    Returns (bool mask, (left, top, right, bottom)): the mask covers the box's
    whole pixel extent, as ``preannotate.v1.Mask`` says; None when no pixel is set.
    """
    import cv2

    left, top, right, bottom = pixel_extent(box, width, height)
    w, h = right - left + 1, bottom - top + 1
    resized = cv2.resize(
        np.asarray(probabilities, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR
    )
    mask = resized.reshape(h, w) >= MASK_CUT
    if not mask.any():
        return None
    return mask, (left, top, right, bottom)
