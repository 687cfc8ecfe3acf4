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

``operating_point()`` adds the model's suggested score threshold: the one at
which its boxes on the validation split reach their best F1 at IoU 0.5. Every
box kept that matches no object is one for a person to delete, every object
missed one to draw; the best F1 keeps a box while the boxes at its score are
right more often than F1 / 2, so it leans to keeping a doubtful box, which is
quicker to delete than a missed one is to draw. Models differ here: a
focal-loss model (SSD, RetinaNet) is right at scores a Faster R-CNN would call
noise, so one fixed threshold drops the first's true boxes or keeps the
second's false ones. Inference uses the suggestion when a run sets no
threshold; a model with no right box on the split suggests none.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from preannotate import matching, modelmetrics

SUGGESTED = modelmetrics.SUGGESTED_THRESHOLD
PRECISION = modelmetrics.PRECISION_AT_SUGGESTED
RECALL = modelmetrics.RECALL_AT_SUGGESTED

HEADLINE = {
    "AP": "mAP",
    "AP50": modelmetrics.MAP_50,
    "AP75": "mAP@0.75",
    "ARmax100": "AR@100",
    "mask_AP": "mask_mAP",
    "mask_AP50": "mask_mAP@0.5",
    **{name: name for name in (SUGGESTED, PRECISION, RECALL)},
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


def operating_point(coco_gt: Any, detections: list[dict], iou: float = 0.5) -> dict[str, float]:
    """The suggested threshold, and the precision and recall there (module doc;
    ``preannotate.matching``). ``coco_gt``: the validation split's ground truth (a
    pycocotools ``COCO``); ``detections``: COCO results. Empty when there is nothing
    to suggest from: no objects, no detections, or none that matches."""
    point = matching.best_f1(matching.match(coco_gt, detections, iou))
    if point is None:
        return {}
    return {SUGGESTED: point.threshold, PRECISION: point.precision, RECALL: point.recall}


def suggest(task: Any) -> dict[str, float]:
    """``operating_point`` of what ``task``'s COCO evaluator holds, before it reports.

    Model Garden's ``COCOEvaluator`` keeps the batches' predictions
    (``_predictions``) and the annotation file's ground truth (``_coco_gt``)
    until its ``result()``; its own conversion to COCO results rewrites the boxes
    in place, so it gets a copy of the box fields only (not the masks, whose
    encoding this does not need). Empty for an evaluator without them. Boxes
    only, for Mask R-CNN too: a mask's threshold is its box's.
    """
    from official.vision.evaluation import coco_utils

    evaluator = getattr(task, "coco_metric", None)
    predictions = getattr(evaluator, "_predictions", None)
    coco_gt = getattr(evaluator, "_coco_gt", None)
    fields = ("source_id", "detection_boxes", "detection_classes", "detection_scores")
    if not predictions or coco_gt is None or not all(k in predictions for k in fields):
        return {}
    boxes = [
        {  # numbers as pycocotools' plain loadRes takes them (its own gives numpy arrays)
            "image_id": int(box["image_id"]),
            "category_id": int(box["category_id"]),
            "bbox": [float(v) for v in box["bbox"]],
            "score": float(box["score"]),
        }
        for box in coco_utils.convert_predictions_to_coco_annotations(
            {k: list(predictions[k]) for k in fields}
        )
    ]
    # Model Garden's COCOWrapper of a Mask R-CNN loads results as masks; the boxes
    # are matched against the same ground truth in a plain COCO
    from pycocotools.coco import COCO

    truth = COCO()
    truth.dataset = coco_gt.dataset
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
    return operating_point(truth, boxes)
