"""Predictions as a "COCO 1.0" file in the layout CVAT exports and imports.

    {"licenses", "info",
     "categories": [{"id", "name", "supercategory"}],           ids 1..K in class order
     "images": [{"id", "file_name", "width", "height", ...}],
     "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h],
                      "area", "iscrowd": 0, "segmentation": [[x, y, ...]] or [],
                      "score", "attributes": {"occluded", "source", "score"}}]}

The file's frame (licenses, info, categories, image entries) is
``preannotate.cvat.coco``'s ``coco_document`` and ``coco_image``; this module makes
the annotations. Boxes are in pixels. A Mask R-CNN detection becomes the
polygon of its mask's outline (bbox and area from the polygon and the mask);
one too small to draw is left out, as in CVAT's polygon mode. ``attributes.source = "auto"`` makes
CVAT's importer mark the shapes automatic; ``score`` rides along at the top
(pycocotools, COCO results) and in ``attributes`` (what CVAT's importer keeps).

``merge`` adds new predictions to an existing file (append mode): categories
and images are matched by name, ids continue after the largest; ``write`` is
atomic (a temporary file in the same folder, then a rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from preannotate.errors import InvalidArgument
from services.inference.postprocess import Detected
from services.inference.shapes import outline


def annotation(
    det: Detected, ann_id: int, image_id: int, category_id: int, width: int, height: int
) -> dict[str, Any] | None:
    """One annotation for ``det``; None for a mask too small to make a polygon."""
    segmentation: list[list[float]] = []
    if det.mask is not None and det.mask_box is not None:
        polygon = outline(det.mask, det.mask_box[0], det.mask_box[1])
        if not polygon:
            return None
        xs, ys = polygon[0::2], polygon[1::2]
        x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
        area = float(det.mask.sum())
        segmentation = [polygon]
    else:
        x1, y1, x2, y2 = det.pixel_box(width, height)
        area = (x2 - x1) * (y2 - y1)
    score = round(det.score, 4)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
        "area": round(area, 2),
        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
        "iscrowd": 0,
        "score": score,
        "attributes": {"occluded": False, "source": "auto", "score": score},
    }


#: What ``merge`` needs of each item of an existing file: key -> type.
_ITEM_KEYS = {
    "categories": {"id": int, "name": str},
    "images": {"id": int, "file_name": str},
    "annotations": {"id": int},
}


def check_document(doc: Any, where: str) -> dict[str, Any]:
    """``doc`` if it is a COCO file ``merge`` can extend; ``InvalidArgument`` naming
    ``where`` and what is wrong if not."""
    fix = "fix or remove it, or pre-annotate in replace mode to overwrite it"
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{where} is not a COCO file (not a JSON object): {fix}")
    for key, fields in _ITEM_KEYS.items():
        items = doc.get(key)
        if not isinstance(items, list):
            raise InvalidArgument(f"{where} is not a COCO file (no {key} list): {fix}")
        for item in items:
            if not isinstance(item, dict) or not all(
                isinstance(item.get(f), t) for f, t in fields.items()
            ):
                raise InvalidArgument(
                    f"{where}: an item of {key} lacks {', '.join(fields)} ({item!r:.80}): {fix}"
                )
    return doc


def read(path: Path) -> dict[str, Any]:
    """An existing COCO file, checked."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(
            f"{path} cannot be read as JSON ({exc}): fix or remove it, or pre-annotate in "
            "replace mode to overwrite it"
        ) from exc
    return check_document(doc, str(path))


def _match(
    existing: list[dict[str, Any]], new: list[dict[str, Any]], key: str
) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """``existing`` plus the items of ``new`` whose ``key`` it lacks (ids continuing
    after its largest), and new id -> id in the result."""
    items = [dict(item) for item in existing]
    ids = {item[key]: item["id"] for item in items}
    next_id = max((int(item["id"]) for item in items), default=0) + 1
    id_map: dict[int, int] = {}
    for item in new:
        if item[key] not in ids:
            ids[item[key]] = next_id
            items.append({**item, "id": next_id})
            next_id += 1
        id_map[item["id"]] = ids[item[key]]
    return items, id_map


def merge(existing: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``existing`` with ``new``'s images and annotations added (append mode):
    categories matched by name, images by file name."""
    categories, cat_map = _match(existing["categories"], new["categories"], "name")
    images, image_map = _match(existing["images"], new["images"], "file_name")
    annotations = list(existing["annotations"])
    next_ann = max((int(a["id"]) for a in annotations), default=0) + 1
    for i, ann in enumerate(new["annotations"]):
        annotations.append(
            {
                **ann,
                "id": next_ann + i,
                "image_id": image_map[ann["image_id"]],
                "category_id": cat_map[ann["category_id"]],
            }
        )
    return {**existing, "categories": categories, "images": images, "annotations": annotations}


def write(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` atomically: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(doc, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
