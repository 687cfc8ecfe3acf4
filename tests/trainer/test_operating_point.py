"""The suggested score threshold: the best F1 at IoU 0.5 on the validation split.

Made-up ground truth and detections with the F1 worked out by hand; no model.
"""

from __future__ import annotations

import contextlib
import io

import pytest
from pycocotools.coco import COCO

from services.trainer.evaluation import PRECISION, RECALL, SUGGESTED, operating_point, suggest


def _truth(objects: dict[int, list[tuple[int, list[float]]]]) -> COCO:
    """Images 1..n with their (category, x-y-w-h box) objects; categories 1 and 2."""
    images, annotations = [], []
    for image_id, found in objects.items():
        images.append({"id": image_id, "width": 100, "height": 100, "file_name": f"{image_id}.jpg"})
        for category, box in found:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                "bbox": box, "area": box[2] * box[3], "iscrowd": 0,
            })  # fmt: skip
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _box(image_id: int, category: int, box: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": category, "bbox": box, "score": score}


A, B, C, D = [10, 10, 20, 20], [50, 50, 30, 30], [5, 60, 25, 25], [60, 5, 20, 30]
FOUR = {1: [(1, A), (2, B)], 2: [(1, C), (1, D)]}


def test_the_threshold_is_the_lowest_score_kept_at_the_best_f1():
    detections = [
        _box(1, 1, A, 0.9),  # right
        _box(2, 1, C, 0.8),  # right
        _box(1, 1, [70, 70, 10, 10], 0.6),  # nothing there
        _box(2, 1, D, 0.3),  # right
        _box(1, 2, [0, 80, 15, 15], 0.2),  # nothing there
    ]
    # kept at 0.9: F1 2/5; 0.8: 4/6; 0.6: 4/7; 0.3: 6/8 (best); 0.2: 6/9
    point = operating_point(_truth(FOUR), detections)
    assert point == {SUGGESTED: 0.3, PRECISION: 0.75, RECALL: 0.75}


def test_a_box_of_the_wrong_label_or_off_target_is_not_a_hit():
    detections = [
        _box(1, 1, A, 0.95),  # right
        _box(1, 1, B, 0.9),  # B is a dog
        _box(2, 1, [5, 60, 5, 5], 0.85),  # inside C, IoU 0.04
        _box(2, 1, D, 0.1),  # right
    ]
    # 0.95: 2/5; 0.9: 2/6; 0.85: 2/7; 0.1: 4/8 (best). Were the dog or the sliver a
    # hit, 0.9 would give 4/6 and 0.85 6/7.
    point = operating_point(_truth(FOUR), detections)
    assert point == {SUGGESTED: 0.1, PRECISION: 0.5, RECALL: 0.5}


def test_equal_scores_are_kept_or_dropped_together():
    # two false boxes tie with the last right one: a threshold keeps all three or none
    detections = [
        _box(1, 1, A, 0.9),
        _box(1, 2, B, 0.8),
        _box(2, 1, C, 0.4),
        _box(2, 2, [70, 70, 10, 10], 0.4),
        _box(2, 2, [40, 40, 10, 10], 0.4),
    ]
    # of 3 objects, 0.9: 2/4; 0.8: 4/5 (best); 0.4: 6/8; the right box alone at 0.4
    # (were ties split) would give 6/6
    point = operating_point(_truth({1: [(1, A), (2, B)], 2: [(1, C)]}), detections)
    assert point[SUGGESTED] == 0.8 and point[RECALL] == pytest.approx(2 / 3)


def test_the_threshold_is_rounded_down_so_its_own_box_is_kept():
    point = operating_point(_truth({1: [(1, A)]}), [_box(1, 1, A, 0.6789)])
    assert point[SUGGESTED] == 0.678


@pytest.mark.parametrize(
    "objects, detections",
    [
        (FOUR, []),  # nothing detected
        ({1: []}, [_box(1, 1, A, 0.9)]),  # no object to find
        (FOUR, [_box(1, 2, A, 0.9), _box(2, 1, B, 0.5)]),  # nothing right
    ],
)
def test_nothing_is_suggested_without_a_right_box(objects, detections):
    assert operating_point(_truth(objects), detections) == {}


@pytest.mark.parametrize("eval_type", ["box", "mask"])
def test_suggest_reads_model_gardens_evaluator_before_it_reports(eval_type):
    # what Model Garden's COCOEvaluator holds between batches: its ground truth (a
    # COCOWrapper; a Mask R-CNN's loads results as masks) and the batches' predictions
    # (boxes as ymin, xmin, ymax, xmax in image pixels, padded with score-0 rows)
    import numpy as np
    from official.vision.evaluation import coco_utils

    truth = _truth(FOUR)
    with contextlib.redirect_stdout(io.StringIO()):
        wrapper = coco_utils.COCOWrapper(eval_type=eval_type, gt_dataset=truth.dataset)

    def yxyx(box):
        x, y, w, h = box
        return [y, x, y + h, x + w]

    boxes = np.array([[yxyx(A), yxyx(B), [0, 0, 0, 0]], [yxyx(C), yxyx([70, 70, 10, 10]), yxyx(D)]])
    predictions = {
        "source_id": [np.array([1, 2])],
        "detection_boxes": [boxes.astype(np.float32)],
        "detection_classes": [np.array([[1, 2, 0], [1, 1, 1]])],
        "detection_scores": [np.array([[0.9, 0.8, 0.0], [0.7, 0.6, 0.3]], dtype=np.float32)],
        "detection_masks": [np.zeros((2, 3, 4, 4), np.float32)],  # left alone
    }
    kept = {k: list(v) for k, v in predictions.items()}

    class Task:
        coco_metric = type("Evaluator", (), {"_predictions": predictions, "_coco_gt": wrapper})()

    # 0.9: 2/5; 0.8: 4/6; 0.7: 6/7; 0.6: 6/8; 0.3: 8/9 (best, every object found)
    point = suggest(Task())
    assert point[SUGGESTED] == 0.3 and point[RECALL] == 1.0 and point[PRECISION] == 0.8
    # the evaluator's own predictions are as they were, for its report after this
    assert all(
        all(np.array_equal(a, b) for a, b in zip(predictions[k], kept[k], strict=True))
        for k in kept
    )
    assert suggest(type("NoCoco", (), {})()) == {}
