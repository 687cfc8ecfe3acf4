"""COCO 1.0 export -> the dataset folder a trainer reads.

Output, all in one local folder (the handler uploads it under the job's
dataset prefix)::

    train-00000-of-0000N.tfrecord ...   tf.train.Example records (``examples``)
    val-00000-of-0000M.tfrecord ...
    label_map.pbtxt, classes.csv        the classes (``labelmap``)
    images.csv                          source_id, file name, split of every image

Decisions, written down:

- Classes: every category of the export, in the order of its COCO id. CVAT
  numbers categories 1..K in the task's label order, so a label added later
  gets the next id and the ids of earlier labels stay; class id i + 1 is
  ``classes[i]``.
- Masks: when any shape of the export has a segmentation (a polygon or a
  mask), every instance gets a mask; a rectangle's mask is its box, filled.
  Without segmentations no mask key is written.
- A shape whose box is empty or outside the image is dropped; a
  segmentation that cannot be drawn keeps its box (the box becomes its mask);
  an image missing from the export, unreadable, or of another size than the
  export says is skipped. Each case is counted in the result (and so in the
  manifest and the job status), never silently. The file's header is checked
  against the declared size before any mask is drawn at that size.
- Images without shapes are negatives; kept unless ``keep_negatives`` is off.
- The split is ``split.assign_splits``: by file name, stable across exports;
  unless the caller names the validation frames (``val_files``: a project's
  CVAT Ground Truth frames, ``ground_truth``), which are then the ``val``
  split, all of it, and never in ``train``. The manifest's
  ``splits.val.source`` says which: "file-name-hash" or "cvat-ground-truth".
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from preannotate.classes import classes_csv
from preannotate.errors import InvalidArgument
from services.exporter import labelmap
from services.exporter.coco import CocoExport, ImageRecord, Instance
from services.exporter.examples import ObjectRecord, build_example
from services.exporter.ground_truth import SOURCE as GROUND_TRUTH_SOURCE
from services.exporter.masks import (
    BadSegmentation,
    box_to_mask,
    mask_to_png,
    segmentation_to_mask,
)
from services.exporter.split import TRAIN, VAL, assign_splits
from services.exporter.tfrecord import ShardedWriter

#: ``splits.val.source`` of a split by file name (``split``).
HASH_SOURCE = "file-name-hash"
#: How many detailed notes (which image, which shape, why) a result keeps.
MAX_NOTE_DETAILS = 50
_KEEP_FORMATS = {"JPEG": "jpeg", "PNG": "png"}
_EXIF_ORIENTATION = 0x0112
_KEEP_MODES = {"JPEG": {"L", "RGB"}, "PNG": {"1", "L", "LA", "P", "RGB", "RGBA"}}


@dataclass(frozen=True)
class ConvertOptions:
    val_fraction: float = 0.1
    keep_negatives: bool = True
    #: A shard closes before it would pass this many bytes.
    shard_max_bytes: int = 100 * 2**20
    #: ... or when it holds this many images (0: no limit).
    shard_max_images: int = 0
    #: The validation split, by file name, when the caller decides it (CVAT ground
    #: truth); None: ``assign_splits``.
    val_files: frozenset[str] | None = None


@dataclass
class SplitStats:
    images: int = 0
    negatives: int = 0
    boxes: int = 0
    boxes_per_class: dict[str, int] = field(default_factory=dict)
    images_per_class: dict[str, int] = field(default_factory=dict)
    #: [{"name", "records", "bytes"}], in order.
    shards: list[dict[str, int | str]] = field(default_factory=list)
    #: Each image's longer side in pixels (the manifest keeps min, median, max).
    long_sides: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        sides = sorted(self.long_sides)
        return {
            "long_side": (
                {"min": sides[0], "median": sides[len(sides) // 2], "max": sides[-1]}
                if sides
                else {}
            ),
            "images": self.images,
            "negatives": self.negatives,
            "boxes": self.boxes,
            "boxes_per_class": dict(self.boxes_per_class),
            "images_per_class": dict(self.images_per_class),
            "shards": list(self.shards),
        }


@dataclass
class ConvertResult:
    classes: list[str]
    has_masks: bool
    splits: dict[str, SplitStats]
    #: Reason -> how many shapes or images it concerned.
    notes: dict[str, int]
    #: The first few notes in detail.
    note_details: list[str]
    #: File names written in the output folder, sorted.
    files: list[str]
    #: Where the validation split comes from: "file-name-hash" or "cvat-ground-truth".
    val_source: str = HASH_SOURCE

    def summary(self) -> dict:
        """The dataset part of the manifest."""
        return {
            "format": "tf_example",
            "decoder": "official.vision.dataloaders.tf_example_decoder.TfExampleDecoder",
            "classes": list(self.classes),
            "num_classes": len(self.classes) + 1,
            "has_masks": self.has_masks,
            "splits": {
                name: {**stats.as_dict(), **({"source": self.val_source} if name == VAL else {})}
                for name, stats in self.splits.items()
            },
            "input_patterns": {name: f"{name}-*.tfrecord" for name in self.splits},
            "label_map": "label_map.pbtxt",
            "classes_csv": "classes.csv",
            "images_csv": "images.csv",
            "notes": dict(self.notes),
            "note_details": list(self.note_details),
        }


class _Notes:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.details: list[str] = []

    def add(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        if len(self.details) < MAX_NOTE_DETAILS:
            self.details.append(f"{detail}: {reason}")


@dataclass(frozen=True)
class _Box:
    instance: Instance
    label: int
    x0: float
    y0: float
    x1: float
    y1: float
    #: A mask already drawn (only when the export gave no bbox).
    mask: np.ndarray | None = None


@dataclass(frozen=True)
class _Prepared:
    image: ImageRecord
    boxes: tuple[_Box, ...]
    #: Turn the image by its EXIF orientation before writing it.
    turn: bool = False


class _Skip(Exception):
    pass


def _bbox_of_mask(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return (
        float(xs.min()),
        float(ys.min()),
        float(xs.max() + 1 - xs.min()),
        float(ys.max() + 1 - ys.min()),
    )


def _check_categories(image: ImageRecord, class_ids: dict[int, int]) -> None:
    for inst in image.instances:
        if inst.category_id not in class_ids:
            raise InvalidArgument(
                f"COCO export: {image.file_name} annotation {inst.ann_id} has category_id "
                f"{inst.category_id}, which 'categories' lacks (known: {sorted(class_ids)})"
            )


def _boxes(image: ImageRecord, class_ids: dict[int, int], notes: _Notes) -> tuple[_Box, ...]:
    """The usable boxes of ``image`` (whose file matches its declared size)."""
    boxes = []
    for inst in image.instances:
        where = f"{image.file_name} annotation {inst.ann_id}"
        label = class_ids[inst.category_id]
        bbox, mask = inst.bbox, None
        if bbox is None:
            try:
                mask = segmentation_to_mask(inst.segmentation, image.height, image.width)
            except BadSegmentation as exc:
                notes.add("shape dropped: no box and no usable segmentation", f"{where} ({exc})")
                continue
            bbox = _bbox_of_mask(mask) if mask is not None else None
            if bbox is None:
                notes.add("shape dropped: no box and no usable segmentation", where)
                continue
        x, y, w, h = bbox
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(float(image.width), x + w), min(float(image.height), y + h)
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            notes.add("shape dropped: empty box or box outside the image", where)
            continue
        boxes.append(_Box(inst, label, x0, y0, x1, y1, mask))
    return tuple(boxes)


def _inspect(image: ImageRecord) -> bool:
    """Check the image's header (cheap); True when it must be turned by its EXIF tag."""
    assert image.path is not None
    try:
        with Image.open(image.path) as img:
            size = img.size
            if size == (image.width, image.height):
                return False
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise _Skip(f"image skipped: not a readable image ({type(exc).__name__})") from exc
    if orientation in (5, 6, 7, 8) and size[::-1] == (image.width, image.height):
        return True
    raise _Skip(
        f"image skipped: the file is {size[0]}x{size[1]}, the export says "
        f"{image.width}x{image.height}"
    )


def _encode_image(image: ImageRecord, turn: bool) -> tuple[bytes, str]:
    """The image's bytes as TensorFlow will decode them, and their format.

    JPEG and PNG files go as they are; other formats and modes are re-encoded
    as PNG; an image whose annotations follow its EXIF orientation is turned.
    Decoding it whole here finds damaged files before a trainer does.
    """
    assert image.path is not None
    raw = image.path.read_bytes()
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            fmt, mode = img.format or "", img.mode
            if turn:
                turned = ImageOps.exif_transpose(img)
                target = "JPEG" if fmt == "JPEG" else "PNG"
                return _encode(turned.convert("RGB") if target == "JPEG" else turned, target)
            if fmt in _KEEP_FORMATS and mode in _KEEP_MODES[fmt]:
                return raw, _KEEP_FORMATS[fmt]
            return _encode(img.convert("RGBA" if "A" in mode else "RGB"), "PNG")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise _Skip(f"image skipped: not a readable image ({type(exc).__name__})") from exc


def _encode(img: Image.Image, fmt: str) -> tuple[bytes, str]:
    if fmt == "PNG" and img.mode not in _KEEP_MODES["PNG"]:
        img = img.convert("RGB")
    out = io.BytesIO()
    img.save(out, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue(), _KEEP_FORMATS[fmt]


def _objects(
    prepared: _Prepared, classes: list[str], with_masks: bool, notes: _Notes
) -> list[ObjectRecord]:
    image = prepared.image
    objects = []
    for box in prepared.boxes:
        inst = box.instance
        mask_png = None
        if with_masks:
            mask = box.mask
            if mask is None:
                try:
                    mask = segmentation_to_mask(inst.segmentation, image.height, image.width)
                except BadSegmentation as exc:
                    notes.add(
                        "segmentation unusable: its box is used as the mask",
                        f"{image.file_name} annotation {inst.ann_id} ({exc})",
                    )
            if mask is None or not mask.any():
                mask = box_to_mask(
                    (box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0), image.height, image.width
                )
            mask_png = mask_to_png(mask)
        area = inst.area if inst.area > 0 else (box.x1 - box.x0) * (box.y1 - box.y0)
        objects.append(
            ObjectRecord(
                xmin=box.x0 / image.width,
                ymin=box.y0 / image.height,
                xmax=box.x1 / image.width,
                ymax=box.y1 / image.height,
                label=box.label,
                text=classes[box.label - 1],
                area=area,
                is_crowd=inst.is_crowd,
                mask_png=mask_png,
            )
        )
    return objects


def convert_export(
    export: CocoExport,
    out_dir: Path,
    options: ConvertOptions,
    *,
    source: str = "the export",
    progress: Callable[[int, int], None] | None = None,
) -> ConvertResult:
    """Write the dataset files of ``export`` into ``out_dir`` (created)."""
    classes = [c.name for c in export.categories]
    class_ids = {c.coco_id: i + 1 for i, c in enumerate(export.categories)}
    with_masks = any(
        inst.segmentation not in (None, [], {})
        for image in export.images
        for inst in image.instances
    )
    notes = _Notes()
    prepared: list[_Prepared] = []
    negatives_dropped = 0
    for image in export.images:
        _check_categories(image, class_ids)
        if image.path is None:
            notes.add("image skipped: the file is missing from the export", image.file_name)
            continue
        try:
            # the header, before any mask is drawn at the declared size
            turn = _inspect(image)
        except _Skip as skip:
            notes.add(str(skip), image.file_name)
            continue
        boxes = _boxes(image, class_ids, notes)
        if not boxes and not options.keep_negatives:
            negatives_dropped += 1
            continue
        prepared.append(_Prepared(image, boxes, turn))
    if negatives_dropped:
        notes.counts["negatives left out (keep_negatives is off)"] = negatives_dropped

    shapes = sum(len(image.instances) for image in export.images)
    if not any(p.boxes for p in prepared):
        detail = (
            f" ({shapes} shapes in the export, none usable: {dict(notes.counts)})" if shapes else ""
        )
        raise InvalidArgument(
            f"{source} has no labelled shapes{detail}: draw boxes, polygons or masks with a "
            "label in CVAT before asking for a model"
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    writers = {
        name: ShardedWriter(out_dir, name, options.shard_max_bytes, options.shard_max_images)
        for name in (TRAIN, VAL)
    }
    stats = {name: SplitStats() for name in (TRAIN, VAL)}
    for s in stats.values():
        s.boxes_per_class = dict.fromkeys(classes, 0)
        s.images_per_class = dict.fromkeys(classes, 0)
    rows: list[tuple[int, str, str]] = []
    try:
        splits = _splits(prepared, options)
        source_id = 0
        for done, (item, split) in enumerate(zip(prepared, splits, strict=True), start=1):
            try:
                encoded, fmt = _encode_image(item.image, item.turn)
            except _Skip as skip:
                notes.add(str(skip), item.image.file_name)
                continue
            objects = _objects(item, classes, with_masks, notes)
            source_id += 1
            example = build_example(
                encoded=encoded,
                image_format=fmt,
                height=item.image.height,
                width=item.image.width,
                source_id=source_id,
                file_name=item.image.file_name,
                objects=objects,
                with_masks=with_masks,
            )
            writers[split].write(example.SerializeToString())
            rows.append((source_id, item.image.file_name, split))
            _count(stats[split], objects, classes)
            stats[split].long_sides.append(max(item.image.width, item.image.height))
            if progress is not None:
                progress(done, len(prepared))
        for name in (TRAIN, VAL):
            if not any(stats[name].boxes_per_class.values()):
                raise InvalidArgument(
                    f"{source}: after skipping unusable images the {name} split has no "
                    f"labelled image ({dict(notes.counts)}); fix or re-upload those images"
                )
        for name, writer in writers.items():
            stats[name].shards = [
                {"name": s.path.name, "records": s.records, "bytes": s.bytes}
                for s in writer.close()
            ]
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise

    (out_dir / "label_map.pbtxt").write_text(labelmap.label_map_pbtxt(classes), encoding="utf-8")
    (out_dir / "classes.csv").write_text(classes_csv(classes), encoding="utf-8")
    (out_dir / "images.csv").write_text(_images_csv(rows), encoding="utf-8")
    return ConvertResult(
        classes=classes,
        has_masks=with_masks,
        splits=stats,
        notes=dict(notes.counts),
        note_details=notes.details,
        files=sorted(p.name for p in out_dir.iterdir() if p.is_file()),
        val_source=HASH_SOURCE if options.val_files is None else GROUND_TRUTH_SOURCE,
    )


def _splits(prepared: list[_Prepared], options: ConvertOptions) -> list[str]:
    names = [p.image.file_name for p in prepared]
    if options.val_files is None:
        return assign_splits(names, [bool(p.boxes) for p in prepared], options.val_fraction)
    # the caller's validation frames (CVAT ground truth); the checks after writing
    # refuse a split left without a labelled image
    return [VAL if name in options.val_files else TRAIN for name in names]


def _count(stats: SplitStats, objects: list[ObjectRecord], classes: list[str]) -> None:
    stats.images += 1
    if not objects:
        stats.negatives += 1
    stats.boxes += len(objects)
    for obj in objects:
        stats.boxes_per_class[obj.text] += 1
    for label in {obj.label for obj in objects}:
        stats.images_per_class[classes[label - 1]] += 1


def _images_csv(rows: list[tuple[int, str, str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["source_id", "file_name", "split"])
    writer.writerows(rows)
    return out.getvalue()
