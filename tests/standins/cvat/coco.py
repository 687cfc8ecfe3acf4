"""A task's "COCO 1.0" export, laid out and filled as CVAT (through datumaro) does.

CVAT's exporter (cvat/apps/dataset_manager/formats/coco.py) runs datumaro's
``coco_instances`` converter with ``merge_images=False``, so the zip holds
``annotations/instances_default.json`` and, with images, ``images/default/<name>``
(``default`` is the subset of a task without one). What the JSON holds follows
datumaro's ``_InstancesConverter``:

- images: every frame in order, ids 1..N, ``file_name`` the frame name;
- categories: the task labels in order, ids 1..K, ``supercategory`` "";
- annotations: ids 1..M; a rectangle gives ``bbox`` [x, y, w, h], empty
  ``segmentation`` and area w*h; a polygon gives ``segmentation`` [[x, y, ...]],
  its bbox and the area pycocotools measures; a mask (CVAT's "guess" mode
  treats it as a crowd) gives an uncompressed RLE, ``iscrowd: 1``;
- ``attributes``: ``occluded``, ``rotation`` (rectangles) and the label's own
  attributes by name.
Shapes of types COCO has no place for (polylines, points, ...) are left out.
"""

from __future__ import annotations

import io
import json
import posixpath
import zipfile
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

from .media import BROKEN_BYTES
from .model import Label, Task
from .rle import coco_uncompressed_rle, decode_cvat_mask

_ROUND = 2  # datumaro's COORDINATE_ROUNDING_DIGITS

_EXPORTED_TYPES = ("rectangle", "polygon", "mask")


def instances(task: Task, shapes: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``instances_default.json`` document for a task's shapes."""
    categories = {lb.id: i + 1 for i, lb in enumerate(task.labels)}
    images = [
        {
            "id": i + 1,
            "width": f.width,
            "height": f.height,
            "file_name": f.name,
            "license": 0,
            "flickr_url": "",
            "coco_url": "",
            "date_captured": 0,
        }
        for i, f in enumerate(task.frames)
    ]
    annotations = []
    ordered = sorted(shapes, key=lambda s: (s["frame"], s["id"]))
    for shape in ordered:
        if shape["type"] not in _EXPORTED_TYPES:
            continue
        label = task.label(shape["label_id"])
        assert label is not None
        frame = task.frames[shape["frame"]]
        element = _geometry(shape, frame.width, frame.height)
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": shape["frame"] + 1,
                "category_id": categories[label.id],
                **element,
                "attributes": _attributes(shape, label),
            }
        )
    return {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {
            "contributor": "",
            "date_created": "",
            "description": "",
            "url": "",
            "version": "",
            "year": "",
        },
        "categories": [
            {"id": categories[lb.id], "name": lb.name, "supercategory": ""} for lb in task.labels
        ],
        "images": images,
        "annotations": annotations,
    }


def build_zip(task: Task, shapes: list[dict[str, Any]], *, save_images: bool) -> bytes:
    """The exported archive's bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        document = json.dumps(instances(task, shapes), ensure_ascii=False)
        archive.writestr("annotations/instances_default.json", document)
        if save_images:
            for frame in task.frames:
                data = BROKEN_BYTES if frame.broken else frame.data
                archive.writestr(posixpath.join("images", "default", frame.name), data)
    return buffer.getvalue()


def _geometry(shape: dict[str, Any], width: int, height: int) -> dict[str, Any]:
    points = shape["points"]
    if shape["type"] == "rectangle":
        x1, y1, x2, y2 = points
        w, h = x2 - x1, y2 - y1
        return {
            "segmentation": [],
            "area": float(w * h),
            "bbox": [round(float(v), _ROUND) for v in (x1, y1, w, h)],
            "iscrowd": 0,
        }
    if shape["type"] == "polygon":
        xs, ys = points[0::2], points[1::2]
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        rles = mask_utils.frPyObjects([list(map(float, points))], height, width)
        area = float(mask_utils.area(mask_utils.merge(rles)))
        return {
            "segmentation": [list(map(float, points))],
            "area": area,
            "bbox": [round(float(v), _ROUND) for v in bbox],
            "iscrowd": 0,
        }
    bitmap = decode_cvat_mask(points, width, height)
    rle = coco_uncompressed_rle(bitmap)
    encoded = mask_utils.encode(np.asfortranarray(bitmap.astype(np.uint8)))
    return {
        "segmentation": rle,
        "area": float(bitmap.sum()),
        "bbox": [round(float(v), _ROUND) for v in mask_utils.toBbox(encoded)],
        "iscrowd": 1,
    }


def _attributes(shape: dict[str, Any], label: Label) -> dict[str, Any]:
    specs = {a["id"]: a for a in label.attributes}
    out: dict[str, Any] = {}
    values = {a["spec_id"]: a["value"] for a in shape.get("attributes", [])}
    for spec_id, spec in specs.items():
        value = values.get(spec_id, spec["default_value"])
        if spec["input_type"] == "number":
            out[spec["name"]] = float(value)
        elif spec["input_type"] == "checkbox":
            out[spec["name"]] = value.lower() == "true"
        else:
            out[spec["name"]] = value
    out["occluded"] = bool(shape.get("occluded", False))
    if shape["type"] == "rectangle":
        out["rotation"] = float(shape.get("rotation", 0.0))
    return out
