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
