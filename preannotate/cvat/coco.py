"""The frame of a "COCO 1.0" file as CVAT exports it
(``annotations/instances_default.json``), for whoever writes one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def coco_document(classes: Sequence[str]) -> dict[str, Any]:
    """An empty "COCO 1.0" file as CVAT exports it, with ``classes`` as the
    categories (ids 1..K in that order)."""
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
            {"id": i, "name": name, "supercategory": ""} for i, name in enumerate(classes, 1)
        ],
        "images": [],
        "annotations": [],
    }


def coco_image(image_id: int, file_name: str, width: int, height: int) -> dict[str, Any]:
    """One entry of a CVAT "COCO 1.0" file's ``images``."""
    return {
        "id": image_id,
        "width": width,
        "height": height,
        "file_name": file_name,
        "license": 0,
        "flickr_url": "",
        "coco_url": "",
        "date_captured": 0,
    }
