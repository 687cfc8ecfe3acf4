"""Evaluation on the validation split: COCO ground truth, and the metrics people read.

The task's own COCO evaluator (pycocotools) computes the metrics
(``training.Session.evaluate``); it compares detections against a COCO
annotation file that ``write_annotations`` builds from the validation
records with Model Garden's generator, so no COCO JSON has to travel with the
dataset. COCO image ids come from ``image/source_id`` when every record has a
distinct decimal one (the exporter writes them so), else from a hash of the
image (``regenerate_source_id``).

``summary()`` names the headline numbers: ``mAP`` (AP at IoU 0.5:0.95),
``mAP@0.5``, ``mAP@0.75``, ``AR@100``, and ``mask_mAP``, ``mask_mAP@0.5`` for
Mask R-CNN.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

HEADLINE = {
    "AP": "mAP",
    "AP50": "mAP@0.5",
    "AP75": "mAP@0.75",
    "ARmax100": "AR@100",
    "mask_AP": "mask_mAP",
    "mask_AP50": "mask_mAP@0.5",
}


def batch_size(images: int, most: int) -> int:
    """The evaluation batch: ``most``, or a divisor of ``images`` from ``most / 2`` up.

    A last, partial batch has another shape, which makes TensorFlow trace the
    whole model's evaluation step a second time; a batch that divides the
    validation split avoids it (36 images, at most 8: batches of 6).
    """
    for size in range(most, (most + 1) // 2 - 1, -1):
        if images % size == 0:
            return size
    return most


def numeric_source_ids(files: Sequence[Path]) -> bool:
    """Whether every record of ``files`` has a distinct decimal image/source_id."""
    import tensorflow as tf

    feature = {"image/source_id": tf.io.FixedLenFeature((), tf.string, default_value="")}
    seen: set[str] = set()
    for raw in tf.data.TFRecordDataset([str(f) for f in files]):
        value = tf.io.parse_single_example(raw, feature)["image/source_id"].numpy().decode()
        if not value.isdigit() or value in seen:
            return False
        seen.add(value)
    return bool(seen)


def write_annotations(
    pattern: str, path: Path, *, include_mask: bool, regenerate_source_id: bool
) -> Path:
    """The COCO ground truth of the records matching ``pattern``, as a JSON file."""
    from official.vision.evaluation import coco_utils

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    coco_utils.scan_and_generator_annotation_file(
        pattern, "tfrecord", -1, include_mask, str(path), regenerate_source_id=regenerate_source_id
    )
    return path


def summary(raw: dict[str, float]) -> dict[str, float]:
    """The headline metrics of the evaluator's output."""
    return {name: float(raw[key]) for key, name in HEADLINE.items() if key in raw}
