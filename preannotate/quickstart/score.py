"""Scoring predictions against ground truth (COCO mAP with pycocotools), and the
CVAT-importable zip of the pre-annotated held-out images."""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from pathlib import Path

from preannotate import matching


def coco_map(truth_file: Path, predictions_file: Path) -> dict[str, float]:
    """COCO mAP, mAP@0.5 and the AP of each object size of the predictions file (COCO
    1.0 with ``score``s). Sizes are COCO's: small under 32² pixels of the original
    image, medium under 96², large above; ``AP_<size>@0.5`` is -1 when the truth has
    no object of that size.

    Two figures tell finding objects from naming them: ``AP@0.5_by_class`` (each
    class's AP@0.5, -1 for a class absent from the truth) and ``any_class_AP@0.5``,
    the AP@0.5 with every object and detection of one class, so a box on an object
    counts whatever class it says.

    What a person would correct: ``precision@0.5``, the share of the written boxes
    that match an object of their label at IoU 0.5, and ``recall@0.5``, the share
    of the ``objects`` some written box matches (``preannotate.matching``)."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(truth_file))
        predicted = json.loads(Path(predictions_file).read_text())
        by_name = {img["file_name"]: img["id"] for img in truth.dataset["images"]}
        pred_names = {img["id"]: img["file_name"] for img in predicted["images"]}
        cats = {c["name"]: c["id"] for c in truth.dataset["categories"]}
        pred_cats = {c["id"]: c["name"] for c in predicted["categories"]}
        detections = [
            {
                "image_id": by_name[pred_names[a["image_id"]]],
                "category_id": cats[pred_cats[a["category_id"]]],
                "bbox": a["bbox"],
                "score": float(a.get("score", a.get("attributes", {}).get("score", 1.0))),
            }
            for a in predicted["annotations"]
            if pred_cats[a["category_id"]] in cats
        ]
        if not detections:
            return {
                "mAP": 0.0,
                "mAP@0.5": 0.0,
                "AP_small": 0.0,
                "AP_small@0.5": 0.0,
                "AP_medium@0.5": 0.0,
                "AP_large@0.5": 0.0,
                "AP@0.5_by_class": {name: 0.0 for name in cats},
                "any_class_AP@0.5": 0.0,
                "precision@0.5": 0.0,
                "recall@0.5": 0.0,
                "objects": len(truth.getAnnIds()),
                "detections": 0,
            }
        evaluation = _evaluate(truth, detections)
        one = dict(truth.dataset, categories=[{"id": 1, "name": "any"}])
        one["annotations"] = [dict(a, category_id=1) for a in truth.dataset["annotations"]]
        any_class = COCO()
        any_class.dataset = one
        any_class.createIndex()
        any_class_ap = _evaluate(any_class, [dict(d, category_id=1) for d in detections]).stats[1]
    matches = matching.match(truth, detections)
    written = matching.at(matches, 0.0)
    # precision[iou, recall, class, area, max_dets]: IoU 0.5, 100 detections; area 0 is all.
    at_half = evaluation.eval["precision"][0, :, :, :, -1]
    by_size = {
        f"AP_{area}@0.5": _mean_precision(at_half[:, :, index])
        for index, area in ((1, "small"), (2, "medium"), (3, "large"))
    }
    by_class = {
        truth.cats[cat_id]["name"]: _mean_precision(at_half[:, index, 0])
        for index, cat_id in enumerate(evaluation.params.catIds)
    }
    return {
        "mAP": float(evaluation.stats[0]),
        "mAP@0.5": float(evaluation.stats[1]),
        "AP_small": float(evaluation.stats[3]),
        **by_size,
        "AP@0.5_by_class": by_class,
        "any_class_AP@0.5": float(any_class_ap),
        "precision@0.5": written.precision,
        "recall@0.5": written.recall,
        "objects": matches.objects,
        "detections": len(detections),
    }


def _mean_precision(values) -> float:
    """The mean of pycocotools' precisions, leaving out its -1s (nothing to find); -1
    when nothing is left."""
    values = values[values > -1]
    return float(values.mean()) if values.size else -1.0


def _evaluate(truth, detections: list[dict]):
    """pycocotools' box evaluation of ``detections`` against ``truth`` (a ``COCO``)."""
    from pycocotools.cocoeval import COCOeval

    evaluation = COCOeval(truth, truth.loadRes(detections), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation


def zip_folder(root: Path, out: Path) -> Path:
    """Zip a CVAT COCO layout (annotations/, images/default/) for CVAT's import."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(root).as_posix())
    return out
