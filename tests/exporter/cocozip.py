"""Test helpers: COCO 1.0 zips in CVAT's layout, and raw zips for the refusals."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def image_bytes(width: int, height: int, fmt: str = "JPEG", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def write_export(
    path: Path,
    categories: list[dict[str, Any]],
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    files: dict[str, bytes],
    *,
    subset: str = "default",
    flat_images: bool = False,
) -> Path:
    """A zip like CVAT's COCO 1.0 export with images."""
    doc = {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {
            "contributor": "",
            "date_created": "",
            "description": "",
            "url": "",
            "version": "",
            "year": "",
        },
        "categories": categories,
        "images": images,
        "annotations": annotations,
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"annotations/instances_{subset}.json", json.dumps(doc))
        for name, data in files.items():
            zf.writestr(f"images/{name}" if flat_images else f"images/{subset}/{name}", data)
    return path


def raw_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


def symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = 0o120777 << 16
    return info, target.encode()


class Builder:
    """Builds a COCO export image by image."""

    def __init__(self, categories: list[tuple[int, str]]) -> None:
        self.categories = [{"id": i, "name": n, "supercategory": ""} for i, n in categories]
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}

    def image(
        self, name: str, width: int, height: int, *, fmt: str = "JPEG", data: bytes | None = None
    ) -> int:
        image_id = len(self.images) + 1
        self.images.append(
            {
                "id": image_id,
                "width": width,
                "height": height,
                "file_name": name,
                "license": 0,
                "flickr_url": "",
                "coco_url": "",
                "date_captured": 0,
            }
        )
        self.files[name] = data if data is not None else image_bytes(width, height, fmt, image_id)
        return image_id

    def annotate(
        self,
        image_id: int,
        category_id: int,
        bbox: list[float] | None,
        segmentation: Any = None,
        *,
        area: float | None = None,
        iscrowd: int = 0,
        attributes: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        ann = {
            "id": len(self.annotations) + 1,
            "image_id": image_id,
            "category_id": category_id,
            "segmentation": segmentation or [],
            "area": area if area is not None else (bbox[2] * bbox[3] if bbox else 0),
            "bbox": bbox if bbox is not None else [],
            "iscrowd": iscrowd,
            "attributes": {"occluded": False} if attributes is None else attributes,
        }
        if attributes == {}:
            del ann["attributes"]
        self.annotations.append(ann)
        return ann

    def write(self, path: Path, **kwargs: Any) -> Path:
        return write_export(
            path, self.categories, self.images, self.annotations, self.files, **kwargs
        )
