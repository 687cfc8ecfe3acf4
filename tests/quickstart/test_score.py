"""The quickstart's scorer: COCO's AP by object size, on boxes whose answer is known."""

from __future__ import annotations

import json

import pytest

from preannotate.quickstart.score import coco_map

BOXES = {"small": [10, 10, 20, 20], "medium": [100, 100, 50, 50], "large": [200, 10, 150, 150]}


def _coco(boxes: list[list[float]], scores: bool) -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 400, "height": 300}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {
                "id": i,
                "image_id": 1,
                "category_id": 1,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
                **({"score": 0.9} if scores else {}),
            }
            for i, box in enumerate(boxes, start=1)
        ],
    }


def test_each_size_is_scored_on_its_own(tmp_path):
    truth, found = tmp_path / "truth.json", tmp_path / "found.json"
    truth.write_text(json.dumps(_coco(list(BOXES.values()), scores=False)))
    # The small and the large object found exactly; the medium one missed.
    found.write_text(json.dumps(_coco([BOXES["small"], BOXES["large"]], scores=True)))
    scores = coco_map(truth, found)
    assert scores["AP_small@0.5"] == scores["AP_large@0.5"] == pytest.approx(1.0)
    assert scores["AP_medium@0.5"] == 0.0
    assert 0.6 < scores["mAP@0.5"] < 0.7  # two of three objects at full precision


def test_finding_an_object_is_scored_apart_from_naming_it(tmp_path):
    classes = [{"id": 1, "name": "star"}, {"id": 2, "name": "ring"}, {"id": 3, "name": "kite"}]
    truth = _coco([BOXES["small"], BOXES["large"]], scores=False)
    truth["categories"] = classes
    truth["annotations"][1]["category_id"] = 2
    # Both objects found in the right place, the ring called a star with more confidence.
    found = _coco([BOXES["small"], BOXES["large"]], scores=True)
    found["categories"] = classes
    found["annotations"][1]["score"] = 0.95
    paths = tmp_path / "truth.json", tmp_path / "found.json"
    for path, data in zip(paths, (truth, found), strict=True):
        path.write_text(json.dumps(data))
    scores = coco_map(*paths)
    assert scores["any_class_AP@0.5"] == pytest.approx(1.0)
    by_class = scores["AP@0.5_by_class"]
    assert by_class["star"] == pytest.approx(
        0.5, abs=0.02
    )  # the surer star is wrong: precision 0.5 at full recall
    assert by_class["ring"] == 0.0
    assert by_class["kite"] == -1.0  # no kite in the truth
    assert scores["mAP@0.5"] == pytest.approx((by_class["star"] + by_class["ring"]) / 2)


def test_precision_and_recall_count_what_a_person_would_correct(tmp_path):
    truth = _coco(list(BOXES.values()), scores=False)
    # the small object found, the large one boxed as a 30 % sliver, a box on nothing
    found = _coco([BOXES["small"], [200, 10, 45, 150], [300, 250, 20, 20]], scores=True)
    paths = tmp_path / "truth.json", tmp_path / "found.json"
    for path, data in zip(paths, (truth, found), strict=True):
        path.write_text(json.dumps(data))
    scores = coco_map(*paths)
    assert (scores["objects"], scores["detections"]) == (3, 3)
    assert scores["precision@0.5"] == pytest.approx(1 / 3)
    assert scores["recall@0.5"] == pytest.approx(1 / 3)
    # nothing written: nothing right, nothing found, every object still counted
    found["annotations"] = []
    paths[1].write_text(json.dumps(found))
    empty = coco_map(*paths)
    assert (empty["precision@0.5"], empty["recall@0.5"], empty["objects"]) == (0.0, 0.0, 3)
