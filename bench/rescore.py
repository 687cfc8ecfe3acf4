"""A kept ``bench.recipe --workdir`` rescored at other score thresholds.

    .venv/bin/python -m bench.rescore WORKDIR                  # 0.25 (the recipe's) and 0.05
    .venv/bin/python -m bench.rescore WORKDIR --thresholds 0.5 0.25 0.1 0.05
    .venv/bin/python -m bench.rescore WORKDIR --thresholds 0.5 0.25 --suggested

``bench.recipe`` scores the shapes its pre-annotation wrote, those at or above
``--threshold`` (0.25): what a person would be shown. COCO's own mAP counts
every detection a model makes, down to its lowest score (Model Garden's
detection generator keeps scores from 0.05). This runs the SavedModel the
recipe exported (its ``serving_default`` signature, on the held-out frames'
encoded bytes) once and scores its detections at each threshold with the
recipe's scorer (``preannotate.quickstart.score.coco_map``). It prints one JSON
line per threshold, with the precision, recall and F1 at IoU 0.5 of the boxes
kept (what a person would correct). ``--suggested`` adds the threshold the
trainer suggested from the validation split (the model's
``suggested_threshold``); a last line gives the threshold with the best F1 on
the held-out frames themselves, which no run can know beforehand: how far the
suggestion is from it says how well it carries over to unseen frames. The boxes come straight from the signature (normalised
corners scaled to the frame), not through the pre-annotation's shapes, so at
the recipe's threshold the figure can differ from the recipe's in the third
decimal.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import tempfile
from pathlib import Path

from pycocotools.coco import COCO

from bench.recipe import rounded
from preannotate import matching
from preannotate.classes import parse_classes
from preannotate.modelmetrics import SUGGESTED_THRESHOLD
from preannotate.quickstart.score import coco_map


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workdir", type=Path, help="a bench.recipe --workdir")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.25, 0.05])
    p.add_argument("--suggested", action="store_true", help="also the model's suggested threshold")
    return p.parse_args(argv)


def detections(workdir: Path) -> tuple[dict, list[dict], list[dict]]:
    """The held-out truth, the model's classes (COCO categories, from its classes.csv)
    and every detection of the workdir's exported model on the held-out frames."""
    import tensorflow as tf

    exported = sorted((workdir / "storage").rglob("serving/*/*/saved_model.pb"))
    if len(exported) != 1:
        raise SystemExit(f"{workdir}: expected one exported model, found {len(exported)}")
    folder = exported[0].parent
    names = parse_classes((folder / "assets" / "classes.csv").read_text())
    classes = [{"id": i, "name": name} for i, name in enumerate(names, start=1)]
    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
    truth = json.loads((workdir / "data" / "heldout-truth.json").read_text())
    frames = {path.name: path for path in (workdir / "heldout" / "images").rglob("*")}
    found = []
    for image in truth["images"]:
        out = serve(inputs=tf.constant([frames[image["file_name"]].read_bytes()]))
        count = int(out["num_detections"][0])
        scale = [image["height"], image["width"], image["height"], image["width"]]
        for box, cls, score in zip(
            out["detection_boxes"][0][:count].numpy() * scale,
            out["detection_classes"][0][:count].numpy(),
            out["detection_scores"][0][:count].numpy(),
            strict=True,
        ):
            y0, x0, y1, x1 = (float(v) for v in box)
            found.append(
                {
                    "image_id": image["id"],
                    "category_id": int(cls),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(score),
                }
            )
    return truth, classes, found


def suggested(workdir: Path) -> float:
    """The suggested threshold in the metrics of the workdir's trained model."""
    (metrics,) = sorted((workdir / "storage").rglob("models/*/*/metrics.json"))
    figures = json.loads(metrics.read_text())["metrics"]
    if SUGGESTED_THRESHOLD not in figures:
        raise SystemExit(f"{metrics} has no {SUGGESTED_THRESHOLD}: trained before it existed")
    return figures[SUGGESTED_THRESHOLD]


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = _parse(argv)
    thresholds = [*args.thresholds, *([suggested(args.workdir)] if args.suggested else [])]
    truth, classes, found = detections(args.workdir)
    # every detection matched once: F1 at each threshold and the held-out best from it
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(args.workdir / "data" / "heldout-truth.json"))
    ids = {c["name"]: c["id"] for c in truth["categories"]}
    by_id = {c["id"]: ids.get(c["name"]) for c in classes}  # the model's ids to the truth's
    known = [
        dict(d, category_id=by_id[d["category_id"]]) for d in found if by_id.get(d["category_id"])
    ]
    matches = matching.match(coco, known)
    with tempfile.TemporaryDirectory() as tmp:
        for threshold in thresholds:
            kept = [d for d in found if d["score"] >= threshold]
            predictions = Path(tmp) / f"predictions-{threshold}.json"
            predictions.write_text(
                json.dumps(
                    {
                        "images": truth["images"],
                        "categories": classes,
                        "annotations": [dict(d, id=i + 1) for i, d in enumerate(kept)],
                    }
                )
            )
            scores = coco_map(args.workdir / "data" / "heldout-truth.json", predictions)
            f1 = matching.at(matches, threshold).f1
            print(json.dumps({"threshold": threshold, **rounded(scores), "F1@0.5": round(f1, 4)}))
    best = matching.best_f1(matches)
    print(json.dumps({"held_out_best_F1": rounded(dataclasses.asdict(best)) if best else None}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
