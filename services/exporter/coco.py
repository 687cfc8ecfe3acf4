"""Reading an unpacked COCO 1.0 export, as CVAT writes it.

Layout (CVAT with images; ``default`` is the task's subset)::

    annotations/instances_<subset>.json
    images/<subset>/<file_name>        (older servers: images/<file_name>)

Each instances file has ``categories`` [{id, name}], ``images`` [{id,
file_name, width, height}] and ``annotations`` [{id, image_id, category_id,
bbox [x, y, w, h], area, iscrowd, segmentation}]. This module checks the
structure (a broken file is ``InvalidArgument`` naming the field) and returns
plain records; what counts as a usable box is ``convert``'s business.

The file is untrusted: numbers must be finite (JSON's NaN and Infinity, which
Python's parser accepts, are refused with the field named), and an image may
declare at most ``max_pixels`` (width x height) before anything is allocated
at that size (``PREANNOTATE_EXPORT_MAX_IMAGE_PIXELS``; convert then checks the
declared size against the file's header before it draws a mask).

Crowds: CVAT (through datumaro's "guess" segmentation mode) writes every mask
shape as an RLE with ``iscrowd: 1``; that flag says how the mask is encoded,
not that the user drew a crowd region, and official.vision's parsers drop
crowd instances from training (``skip_crowd_during_training``). So when an
annotation has CVAT's ``attributes`` object, only an explicit ``is_crowd``
attribute (a label attribute of that name) makes it a crowd; a plain COCO
file without ``attributes`` keeps its ``iscrowd`` as it is.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preannotate.errors import InvalidArgument

ANNOTATIONS_GLOB = "instances_*.json"
#: Most pixels an image may declare when the caller gives no limit.
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_SETTING = "PREANNOTATE_EXPORT_MAX_IMAGE_PIXELS"


@dataclass(frozen=True)
class Category:
    coco_id: int
    name: str


@dataclass(frozen=True)
class Instance:
    ann_id: int
    category_id: int
    #: x, y, width, height in pixels; None when the export gave no box.
    bbox: tuple[float, float, float, float] | None
    area: float
    is_crowd: bool
    segmentation: Any


@dataclass(frozen=True)
class ImageRecord:
    subset: str
    file_name: str
    width: int
    height: int
    #: The image file in the unpacked export; None when the export lacks it.
    path: Path | None
    instances: tuple[Instance, ...]


@dataclass(frozen=True)
class CocoExport:
    #: In the order of their COCO ids (CVAT numbers them in the task's label order).
    categories: tuple[Category, ...]
    #: Sorted by file name.
    images: tuple[ImageRecord, ...]


def _fail(where: str, what: str) -> InvalidArgument:
    return InvalidArgument(f"COCO export {where}: {what}")


def _is_finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _finite(value: Any, where: str) -> float:
    """``value`` as a float; anything but a finite number is refused, naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, f"must be a number, got {value!r}")
    if not _is_finite(value):
        raise _fail(where, f"must be a finite number, got {value!r}")
    return float(value)


def _int(value: Any, where: str, *, positive: bool = False) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not _is_finite(value)
        or int(value) != value
    ):
        raise _fail(where, f"must be a whole number, got {value!r}")
    if positive and value <= 0:
        raise _fail(where, f"must be above 0, got {value!r}")
    return int(value)


def _list(doc: dict[str, Any], key: str, where: str) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise _fail(where, f"'{key}' must be a list")
    return value


def _bbox(value: Any, where: str) -> tuple[float, float, float, float] | None:
    if value in (None, []):
        return None
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise _fail(where, f"bbox must be [x, y, width, height], got {value!r}")
    x, y, w, h = (_finite(v, f"{where}[{i}]") for i, v in enumerate(value))
    return (x, y, w, h)


def _is_crowd(ann: dict[str, Any]) -> bool:
    """Whether the annotation is a crowd region (see the module docstring)."""
    attributes = ann.get("attributes")
    if isinstance(attributes, dict):
        value = attributes.get("is_crowd", False)
        if isinstance(value, str):
            return value.strip().lower() in ("true", "1", "yes")
        return bool(value)
    return bool(ann.get("iscrowd", 0))


def _resolve_image(root: Path, subset: str, file_name: str, where: str) -> Path | None:
    if not isinstance(file_name, str) or not file_name or file_name.startswith("/"):
        raise _fail(where, f"file_name must be a relative path, got {file_name!r}")
    if "\\" in file_name or ".." in Path(file_name).parts:
        raise _fail(where, f"file_name {file_name!r} may not contain '..' or backslashes")
    images = root / "images"
    for candidate in (images / subset / file_name, images / file_name):
        if candidate.is_file() and not candidate.is_symlink():
            resolved = candidate.resolve()
            if root.resolve() in resolved.parents:
                return resolved
    return None


def _size(img: dict[str, Any], at: str, max_pixels: int) -> tuple[int, int]:
    """The declared (width, height), refused above ``max_pixels`` (nothing allocated yet)."""
    width = _int(img.get("width"), f"{at}.width", positive=True)
    height = _int(img.get("height"), f"{at}.height", positive=True)
    if width * height > max_pixels:
        raise _fail(
            f"{at}.width x {at}.height",
            f"{width} x {height} = {width * height} pixels, over the limit of {max_pixels} "
            f"({MAX_PIXELS_SETTING}): leave the image out or raise the limit",
        )
    return width, height


def _read_subset(
    root: Path, path: Path, max_pixels: int
) -> tuple[list[Category], list[ImageRecord]]:
    subset = path.stem.removeprefix("instances_")
    where = f"annotations/{path.name}"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(where, f"is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise _fail(where, "must be a JSON object with categories, images and annotations")

    categories = []
    for i, cat in enumerate(_list(doc, "categories", where)):
        at = f"{where} categories[{i}]"
        if not isinstance(cat, dict):
            raise _fail(at, "must be an object")
        name = cat.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _fail(at, f"name must be a non-empty string, got {name!r}")
        categories.append(Category(_int(cat.get("id"), f"{at}.id"), name))

    instances: dict[int, list[Instance]] = {}
    for i, ann in enumerate(_list(doc, "annotations", where)):
        at = f"{where} annotations[{i}]"
        if not isinstance(ann, dict):
            raise _fail(at, "must be an object")
        area = _finite(ann.get("area", 0) or 0, f"{at}.area")
        instance = Instance(
            ann_id=_int(ann.get("id", i), f"{at}.id"),
            category_id=_int(ann.get("category_id"), f"{at}.category_id"),
            bbox=_bbox(ann.get("bbox"), f"{at}.bbox"),
            area=area,
            is_crowd=_is_crowd(ann),
            segmentation=ann.get("segmentation"),
        )
        instances.setdefault(_int(ann.get("image_id"), f"{at}.image_id"), []).append(instance)

    images = []
    seen_ids: set[int] = set()
    for i, img in enumerate(_list(doc, "images", where)):
        at = f"{where} images[{i}]"
        if not isinstance(img, dict):
            raise _fail(at, "must be an object")
        image_id = _int(img.get("id"), f"{at}.id")
        if image_id in seen_ids:
            raise _fail(at, f"image id {image_id} appears twice")
        seen_ids.add(image_id)
        file_name = img.get("file_name")
        width, height = _size(img, at, max_pixels)
        images.append(
            ImageRecord(
                subset=subset,
                file_name=file_name,
                width=width,
                height=height,
                path=_resolve_image(root, subset, file_name, f"{at}.file_name"),
                instances=tuple(instances.pop(image_id, ())),
            )
        )
    if instances:
        orphan = sorted(instances)[0]
        raise _fail(where, f"annotations refer to image id {orphan}, which 'images' lacks")
    return categories, images


def read_export(root: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> CocoExport:
    """Read every ``annotations/instances_*.json`` under ``root`` (an unpacked export);
    an image declaring more than ``max_pixels`` is refused."""
    root = Path(root)
    files = sorted((root / "annotations").glob(ANNOTATIONS_GLOB))
    if not files:
        raise InvalidArgument(
            "the export has no annotations/instances_*.json: ask CVAT for the 'COCO 1.0' "
            "format with images"
        )
    by_id: dict[int, Category] = {}
    images: dict[str, ImageRecord] = {}
    for path in files:
        categories, subset_images = _read_subset(root, path, max_pixels)
        for cat in categories:
            known = by_id.setdefault(cat.coco_id, cat)
            if known.name != cat.name:
                raise _fail(
                    f"annotations/{path.name}",
                    f"category id {cat.coco_id} is {cat.name!r} here and {known.name!r} "
                    "in another subset",
                )
        for image in subset_images:
            if image.file_name in images:
                raise _fail(
                    f"annotations/{path.name}",
                    f"image {image.file_name!r} appears twice (subsets "
                    f"{images[image.file_name].subset!r} and {image.subset!r})",
                )
            images[image.file_name] = image
    ordered = tuple(by_id[k] for k in sorted(by_id))
    names = [c.name for c in ordered]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidArgument(
            f"COCO export has several categories named {duplicates}: label names must be unique"
        )
    return CocoExport(categories=ordered, images=tuple(images[k] for k in sorted(images)))
